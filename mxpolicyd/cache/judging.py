"""
The administrator's policy over the cached entries: each entry's verdict is
judged by it, the downgrade memory is carried into each new evaluation, and
what a decision changed is counted and logged, once.

The decisions and the wording of the log lines are
L{mxpolicyd.policy.judge}'s; this holds the policy in force, and emits.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxpolicyd.cache.entries import NO_ADMIN, Entry
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.judge import (
    MINIMUM,
    WITHDRAWN,
    Report,
    acknowledgement,
    judge,
    noted,
    remember,
    verdict_change,
    weaker,
    withdrawal,
)
from mxpolicyd.policy.verdict import Action, Verdict, decide


class EntryJudge:
    """Decides cached entries by the administrator's policy, and reports."""

    _log = Logger()

    def __init__(self, clock: IReactorTime, metrics: Metrics) -> None:
        # The administrator's policy (PolicyCache.set_admin).
        self.admin: AdminPolicy = NO_ADMIN
        self._clock = clock
        self._metrics = metrics

    def entry(self, domain: str, state: DomainState, now: float, used_at: float,
              log: bool = True) -> Entry:
        """
        A new entry, judged.  What the policy did to it is counted, and
        logged unless C{log} is false (the store being read at start-up:
        those were logged before the restart).
        """
        entry = Entry(domain, state, now, used_at, self.admin)
        if entry.verdict.note is not None:
            self._noted(entry, None, log)
        return entry

    def redecide(self, entry: Entry, now: float) -> None:
        """
        Decide again on the same evidence: a policy or an administrator's
        entry ran out, or the administrator's policy changed.
        """
        before = entry.verdict
        entry.update(entry.state, now, self.admin)
        self._noted(entry, before)

    def apply(self, entry: Entry, state: DomainState, now: float, fresh: bool = False) -> None:
        """
        Decide on new evidence.  A changed verdict is logged, a weaker one
        (L{mxpolicyd.policy.judge.weaker}) counted as a downgrade; unless
        C{fresh}, an entry that held no evidence before (reduced to its
        downgrade memory), which is decided as a new one.
        """
        before = None if fresh else entry.verdict
        entry.update(state, now, self.admin)
        after = entry.verdict
        self._noted(entry, before)
        if before is not None and before.action is not after.action:
            if weaker(before.action, after.action):
                self._metrics.downgrades.inc()
            self._emit(verdict_change(before, after))

    def with_memory(self, domain: str, entry: Entry | None, state: DomainState,
                    now: float) -> DomainState:
        """A newly evaluated state, with the downgrade memory carried into it."""
        prior = entry.state.memory if entry is not None else None
        if prior is None and self.admin.downgrade == "off":
            return state
        evidence = decide(domain, state, now)
        memory, outcome = remember(prior, evidence, state, self.admin, now)
        if outcome == WITHDRAWN and prior is not None:
            self._metrics.guard.inc(WITHDRAWN)
            self._emit(withdrawal(prior, evidence, memory))
        return state if memory is state.memory else replace(state, memory=memory)

    def acknowledged(self, entry: Entry, now: float) -> DomainState | None:
        """
        The entry's state with its current evidence as the downgrade memory
        ("mxpolicyd cache ack"); None while the evidence is TEMP or not kept
        (a domain reduced to its memory): there is nothing to accept yet.
        """
        if entry.state.remembered_only:
            # No evidence kept (an idle domain): nothing to accept yet.
            return None
        evidence = decide(entry.domain, entry.state, now)
        if evidence.action is Action.TEMP:
            return None
        memory, _ = remember(None, evidence, entry.state, self.admin, now)
        self._emit(acknowledgement(entry.domain, memory, entry.state.memory))
        return replace(entry.state, memory=memory)

    def first_answer(self, verdict: Verdict, memory: DomainState | None = None) -> Verdict:
        """
        A first answer, by the administrator's policy too (minimums), and
        against the downgrade memory in C{memory}, a domain's state reduced
        to it, if any.
        """
        verdict, _ = judge(verdict, memory, self.admin, self._clock.seconds())
        return verdict

    def _noted(self, entry: Entry, before: Verdict | None, log: bool = True) -> None:
        counted, reports = noted(before, entry.verdict, entry.state, self.admin,
                                 self._clock.seconds())
        if counted == MINIMUM:
            self._metrics.minimums.inc()
        elif counted is not None:
            self._metrics.guard.inc(counted)
        if log:
            for report in reports:
                self._emit(report)

    def _emit(self, report: Report) -> None:
        (self._log.warn if report.warning else self._log.info)(report.format, **report.fields)
