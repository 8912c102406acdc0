"""
Resolver outages, told apart from broken domains: a dead resolver costs one
warning per outage instead of one per cached domain re-checked (a cache of
100k domains would flood the journal), and one info line when it answers
again.  The DANE and MTA-STS evaluators each keep one L{ResolverOutage}.
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from mxpolicyd.net.dns import DNSError
from mxpolicyd.ops.times import utc

# DNSError kinds that say the resolver cannot answer (it is gone, refuses,
# or cannot reach the authorities), not that the domain's data is broken.
# SERVFAIL is both: a validating resolver also reports bogus signatures with
# it.  It counts as the resolver's so that an upstream outage does not flood
# the log; a bogus domain among answering ones still gets its own warning,
# since every answered lookup in between ends the "outage".
RESOLVER_KINDS = frozenset(
    ("timeout", "network", "refused", "servfail", "formerr", "notimp", "rcode")
)

_KIND_TEXT = {
    "timeout": "timeout",
    "network": "network error",
    "refused": "REFUSED",
    "servfail": "SERVFAIL",
    "formerr": "FORMERR",
    "notimp": "NOTIMP",
    "rcode": "unexpected rcode",
}


def resolver_kind(errors: Sequence[BaseException]) -> str | None:
    """
    The kind of a failed check's DNS errors when they are all the
    resolver's, None when any says something about the domain itself.
    """
    if not errors:
        return None
    kinds = [e.kind if isinstance(e, DNSError) else None for e in errors]
    if any(kind not in RESOLVER_KINDS for kind in kinds):
        return None
    return kinds[0]


class ResolverOutage:
    """
    The failures one evaluator saw while the resolver did not answer, so
    that a dead resolver costs one warning per outage instead of one per
    cached domain re-checked (a 100k-domain cache would flood the journal).

    Within an outage the first failure of each kind and consequence (a kept
    cached result, or not) is a warning naming the domain; the rest are the
    same line at debug.  The first check that gets its answers again ends the
    outage with one info line, when there was more than the one failure.
    """

    def __init__(self, clock: IReactorTime, log: Logger, checks: str) -> None:
        """
        @param checks: what failed, plural, for the recovery line
            (C{"DANE evaluations"}).
        """
        self._clock = clock
        self._log = log
        self._checks = checks
        self._warned: set[tuple[str, str]] = set()
        self._kinds: dict[str, None] = {}
        self._failed = 0
        self._since = 0.0

    def failed(self, kind: str, consequence: str) -> tuple[LogLevel, str]:
        """
        The level of this failure's log line and what to append to it.

        @param consequence: what the daemon does about it, as a verb phrase
            (C{"answer TEMP"}): answering TEMP for a new domain is news even
            when cached results have been kept for a while.
        """
        if not self._failed:
            self._since = self._clock.seconds()
        self._failed += 1
        self._kinds[kind] = None
        if (kind, consequence) in self._warned:
            return LogLevel.debug, ""
        self._warned.add((kind, consequence))
        return LogLevel.warn, (
            "; further DNS %s failures that %s are logged at debug until DNS answers again"
            % (_KIND_TEXT.get(kind, kind), consequence)
        )

    def answered(self, domain: str) -> None:
        """A check of C{domain} got all its DNS answers: any outage is over."""
        if not self._failed:
            return
        if self._failed > 1:
            self._log.info(
                "DNS answers again ({domain} resolved) after {count} failed {checks} "
                "since {since} (DNS {kinds}); failures are logged at warning again",
                domain=domain,
                count=self._failed,
                checks=self._checks,
                since=utc(self._since),
                kinds=", ".join(_KIND_TEXT.get(k, k) for k in self._kinds),
            )
        self._warned.clear()
        self._kinds.clear()
        self._failed = 0
