"""
The evaluations the cache starts: one per domain at a time, however many
lookups ask; a bounded number running at once; a bounded queue waiting for
a slot.  A lookup waits for a domain's first evaluation no longer than the
lookup deadline, and gets the first answer meanwhile; beyond the queue, it
gets that answer at once, so that a flood of new names grows neither
memory nor latency.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxpolicyd.cache.entries import Entry
from mxpolicyd.evidence.dane import DaneStatus
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.verdict import Verdict


class DomainEvaluator(Protocol):
    """What gathers a domain's evidence (L{mxpolicyd.evidence.evaluator.Evaluator})."""

    def evaluate(
        self, domain: str, prior: DomainState | None
    ) -> Deferred[DomainState]: ...


class Evaluations:
    """
    Evaluations in flight, coalesced per domain and bounded.

    Every caller gets its own Deferred, so that a caller going away
    cancels nothing shared (as twisted.names.client.Resolver's _waiting).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        evaluator: DomainEvaluator,
        settle: Callable[[str, DomainState | None], Entry],
        first_answer: Callable[[str], Verdict],
        judged: Callable[[Verdict], Verdict],
        metrics: Metrics,
        *,
        deadline: float,
        max_evaluations: int,
        max_waiting: int,
    ) -> None:
        """
        @param settle: takes an evaluation's result into the cache and gives
            the domain's entry for the callers; None for an evaluation that
            crashed (logged here).
        @param first_answer: what to answer for a domain whose first
            evaluation has not ended.
        @param judged: that answer as the administrator's policy has it
            (minimums, entries), for a lookup that reached the deadline or
            found the queue full.
        @param max_waiting: how many evaluations may wait for one of the
            C{max_evaluations} slots; beyond, a lookup of a new domain is
            answered at once as if its first evaluation had run out of time.
        """
        self.evaluator = evaluator
        self.first_answer = first_answer
        self.deadline = deadline
        self.max_waiting = max_waiting
        # Domains under evaluation, each with its callers' Deferreds.
        self.in_flight: dict[str, list[Deferred[Entry]]] = {}
        self.shed = 0
        self._clock = clock
        self._settle = settle
        self._judged = judged
        self._metrics = metrics
        self._semaphore = DeferredSemaphore(max_evaluations)
        self._shed_logged = -math.inf
        metrics.gauge("mxpolicyd_evaluations_waiting",
                      "Evaluations waiting for a slot (at most lookup.max_waiting).",
                      lambda: len(self._semaphore.waiting))

    @property
    def waiting(self) -> int:
        """Evaluations waiting for a slot."""
        return len(self._semaphore.waiting)

    def full(self) -> bool:
        """Whether every slot is taken and max_waiting evaluations wait."""
        semaphore = self._semaphore
        return semaphore.tokens <= 0 and len(semaphore.waiting) >= self.max_waiting

    def evaluate(self, domain: str, prior: DomainState | None) -> Deferred[Entry]:
        """
        Evaluate C{domain}, or join its evaluation under way; fires with the
        domain's entry once the result is settled.
        """
        child: Deferred[Entry] = Deferred()
        callers = self.in_flight.get(domain)
        if callers is not None:
            callers.append(child)
            return child
        self.in_flight[domain] = [child]
        shared = self._semaphore.run(self.evaluator.evaluate, domain, prior)
        shared.addBoth(self._done, domain)
        return child

    def first(self, domain: str, deadline: float) -> Verdict | Deferred[Verdict]:
        """
        The first evaluation of an uncached C{domain}, waited for up to
        C{deadline}; or, with the queue full, the answer for one that ran
        out of time, at once: queueing more would only grow memory and
        answer later.
        """
        if domain in self.in_flight or not self.full():
            return self._wait(domain, self.evaluate(domain, None), deadline)
        self.shed += 1
        self._metrics.shed.inc()
        # Judged as at the deadline: the administrator's minimums and
        # entries hold for an answer given early as much as for a late one.
        verdict = self._judged(self.first_answer(domain))
        now = self._clock.seconds()
        if now - self._shed_logged >= 60:
            self._shed_logged = now
            self._log.warn(
                "{waiting} evaluations are waiting for a slot (lookup.max_waiting); "
                "answering {domain} with {action} at once, unevaluated, as every new "
                "domain until the queue drains ({count} such answers so far)",
                waiting=len(self._semaphore.waiting),
                domain=domain,
                action=verdict.action.value,
                count=self.shed,
            )
        return verdict

    def _wait(self, domain: str, d: Deferred[Entry], deadline: float) -> Deferred[Verdict]:
        result: Deferred[Verdict] = Deferred(lambda _: d.cancel())

        def answered(entry: Entry) -> None:
            if not result.called:
                timer.cancel()
                result.callback(entry.verdict)

        def late() -> None:
            verdict = self._judged(self.first_answer(domain))
            self._log.info(
                "First evaluation of {domain} still running after {deadline} s; "
                "answering {action} meanwhile ({rule})",
                domain=domain,
                deadline=self.deadline,
                action=verdict.action.value,
                rule=verdict.rule,
            )
            result.callback(verdict)

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            failure.trap(CancelledError)

        timer = self._clock.callLater(deadline, late)
        d.addCallbacks(answered, failed)
        return result

    def _done(self, result: DomainState | Failure, domain: str) -> None:
        callers = self.in_flight.pop(domain, [])
        if isinstance(result, Failure):
            # The evaluators record failures as evidence; this is a bug.
            self._log.failure(
                "Evaluation of {domain} crashed; keeping what was cached",
                result,
                domain=domain,
            )
            entry = self._settle(domain, None)
        else:
            self._count(result)
            entry = self._settle(domain, result)
        for caller in callers:
            if not caller.called:
                caller.callback(entry)

    def _count(self, state: DomainState) -> None:
        metrics = self._metrics
        metrics.evaluations.inc()
        failure = state.sts.failure
        if failure is not None:
            metrics.failures.inc(
                "mta_sts_dns" if failure.startswith("TXT lookup")
                else "mta_sts_fetch" if failure.startswith("policy fetch")
                else "mta_sts_record"
            )
        if state.dane is not None and state.dane.status is DaneStatus.TEMP:
            metrics.failures.inc("dane_dns")
