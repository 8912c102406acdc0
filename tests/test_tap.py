"""Tests for L{mxpolicyd.tap}: assembly from a configuration."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.config import parse
from mxpolicyd.tap import build_evaluator


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
