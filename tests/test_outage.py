"""Tests for L{mxpolicyd.ops.outage}: a repeating failure logged when it starts and when it ends."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.ops.outage import Outage


class OutageTests(SynchronousTestCase):
    """One line when an outage starts, debug while it lasts, one when it ends."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(3600)
        self.events: list[dict[str, Any]] = []
        log = Logger(observer=cast(ILogObserver, self.events.append), namespace="owner")
        self.outage = Outage(log, self.clock.seconds)

    def lines(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] == level]

    def fail(self, **kwargs: Any) -> bool:
        return self.outage.failed("Cannot write to {path}", path="/x", **kwargs)

    def test_first_failure_at_its_level_rest_at_debug(self) -> None:
        """The first failure is logged at the level given, the next ones are the same line at debug."""
        self.assertTrue(self.fail(level=LogLevel.error))
        self.assertFalse(self.fail(level=LogLevel.error))
        self.assertFalse(self.fail(level=LogLevel.error))
        self.assertEqual(self.lines(LogLevel.error), ["Cannot write to /x"])
        self.assertEqual(self.lines(LogLevel.debug), ["Cannot write to /x"] * 2)

    def test_lines_are_the_owners(self) -> None:
        """The lines are the owner's: its logger's namespace and its format, with its fields."""
        self.fail()
        self.assertEqual(self.events[0]["log_namespace"], "owner")
        self.assertEqual(self.events[0]["log_format"], "Cannot write to {path}")
        self.assertEqual(self.events[0]["path"], "/x")

    def test_end_says_how_long_and_how_often(self) -> None:
        """The first success after failures logs one info line with their count, start and duration."""
        self.fail()
        self.clock.advance(90)
        self.fail()
        self.assertTrue(self.outage.ended(
            "Wrote to {path} again after {failures} failures since {since} ({seconds:.0f} s)",
            path="/x"))
        self.assertEqual(self.lines(LogLevel.info),
                         ["Wrote to /x again after 2 failures since 1970-01-01 01:00:00 UTC (90 s)"])
        self.assertFalse(self.outage.ended("again"))

    def test_end_without_outage_is_silent(self) -> None:
        """A success with no outage under way logs nothing and says so."""
        self.assertFalse(self.outage.ended("back"))
        self.assertEqual(self.events, [])

    def test_minimum_failures_for_the_end_line(self) -> None:
        """Below the minimum the end is silent, but the outage still ends."""
        self.fail()
        self.assertTrue(self.outage.ended("back", minimum=2))
        self.assertEqual(self.lines(LogLevel.info), [])
        self.assertTrue(self.fail())

    def test_next_outage_is_news(self) -> None:
        """After an end, the next failure starts a new outage: logged at its level again, counted afresh."""
        self.fail()
        self.fail()
        self.outage.ended("back")
        self.clock.advance(10)
        self.assertTrue(self.fail())
        self.outage.ended("back after {failures} since {since}")
        self.assertEqual(self.lines(LogLevel.warn), ["Cannot write to /x"] * 2)
        self.assertEqual(self.lines(LogLevel.info)[-1], "back after 1 since 1970-01-01 01:00:10 UTC")

    def test_new_aspect_is_news(self) -> None:
        """Within an outage the first failure of each aspect is news; repeats of one are not."""
        self.assertTrue(self.fail(aspect="keep"))
        self.assertFalse(self.fail(aspect="keep"))
        self.assertTrue(self.fail(aspect="temp"))
        self.assertFalse(self.fail(aspect="temp"))
        self.assertEqual(len(self.lines(LogLevel.warn)), 2)
        self.assertEqual(len(self.lines(LogLevel.debug)), 2)

    def test_note_only_on_news(self) -> None:
        """The note is appended to the line that is news and left off the debug ones."""
        self.fail(note="; further failures are logged at debug")
        self.fail(note="; further failures are logged at debug")
        self.assertEqual(self.lines(LogLevel.warn),
                         ["Cannot write to /x; further failures are logged at debug"])
        self.assertEqual(self.lines(LogLevel.debug), ["Cannot write to /x"])
