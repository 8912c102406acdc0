"""Tests for L{mxpolicyd.tap}: assembly from a configuration."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.config.load import parse
from mxpolicyd.tap import build_evaluator, leave_root, make_store, redis_exposure, restrict_umask


class BuildEvaluatorTests(SynchronousTestCase):
    def warnings_for(self, data: dict[str, Any]) -> list[str]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            build_evaluator(parse(data, "t.toml", {"HOME": "/h"}), MemoryReactorClock())
        finally:
            globalLogPublisher.removeObserver(events.append)
        return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]

    def test_remote_resolver_warns(self) -> None:
        """DANE with a resolver off loopback logs a warning naming it."""
        warnings = self.warnings_for({"dns": {"nameservers": ["127.0.0.1", "192.0.2.53"]}})
        self.assertEqual(len(warnings), 1)
        self.assertIn("192.0.2.53", warnings[0])
        self.assertNotIn("127.0.0.1", warnings[0])

    def test_loopback_resolver_quiet(self) -> None:
        """A loopback resolver, or DANE switched off, gives no warning."""
        self.assertEqual(self.warnings_for({"dns": {"nameservers": ["127.0.0.1", "::1"]}}), [])
        self.assertEqual(
            self.warnings_for({"dns": {"nameservers": ["192.0.2.53"]}, "dane": {"enabled": False}}),
            [],
        )


class WarmUpTests(SynchronousTestCase):
    def test_warm_on_start(self) -> None:
        """Starting the service reads the store in the background, then freezes it out of the GC."""
        import gc

        from twisted.internet.defer import Deferred

        from mxpolicyd import tap

        started: list[Deferred[int]] = []

        class Cache:
            def warm(self) -> Deferred[int]:
                d: Deferred[int] = Deferred()
                started.append(d)
                return d

        frozen: list[bool] = []
        self.patch(gc, "freeze", lambda: frozen.append(True))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        tap.WarmUp(Cache(), "/x/store.sqlite").startService()  # type: ignore[arg-type]
        self.assertEqual(len(started), 1)
        self.assertEqual(frozen, [])
        started[0].callback(7)
        self.assertEqual(frozen, [True])
        self.assertTrue(any("Loaded 7 domains from /x/store.sqlite" in formatEvent(e) for e in events))


class OpenFilesLimitTests(SynchronousTestCase):
    def raise_limit(self, soft: int, hard: int, data: dict[str, Any]) -> tuple[list[Any], list[str]]:
        import resource

        from mxpolicyd import tap

        calls: list[Any] = []
        self.patch(resource, "getrlimit", lambda which: (soft, hard))
        self.patch(resource, "setrlimit", lambda which, limits: calls.append(limits))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            tap.raise_open_files_limit(parse(data, "t.toml", {"HOME": "/h"}))
        finally:
            globalLogPublisher.removeObserver(events.append)
        return calls, [formatEvent(e) for e in events]

    def test_soft_raised_to_hard(self) -> None:
        """At start-up the soft limit on open files goes up to the hard one, and the log says so."""
        calls, lines = self.raise_limit(1024, 524288, {})
        self.assertEqual(calls, [(524288, 524288)])
        self.assertEqual(lines, ["Raised the limit on open files from 1024 to 524288"])

    def test_short_hard_limit_warns(self) -> None:
        """A hard limit below what the connection limits need is named in a warning."""
        calls, lines = self.raise_limit(1024, 2048, {"socketmap": {"max_connections": 5000}})
        self.assertEqual(calls, [(2048, 2048)])
        self.assertEqual(len(lines), 2)
        self.assertIn("(2048) is below the 5464", lines[1])
        self.assertIn("socketmap.max_connections", lines[1])


class ReloadBoundsTests(SynchronousTestCase):
    def test_reload_applies_bounds(self) -> None:
        """A reload with a lower lookup.max_negative evicts down to it at once."""
        import os

        from twisted.application.service import MultiService

        from mxpolicyd.answers.postfix import PostfixResponder
        from mxpolicyd.cache.policycache import PolicyCache
        from mxpolicyd.config.load import load
        from mxpolicyd.evidence.state import DomainState
        from mxpolicyd.ops.metrics import Metrics
        from mxpolicyd.tap import Daemon

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "m.toml")

        def write(extra: str) -> None:
            with open(path, "w") as f:
                f.write('[daemon]\nstate_directory = "%s"\n[dns]\nnameservers = ["127.0.0.1"]\n%s'
                        % (directory, extra))

        write("")
        config = load(path)
        reactor = MemoryReactorClock()
        cache = PolicyCache(reactor, build_evaluator(config, reactor))
        cache.load([("a.test", DomainState()), ("b.test", DomainState()), ("c.test", DomainState())])
        metrics = Metrics()
        daemon = Daemon(MultiService(), cache, None,  # type: ignore[arg-type]
                        PostfixResponder(reactor, cache, config.profiles, metrics=metrics),
                        None, metrics, config, reactor)
        write("[lookup]\nmax_negative = 1\n")
        self.assertTrue(daemon.reload(path))
        self.assertEqual(sorted(cache.domains()), ["c.test"])


class FakeSystem:
    """The calls leave_root makes, recorded, on a made-up file tree."""

    def __init__(self, euid: int, owners: dict[str, int]) -> None:
        self.euid = self.uid = euid
        self.owners = dict(owners)
        self.calls: list[tuple[Any, ...]] = []
        self.writable: set[str] = set()
        self.path = self

    def geteuid(self) -> int:
        return self.euid

    def getuid(self) -> int:
        return self.uid

    def lstat(self, path: str) -> Any:
        if path not in self.owners:
            raise FileNotFoundError(path)
        return os.stat_result((0, 0, 0, 0, self.owners[path], 0, 0, 0, 0, 0))

    def lchown(self, path: str, uid: int, gid: int) -> None:
        self.calls.append(("lchown", path, uid, gid))
        self.owners[path] = uid

    def setgroups(self, groups: list[int]) -> None:
        self.calls.append(("setgroups", groups))

    def setgid(self, gid: int) -> None:
        self.calls.append(("setgid", gid))

    def setuid(self, uid: int) -> None:
        self.calls.append(("setuid", uid))
        self.euid = self.uid = uid

    def isdir(self, path: str) -> bool:
        return True

    def access(self, path: str, mode: int) -> bool:
        return path in self.writable


class LeaveRootTests(SynchronousTestCase):
    """daemon.user: a daemon started as root switches once it has bound its listeners."""

    def setUp(self) -> None:
        import pwd

        self.nobody = pwd.getpwnam("nobody")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == level]

    def config(self, **daemon: Any) -> Any:
        return parse({
            "daemon": {"state_directory": "/srv/mxp", **daemon},
            "socketmap": {"listen": ["tcp:8461:interface=127.0.0.1", "unix:/run/mxp/sm.sock"]},
            "control": {"socket": "/srv/mxp/control.sock"},
        }, "/etc/mxp.toml")

    def test_root_without_user_warns(self) -> None:
        """Run as root without daemon.user, the daemon stays root and says so, naming the key."""
        system = FakeSystem(0, {})
        leave_root(self.config(), system)
        self.assertEqual(system.calls, [])
        (warning,) = self.logged(LogLevel.warn)
        self.assertIn("mxpolicyd runs as root", warning)
        self.assertIn("set daemon.user in /etc/mxp.toml", warning)

    def test_switch(self) -> None:
        """As root with daemon.user: root's state files go to the account, then groups, gid, uid."""
        system = FakeSystem(0, {
            "/srv/mxp": 0, "/srv/mxp/mxpolicyd.sqlite": 0, "/srv/mxp/mxpolicyd.sqlite-wal": 0,
            "/run/mxp/sm.sock": 0, "/srv/mxp/control.sock": 0, "/srv/mxp/control.sock.lock": 0,
            # An administrator's choice: left alone.
            "/srv/mxp/mxpolicyd.sqlite-shm": 4242,
        })
        system.writable = {"/srv/mxp"}
        leave_root(self.config(user="nobody"), system)
        uid, gid = self.nobody.pw_uid, self.nobody.pw_gid
        self.assertEqual(system.calls, [
            ("lchown", "/srv/mxp", uid, gid),
            ("lchown", "/srv/mxp/mxpolicyd.sqlite", uid, gid),
            ("lchown", "/srv/mxp/mxpolicyd.sqlite-wal", uid, gid),
            ("lchown", "/run/mxp/sm.sock", uid, gid),
            ("lchown", "/srv/mxp/control.sock", uid, gid),
            ("lchown", "/srv/mxp/control.sock.lock", uid, gid),
            ("setgroups", [gid]),
            ("setgid", gid),
            ("setuid", uid),
        ])
        self.assertEqual(self.logged(LogLevel.info), [
            "Switched to user nobody (uid %d, gid %d) now that the listeners are bound and "
            "the store is open" % (uid, gid)])
        # The socket's directory is root's: nobody cannot remove it at stop.
        (warning,) = self.logged(LogLevel.warn)
        self.assertIn("nobody cannot write the directory /run/mxp", warning)

    def test_switch_checked(self) -> None:
        """A switch that leaves the process root fails: it must not go on as root."""
        system = FakeSystem(0, {})
        system.setuid = lambda uid: None  # type: ignore[method-assign]
        self.assertRaises(OSError, leave_root, self.config(user="nobody"), system)

    def test_unprivileged_stays(self) -> None:
        """Started as another account, nothing changes; a daemon.user it cannot reach is warned about."""
        system = FakeSystem(self.nobody.pw_uid, {})
        leave_root(self.config(user="nobody"), system)
        leave_root(self.config(), system)
        self.assertEqual((system.calls, self.logged(LogLevel.warn)), ([], []))
        system = FakeSystem(self.nobody.pw_uid + 1, {})
        leave_root(self.config(user="nobody"), system)
        self.assertEqual(system.calls, [])
        (warning,) = self.logged(LogLevel.warn)
        self.assertIn("cannot switch", warning)


class UmaskTests(SynchronousTestCase):
    def test_restrict_umask(self) -> None:
        """The umask is narrowed to at least 027; a stricter one is kept."""
        before = os.umask(0)
        self.addCleanup(os.umask, before)
        self.assertEqual(restrict_umask(), 0)
        self.assertEqual(os.umask(0o077), 0o027)
        restrict_umask()
        self.assertEqual(os.umask(0), 0o077)


class RedisExposureTests(SynchronousTestCase):
    """The start-up warnings about the fleet store's Redis (issue #14)."""

    def exposure(self, redis: str, password: str | None = "secret") -> list[str]:
        store: dict[str, Any] = {"backend": "redis", "redis": redis}
        if password is not None:
            store["redis_password"] = password
        return redis_exposure(parse({"store": store}, "t.toml", {"HOME": "/h"}))

    def test_quiet(self) -> None:
        """A password and a loopback or unix endpoint give no warning."""
        for redis in ["tcp:127.0.0.1:6379", "tcp:host=127.0.0.2:port=6379", "tcp:localhost:6379",
                      "tcp:\\:\\:1:6379", "unix:/run/redis/redis-server.sock"]:
            self.assertEqual(self.exposure(redis), [], redis)

    def test_beyond_loopback(self) -> None:
        """A TCP host that is not known to be loopback is named; over TCP, in clear text."""
        for redis in ["tcp:10.0.0.5:6379", "tcp:host=redis.example:port=6379",
                      "tcp:\\:\\:ffff\\:10.0.0.5:6379"]:
            warnings = self.exposure(redis)
            self.assertEqual(len(warnings), 1, redis)
            self.assertIn("is not on loopback", warnings[0])
            self.assertIn("clear text", warnings[0])

    def test_no_password(self) -> None:
        """No store.redis_password is a warning wherever Redis is, the key named."""
        warnings = self.exposure("unix:/run/redis/redis-server.sock", None)
        self.assertEqual(len(warnings), 1)
        self.assertIn("store.redis_password is not set", warnings[0])
        self.assertEqual(len(self.exposure("tcp:10.0.0.5:6379", None)), 2)

    def test_logged_at_start(self) -> None:
        """make_store logs them as warnings when the backend is Redis."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            store, _ = make_store(parse({"store": {"backend": "redis", "redis": "tcp:10.0.0.5:6379"}},
                                        "t.toml", {"HOME": "/h"}), MemoryReactorClock())
        finally:
            globalLogPublisher.removeObserver(events.append)
        store.close()
        warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 2, warnings)


class ReloadTrustRootTests(SynchronousTestCase):
    def test_reload_loads_changed_trust_root(self) -> None:
        """The trust root is loaded once at start, and a reload that changes mta_sts.trust_root loads the new one into a new TLS context which the new fetches use."""
        from OpenSSL.crypto import X509Store
        from service_identity import VerificationError
        from twisted.application.service import MultiService

        from mxpolicyd import tap
        from mxpolicyd.answers.postfix import PostfixResponder
        from mxpolicyd.cache.policycache import PolicyCache
        from mxpolicyd.config.load import load
        from mxpolicyd.net.https import PolicyFetcher
        from mxpolicyd.ops.metrics import Metrics
        from mxpolicyd.tap import Daemon
        from tests.test_fetch import CA, GOOD, HOST, OTHER_CA, UNTRUSTED, handshake, write_pem

        fetchers: list[PolicyFetcher] = []

        class RecordedFetcher(PolicyFetcher):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                fetchers.append(self)

        self.patch(tap, "PolicyFetcher", RecordedFetcher)
        added: list[Any] = []
        add_cert = X509Store.add_cert
        self.patch(X509Store, "add_cert", lambda store, cert: (added.append(cert), add_cert(store, cert)))

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "m.toml")

        def write(trust_root: str) -> None:
            with open(path, "w") as f:
                f.write('[daemon]\nstate_directory = "%s"\n[dns]\nnameservers = ["127.0.0.1"]\n'
                        '[mta_sts]\ntrust_root = "%s"\n' % (directory, trust_root))

        write(write_pem(self, CA))
        config = load(path)
        reactor = MemoryReactorClock()
        cache = PolicyCache(reactor, build_evaluator(config, reactor))
        metrics = Metrics()
        daemon = Daemon(MultiService(), cache, None,  # type: ignore[arg-type]
                        PostfixResponder(reactor, cache, config.profiles, metrics=metrics),
                        None, metrics, config, reactor)
        [before] = fetchers
        self.assertEqual(len(added), 1)
        for _ in range(3):
            self.assertIsNone(handshake(before.tls_options(HOST), GOOD)[1])
        self.assertIsNotNone(handshake(before.tls_options(HOST), UNTRUSTED)[1])
        self.assertEqual(len(added), 1)

        write(write_pem(self, OTHER_CA))
        self.assertTrue(daemon.reload(path))
        [_, after] = fetchers
        self.assertEqual(len(added), 2)
        self.assertIsNot(after._tls.context, before._tls.context)
        self.assertIs(cache._evaluations.evaluator._sts._fetcher, after)  # type: ignore[attr-defined]
        self.assertIsNone(handshake(after.tls_options(HOST), UNTRUSTED)[1])
        self.assertIsNotNone(handshake(after.tls_options(HOST), GOOD)[1])
        reason = handshake(after.tls_options("mta-sts.other.test"), UNTRUSTED)[1]
        assert reason is not None
        reason.trap(VerificationError)
        self.assertEqual(len(added), 2)
