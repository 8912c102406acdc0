"""Tests for L{mxpolicyd.answers.profiles}: defaults and errors that name the key."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.profiles import BUILTIN_PROFILES, Profile
from mxpolicyd.config.load import ConfigError, default_state_directory, load, parse, unix_path


class ConfigTests(SynchronousTestCase):
    def error(self, data: dict[str, object]) -> str:
        e = self.assertRaises(ConfigError, parse, data, "test.toml", {"HOME": "/home/u"})
        return str(e)

    def test_defaults(self) -> None:
        """An empty file gives loopback port 8461, the built-in maps and a local store."""
        config = parse({}, "test.toml", {"HOME": "/home/u"})
        self.assertEqual(config.socketmap.listen, ("tcp:8461:interface=127.0.0.1",))
        self.assertEqual(config.socketmap.max_request_size, 10000)
        self.assertEqual(set(config.profiles), {"postfix", "postfix-strict", "postfix-tlsrpt"})
        self.assertFalse(config.profiles["postfix"].tlsrpt)
        self.assertEqual(config.store_path, "/home/u/.local/state/mxpolicyd/mxpolicyd.sqlite")
        self.assertIsNone(config.mta_sts.trust_root)
        self.assertEqual(config.dns.nameservers, ())
        self.assertTrue(config.dane.enabled)
        self.assertEqual((config.dane.ttl_min, config.dane.ttl_max), (60, 3600))
        self.assertEqual((config.lookup.max_negative, config.lookup.max_waiting),
                         (100000, 1000))

    def test_unix_listeners_mode_660(self) -> None:
        """A unix: lookup listener gets mode 660 unless its string names a mode; others are untouched."""
        config = parse({
            "socketmap": {"listen": ["unix:/run/a.sock", "unix:/run/b.sock:mode=666",
                                     "unix:address=/run/c\\:d.sock:lockfile=1",
                                     "tcp:8461:interface=127.0.0.1"]},
            "exim": {"listen": ["unix:/run/e.sock", "unix:/run/f.sock:mode=600"]},
        }, "t.toml")
        self.assertEqual(config.socketmap.listen, (
            "unix:/run/a.sock:mode=660", "unix:/run/b.sock:mode=666",
            "unix:address=/run/c\\:d.sock:lockfile=1:mode=660",
            "tcp:8461:interface=127.0.0.1"))
        self.assertEqual(config.exim.listen, ("unix:/run/e.sock:mode=660", "unix:/run/f.sock:mode=600"))

    def test_daemon_user(self) -> None:
        """daemon.user names an existing unprivileged account; by default there is none."""
        self.assertIsNone(parse({}, "t.toml").user)
        self.assertEqual(parse({"daemon": {"user": "nobody"}}, "t.toml").user, "nobody")
        for value, problem in (
            ("root", "test.toml: daemon.user names 'root', whose uid is 0: give an unprivileged"),
            ("no-such-user-mxp", "test.toml: daemon.user names 'no-such-user-mxp', which is no "
             "account on this system"),
            ("", "test.toml: daemon.user must name an account"),
            (65534, "test.toml: daemon.user must be a string, not 65534"),
        ):
            self.assertTrue(self.error({"daemon": {"user": value}}).startswith(problem),
                            (value, self.error({"daemon": {"user": value}})))

    def test_unix_path(self) -> None:
        """The file of a unix: listener string, however its path is given; None for others."""
        for description, path in (
            ("unix:/run/a.sock", "/run/a.sock"),
            ("unix:/run/a.sock:mode=660:lockfile=1", "/run/a.sock"),
            ("unix:address=/run/b.sock:mode=600", "/run/b.sock"),
            ("unix:mode=600:address=/run/c\\:d.sock", "/run/c:d.sock"),
            ("tcp:8461:interface=127.0.0.1", None),
            ("systemd:domain=UNIX:index=0", None),
        ):
            self.assertEqual(unix_path(description), path, description)

    def test_block_private_by_default(self) -> None:
        """Policy hosts on private addresses are refused unless the file says otherwise."""
        self.assertTrue(parse({}, "t.toml").mta_sts.block_private)
        config = parse({"mta_sts": {"block_private": False}}, "t.toml")
        self.assertFalse(config.mta_sts.block_private)

    def test_state_directory(self) -> None:
        """systemd's STATE_DIRECTORY wins over XDG_STATE_HOME and HOME."""
        self.assertEqual(
            default_state_directory({"STATE_DIRECTORY": "/var/lib/mxpolicyd", "HOME": "/x"}),
            "/var/lib/mxpolicyd",
        )
        self.assertEqual(
            default_state_directory({"XDG_STATE_HOME": "/s", "HOME": "/x"}), "/s/mxpolicyd"
        )

    def test_values(self) -> None:
        """Given values are used, and ints are accepted where seconds are floats."""
        config = parse(
            {
                "daemon": {"state_directory": "/srv/state"},
                "socketmap": {"listen": ["tcp:9999", "unix:/run/m.sock:mode=660"],
                              "idle_timeout": 5, "request_timeout": 2},
                "dns": {"nameservers": ["127.0.0.1", "::1"], "port": 5353},
                "lookup": {"deadline": 0.5, "max_negative": 5000, "max_waiting": 0},
                "mta_sts": {"txt_ttl_min": 1, "retry_interval": 600},
            },
            "t.toml",
        )
        self.assertEqual(config.socketmap.listen, ("tcp:9999", "unix:/run/m.sock:mode=660"))
        self.assertEqual(config.socketmap.idle_timeout, 5.0)
        self.assertIsInstance(config.socketmap.idle_timeout, float)
        self.assertEqual(config.socketmap.request_timeout, 2.0)
        self.assertIsInstance(config.socketmap.request_timeout, float)
        self.assertEqual(config.dns.nameservers, ("127.0.0.1", "::1"))
        self.assertEqual(config.store_path, "/srv/state/mxpolicyd.sqlite")
        self.assertEqual(config.mta_sts.txt_ttl_min, 1)
        self.assertEqual((config.lookup.max_negative, config.lookup.max_waiting), (5000, 0))

    def test_profiles(self) -> None:
        """A [profiles.NAME] table adds a map name; a built-in one can be changed."""
        config = parse(
            {"profiles": {"pf310": {"tlsrpt": True}, "postfix": {"servername": False}}}, "t"
        )
        self.assertEqual(config.profiles["pf310"], Profile("pf310", tlsrpt=True))
        self.assertFalse(config.profiles["postfix"].servername)
        self.assertEqual(config.profiles["postfix-strict"], BUILTIN_PROFILES["postfix-strict"])

    def test_errors_name_the_key(self) -> None:
        """Each bad value is refused with the file and the dotted key in the message."""
        cases = [
            ({"socketmap": {"listen": "tcp:1"}}, "socketmap.listen must be a list"),
            ({"socketmap": {"listen": [""]}}, "socketmap.listen entry"),
            ({"socketmap": {"max_request_size": 10}}, "socketmap.max_request_size must be between"),
            ({"socketmap": {"idle_timeout": 0}}, "socketmap.idle_timeout must be greater than 0"),
            ({"socketmap": {"idle_timeout": True}}, "socketmap.idle_timeout must be a number"),
            ({"socketmap": {"request_timeout": 0}}, "socketmap.request_timeout must be more than 0"),
            ({"socketmap": {"request_timeout": 600}}, "at most 90 seconds, not 600"),
            ({"socketmap": {"request_timeout": "5"}}, "socketmap.request_timeout must be a number"),
            ({"dns": {"nameservers": ["resolver.test"]}}, "dns.nameservers entry 'resolver.test' is not an IP"),
            ({"dns": {"port": 70000}}, "dns.port must be a port number"),
            ({"dns": {"colour": 1}}, "dns.colour is not a known setting"),
            ({"mta_sts": {"retry_interval": 60}}, "mta_sts.retry_interval must be at least 300"),
            ({"mta_sts": {"trust_root": "/nonexistent/ca.pem"}}, "mta_sts.trust_root names"),
            ({"mta_sts": {"txt_ttl_min": 100, "txt_ttl_max": 50}}, "mta_sts.txt_ttl_max must not be below"),
            ({"lookup": {"deadline": 120}}, "lookup.deadline must be between"),
            ({"lookup": {"max_negative": 0}}, "lookup.max_negative must be greater than 0"),
            ({"lookup": {"max_negative": 1.5}}, "lookup.max_negative must be a number"),
            ({"lookup": {"max_waiting": -1}}, "lookup.max_waiting must be 0 or more"),
            ({"profiles": {"pf": {"tlsrpt": "yes"}}}, "profiles.pf.tlsrpt must be true or false"),
            ({"profiles": {"p f": {}}}, "profiles.p f is not a valid map name"),
            ({"dsn": {}}, "dsn is not a known setting"),
            ({"dane": {"ttl_min": 100, "ttl_max": 50}}, "dane.ttl_max must not be below"),
            ({"dane": {"enabled": 1}}, "dane.enabled must be true or false"),
            ({"dns": []}, "dns must be a table"),
        ]
        for data, expected in cases:
            message = self.error(data)
            self.assertTrue(message.startswith("test.toml: "), message)
            self.assertIn(expected, message)

    def test_load_file(self) -> None:
        """load() reads TOML from a file; syntax errors and missing files are ConfigErrors."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[socketmap]\nlisten = ["tcp:1234"]\n')
        self.assertEqual(load(path).socketmap.listen, ("tcp:1234",))
        with open(path, "w") as f:
            f.write("[socketmap\n")
        self.assertIn("not valid TOML", str(self.assertRaises(ConfigError, load, path)))
        missing = os.path.join(os.path.dirname(os.path.abspath(path)), "missing.toml")
        self.assertIn("cannot read", str(self.assertRaises(ConfigError, load, missing)))
