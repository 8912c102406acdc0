"""Tests for L{mxpolicyd.tap}: assembly from a configuration."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.config.load import parse
from mxpolicyd.tap import build_evaluator, make_store, redis_exposure


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
