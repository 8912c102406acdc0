"""
Tests for mxpolicyd.config.migrate and ``mxpolicyd import-config``: every documented
key of postfix-mta-sts-resolver's mta-sts-daemon.yml converts to TOML that
mxpolicyd's own configuration loader accepts, with the same meaning.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import tomllib
from contextlib import redirect_stderr, redirect_stdout
from typing import Any
from unittest import mock

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from mxpolicyd.cli import EXIT_ERROR, EXIT_FOUND, main
from mxpolicyd.config.load import Config, parse
from mxpolicyd.config.migrate import (
    Conversion,
    MigrateError,
    convert,
    read_yaml,
    redis_endpoint,
)

# Every key mta-sts-daemon.yml(5) documents, as a decoded document.
EVERYTHING: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8461,
    "reuse_port": True,
    "shutdown_timeout": 20,
    "cache_grace": 60,
    "proactive_policy_fetching": {
        "enabled": True, "interval": 86400, "concurrency_limit": 100, "grace_ratio": 2,
    },
    "cache": {"type": "redis", "options": {"url": "redis://:pw@10.0.0.5:6380/3",
                                           "socket_timeout": 5}},
    "default_zone": {"strict_testing": False, "timeout": 4, "require_sni": True,
                     "tlsrpt": False},
    "zones": {
        "myzone": {"strict_testing": True, "timeout": 4, "require_sni": False,
                   "tlsrpt": True},
    },
}


def converted(data: Any) -> tuple[Conversion, Config]:
    conversion = convert(data, "/etc/mta-sts-daemon.yml")
    return conversion, parse(tomllib.loads(conversion.toml), "(converted)", {"HOME": "/x"})


class ConvertTests(SynchronousTestCase):
    """convert(): YAML document in, TOML that mxpolicyd loads out."""

    def test_every_documented_key(self) -> None:
        """A file with every documented key converts into a configuration mxpolicyd loads."""
        conversion, config = converted(EVERYTHING)
        self.assertEqual(config.socketmap.listen, ("tcp:8461:interface=127.0.0.1",))
        self.assertEqual(config.mta_sts.fetch_timeout, 4.0)
        self.assertEqual((config.refresh.enabled, config.refresh.concurrency), (True, 100))
        self.assertEqual(
            (config.store.backend, config.store.redis, config.store.redis_password,
             config.store.redis_db),
            ("redis", "tcp:10.0.0.5:6380", "pw", 3),
        )
        postfix = config.profiles["postfix"]
        self.assertEqual((postfix.servername, postfix.strict_testing, postfix.tlsrpt),
                         (True, False, False))
        myzone = config.profiles["myzone"]
        self.assertEqual((myzone.servername, myzone.strict_testing, myzone.tlsrpt),
                         (False, True, True))
        for name in ("reuse_port", "shutdown_timeout", "cache_grace",
                     "cache.options.socket_timeout", "proactive_policy_fetching.interval",
                     "proactive_policy_fetching.grace_ratio"):
            self.assertIn("#   " + name + ":", conversion.toml)
        self.assertEqual(conversion.warnings, [])

    def test_empty_file(self) -> None:
        """An empty file (YAML null) converts to mxpolicyd's defaults, the old defaults' equivalent."""
        conversion, config = converted(None)
        self.assertEqual(config.socketmap.listen, ("tcp:8461:interface=127.0.0.1",))
        self.assertEqual(config.store.backend, "sqlite")
        self.assertNotIn("Not converted", conversion.toml)

    def test_table(self) -> None:
        """Each setting lands on its mxpolicyd equivalent."""
        cases: list[tuple[dict[str, Any], str, Any]] = [
            ({"port": 9000}, "socketmap.listen", ("tcp:9000:interface=127.0.0.1",)),
            ({"host": "0.0.0.0", "port": 8461}, "socketmap.listen",
             ("tcp:8461:interface=0.0.0.0",)),
            ({"host": "::1"}, "socketmap.listen", ("tcp6:8461:interface=\\:\\:1",)),
            ({"host": "localhost"}, "socketmap.listen", ("tcp:8461:interface=127.0.0.1",)),
            ({"path": "/run/mta-sts.sock", "mode": 0o660, "port": 1}, "socketmap.listen",
             ("unix:/run/mta-sts.sock:mode=660",)),
            # No mode given: the listener's default, 660.
            ({"path": "/run/mta-sts.sock"}, "socketmap.listen",
             ("unix:/run/mta-sts.sock:mode=660",)),
            ({"default_zone": {"timeout": 10}}, "mta_sts.fetch_timeout", 10.0),
            ({"zones": {"a": {"timeout": 7}, "b": {"timeout": 9}}},
             "mta_sts.fetch_timeout", 9.0),
            ({"default_zone": {"strict_testing": True}},
             "profiles.postfix.strict_testing", True),
            ({"default_zone": {"require_sni": False}}, "profiles.postfix.servername", False),
            ({"default_zone": {"tlsrpt": True}}, "profiles.postfix.tlsrpt", True),
            ({"zones": {"postfix": {"strict_testing": True}}},
             "profiles.postfix.strict_testing", True),
            ({"zones": {"plain": {}}}, "profiles.plain.servername", True),
            ({"cache": {"type": "internal", "options": {"cache_size": 5}}},
             "store.backend", "sqlite"),
            ({"cache": {"type": "sqlite", "options": {"filename": "/var/lib/x.db"}}},
             "store.path", ""),
            ({"cache": {"type": "redis", "options": {"url": "unix:///run/redis.sock?db=2"}}},
             "store.redis", "unix:/run/redis.sock"),
            ({"cache": {"type": "redis", "options": {"url": "redis://r", "db": 4,
                                                     "password": "x"}}},
             "store.redis_db", 4),
            ({"cache": {"type": "postgres", "options": {"dsn": "postgres://db"}}},
             "store.backend", "sqlite"),
            ({"proactive_policy_fetching": {"enabled": False}}, "refresh.enabled", False),
        ]
        for data, key, expected in cases:
            _, config = converted(data)
            value: Any = config
            for part in key.split("."):
                value = value[part] if isinstance(value, dict) else getattr(value, part)
            self.assertEqual(value, expected, (data, key))

    def test_unsupported_settings_are_comments(self) -> None:
        """Settings with no equivalent appear as # comments that name them."""
        cases = [
            ({"cache": {"type": "sqlite", "options": {"filename": "/x.db", "threads": 2}}},
             ["cache.options.filename", "cache.options.threads"]),
            ({"cache": {"type": "redis_sentinel", "options": {}}}, ["cache.type redis_sentinel"]),
            ({"zones": {"a": {"timeout": 7}}, "default_zone": {"timeout": 4}},
             ["zones.a.timeout"]),
            ({"mode": 0o666}, ["mode"]),
        ]
        for data, names in cases:
            conversion, _ = converted(data)
            comments = [line for line in conversion.toml.splitlines() if line.startswith("#")]
            for name in names:
                self.assertTrue(any(name in line for line in comments), (data, name))

    def test_unknown_keys_warn(self) -> None:
        """Unknown keys, at any level, are warnings and comments, never fatal."""
        conversion, config = converted({
            "frobnicate": 1, "cache": {"type": "internal", "options": {"x": 1}},
            "zones": {"z": {"strict_testing": True, "colour": "red"}},
        })
        self.assertEqual(len(conversion.warnings), 3, conversion.warnings)
        for name in ("frobnicate", "cache.options.x", "zones.z.colour"):
            self.assertTrue(any(name in w for w in conversion.warnings), name)
            self.assertIn("#   %s: unknown setting" % (name,), conversion.toml)
        self.assertTrue(config.profiles["z"].strict_testing)

    def test_invalid_map_name_skipped(self) -> None:
        """A zone name mxpolicyd cannot use as a map name is skipped with a warning."""
        conversion, config = converted({"zones": {"bad name": {"strict_testing": True}}})
        self.assertNotIn("bad name", config.profiles)
        self.assertTrue(any("bad name" in w for w in conversion.warnings))

    def test_bad_values(self) -> None:
        """A value of the wrong type is an error naming the file and the key."""
        cases = [
            ([1, 2], "the top level"),
            ({"port": "x"}, "port"),
            ({"port": 70000}, "port"),
            ({"reuse_port": "yes"}, "reuse_port"),
            ({"default_zone": {"timeout": -1}}, "default_zone.timeout"),
            ({"zones": {"a": {"strict_testing": 1}}}, "zones.a.strict_testing"),
            ({"cache": {"type": "memcached"}}, "cache.type"),
            ({"cache": {"type": "redis", "options": {"url": "rediss://h"}}},
             "cache.options.url"),
            ({"zones": ["a"]}, "zones"),
        ]
        for data, key in cases:
            e = self.assertRaises(MigrateError, convert, data, "/etc/mta-sts-daemon.yml")
            self.assertTrue(str(e).startswith("/etc/mta-sts-daemon.yml: " + key + " "),
                            (data, str(e)))


class RedisEndpointTests(SynchronousTestCase):
    """redis_endpoint(): redis-py URLs as Twisted client endpoints."""

    def test_table(self) -> None:
        """Host, port, password, database and unix sockets convert."""
        cases = [
            ("redis://localhost", ("tcp:localhost:6379", None, 0)),
            ("redis://10.0.0.1:6380/5", ("tcp:10.0.0.1:6380", None, 5)),
            ("redis://user:p%40ss@h:1/0", ("tcp:h:1", "p@ss", 0)),
            ("redis://h?db=7&password=z", ("tcp:h:6379", "z", 7)),
            ("redis://[::1]:6379", ("tcp:\\:\\:1:6379", None, 0)),
            ("unix:///run/redis/redis.sock", ("unix:/run/redis/redis.sock", None, 0)),
        ]
        for url, expected in cases:
            self.assertEqual(redis_endpoint(url), expected, url)

    def test_tls_refused(self) -> None:
        """rediss:// (TLS) is refused rather than silently converted to cleartext."""
        self.assertRaises(ValueError, redis_endpoint, "rediss://h:6380")


class ReadYamlTests(SynchronousTestCase):
    """read_yaml(): the only place PyYAML is needed."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.directory))

    def write(self, text: str) -> str:
        path = os.path.join(self.directory, "mta-sts-daemon.yml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_reads_the_documented_example(self) -> None:
        """The example of mta-sts-daemon.yml(5)'s shape decodes, octal mode included."""
        try:
            import yaml  # noqa: F401
        except ImportError:
            raise SkipTest("PyYAML is not installed")
        path = self.write("path: /run/m.sock\nmode: 0666\ncache:\n  type: internal\n")
        self.assertEqual(read_yaml(path),
                         {"path": "/run/m.sock", "mode": 0o666, "cache": {"type": "internal"}})

    def test_bad_yaml_names_the_file(self) -> None:
        """A file that is not YAML is an error naming the file."""
        try:
            import yaml  # noqa: F401
        except ImportError:
            raise SkipTest("PyYAML is not installed")
        path = self.write("host: [unclosed\n")
        e = self.assertRaises(MigrateError, read_yaml, path)
        self.assertTrue(str(e).startswith(path + ": not valid YAML"), str(e))

    def test_missing_file(self) -> None:
        """A missing file is an error naming it."""
        path = os.path.join(self.directory, "absent.yml")
        with mock.patch.dict(sys.modules, {"yaml": mock.Mock()}):
            e = self.assertRaises(MigrateError, read_yaml, path)
        self.assertEqual(str(e), path + ": cannot read: No such file or directory")

    def test_without_pyyaml(self) -> None:
        """Without PyYAML the error says which package to install."""
        with mock.patch.dict(sys.modules, {"yaml": None}):
            e = self.assertRaises(MigrateError, read_yaml, "/etc/mta-sts-daemon.yml")
        self.assertIn("python3-yaml", str(e))


class ImportConfigCommandTests(SynchronousTestCase):
    """mxpolicyd import-config FILE [--output FILE]."""

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(self.directory))
        self.source = os.path.join(self.directory, "in.yml")
        self.target = os.path.join(self.directory, "out.toml")

    def run_main(self, *argv: str, document: Any = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with mock.patch("mxpolicyd.config.migrate.read_yaml", return_value=document), \
                redirect_stdout(out), redirect_stderr(err):
            try:
                main(list(argv))
            except SystemExit as e:
                return int(e.code or 0), out.getvalue(), err.getvalue()
        raise AssertionError("main() did not exit")

    def test_prints_toml(self) -> None:
        """Without --output the TOML goes to standard output; warnings to standard error."""
        code, out, err = self.run_main("import-config", self.source,
                                       document={"port": 9000, "odd": 1})
        self.assertEqual(code, EXIT_FOUND)
        self.assertIn('listen = ["tcp:9000:interface=127.0.0.1"]', out)
        self.assertIn("warning: %s: odd is not a postfix-mta-sts-resolver setting" % (
            self.source,), err)

    def test_writes_output_once(self) -> None:
        """--output writes a file that check-config accepts, and refuses to replace it without --force."""
        code, _, _ = self.run_main("import-config", self.source, "--output", self.target,
                                   document={"port": 9000})
        self.assertEqual(code, EXIT_FOUND)
        with open(self.target, "rb") as f:
            self.assertEqual(parse(tomllib.load(f), self.target).socketmap.listen,
                             ("tcp:9000:interface=127.0.0.1",))
        code, _, err = self.run_main("import-config", self.source, "--output", self.target,
                                     document={"port": 1})
        self.assertEqual(code, EXIT_ERROR)
        self.assertIn("--force", err)
        code, _, _ = self.run_main("import-config", self.source, "--output", self.target,
                                   "--force", document={"port": 1})
        self.assertEqual(code, EXIT_FOUND)

    def test_error_exit(self) -> None:
        """A conversion error exits 2 with the message on standard error."""
        code, out, err = self.run_main("import-config", self.source, document={"port": "x"})
        self.assertEqual((code, out), (EXIT_ERROR, ""))
        self.assertIn(self.source + ": port must be a port number", err)
