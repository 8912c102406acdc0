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
