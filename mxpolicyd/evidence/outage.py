"""
Resolver outages, told apart from broken domains: a dead resolver costs one
warning per outage instead of one per cached domain re-checked (a cache of
100k domains would flood the journal), and one info line when it answers
again.  The DANE and MTA-STS evaluators each keep one L{ResolverOutage}.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxpolicyd.net.dns import kind_text, resolver_kind
from mxpolicyd.ops.outage import Outage


class ResolverOutage:
    """
    How one evaluator logs its failed checks: a check that failed because
    the resolver did not answer (L{resolver_kind}) is part of an outage,
    one that failed because of the domain is a warning every time.

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
        self._log = log
        self._outage = Outage(log, clock.seconds)
        self._checks = checks
        # The kinds seen in this outage, in order, for the recovery line.
        self._kinds: dict[str, None] = {}

    def failed(
        self,
        errors: Sequence[BaseException],
        consequence: str,
        format: str,
        **fields: Any,
    ) -> None:
        """
        Log a failed check of a domain.

        @param errors: the DNS errors that made it fail.
        @param consequence: what the daemon does about it, as a verb phrase
            (C{"answer TEMP"}): answering TEMP for a new domain is news even
            when cached results have been kept for a while.
        """
        kind = resolver_kind(errors)
        if kind is None:
            self._log.warn(format, **fields)
            return
        self._kinds[kind] = None
        self._outage.failed(
            format,
            aspect=(kind, consequence),
            note="; further DNS %s failures that %s are logged at debug until DNS "
            "answers again" % (kind_text(kind), consequence),
            **fields,
        )

    def answered(self, domain: str) -> None:
        """A check of C{domain} got all its DNS answers: any outage is over."""
        self._outage.ended(
            "DNS answers again ({domain} resolved) after {failures} failed {checks} "
            "since {since} (DNS {kinds}); failures are logged at warning again",
            minimum=2,
            domain=domain,
            checks=self._checks,
            kinds=", ".join(kind_text(k) for k in self._kinds),
        )
        self._kinds.clear()
