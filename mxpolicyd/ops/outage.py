"""
Outages: a failure that repeats until something works again (a dead
resolver, a full disk, Redis away) is logged when it starts and when it
ends, and at debug in between.  The daemon retries every few seconds and
re-checks every cached domain, so one line per failure would flood the
journal and hide when the trouble ended.
"""

from __future__ import annotations

from typing import Callable, Hashable

from twisted.logger import Logger, LogLevel

from mxpolicyd.ops.times import utc


class Outage:
    """
    One thing that fails until it works again, and its log lines.

    The first failure of an outage is logged at the level its caller
    chooses, and so is the first of each I{aspect} within it (a DNS outage
    that starts answering TEMP for new domains, after keeping cached
    results for a while, is news); the others are the same line at debug.
    The first success ends the outage with one line at info.  Every line
    gets the fields C{failures} (so far), C{since} (when the outage began,
    in UTC) and C{seconds} (how long it has lasted).
    """

    def __init__(self, log: Logger, now: Callable[[], float]) -> None:
        """
        @param log: the owner's logger, so that the lines carry its
            namespace.
        @param now: the owner's clock (C{reactor.seconds}, C{time.time}).
        """
        self._log = log
        self._now = now
        self._failures = 0
        self._since = 0.0
        self._told: set[Hashable] = set()

    def failed(
        self,
        format: str,
        level: LogLevel = LogLevel.warn,
        aspect: Hashable = None,
        note: str = "",
        **fields: object,
    ) -> bool:
        """
        Log one failure: at C{level} when it is news, at debug otherwise.

        @param aspect: what makes a failure news again within the outage.
        @param note: appended to the line when it is news (what the next
            failures look like in the log, say).
        @return: whether it was news.
        """
        if not self._failures:
            self._since = self._now()
        self._failures += 1
        news = aspect not in self._told
        self._told.add(aspect)
        if note:
            format += "{outage_note}"
            fields["outage_note"] = note if news else ""
        self._log.emit(level if news else LogLevel.debug, format, **self._facts(), **fields)
        return news

    def ended(self, format: str, minimum: int = 1, **fields: object) -> bool:
        """
        End the outage under way, if there is one, with C{format} at info.

        @param minimum: the fewest failures worth the line: after a single
            failure its own line may already have said everything.
        @return: whether an outage ended.
        """
        if not self._failures:
            return False
        if self._failures >= minimum:
            self._log.info(format, **self._facts(), **fields)
        self._failures = 0
        self._told.clear()
        return True

    def _facts(self) -> dict[str, object]:
        return {
            "failures": self._failures,
            "since": utc(self._since),
            "seconds": self._now() - self._since,
        }
