"""
The policy cache: every domain's state and verdict in memory, in front of
the evaluator and the durable store.

A lookup of a cached domain is a dict lookup and a clock read.  When the
evidence behind a verdict is due, the lookup still answers at once and starts
a background re-check (stale-while-revalidate).  A lookup of an unknown domain
starts an evaluation and waits for it no longer than the lookup deadline.
Concurrent evaluations of one domain are coalesced into one, and evaluations
in flight are bounded.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredSemaphore,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxpolicyd.state import DomainState
from mxpolicyd.verdict import Verdict, decide
from mxpolicyd.verdict import pending as no_policy_yet


class _Evaluator(Protocol):
    def evaluate(
        self, domain: str, prior: DomainState | None
    ) -> Deferred[DomainState]: ...


class _Store(Protocol):
    def put(self, domain: str, state: DomainState) -> None: ...


class Entry:
    """One cached domain.  Mutable, replaced in place on re-evaluation."""

    __slots__ = ("domain", "state", "verdict", "due_at", "changes_at", "used_at")

    def __init__(self, domain: str, state: DomainState, now: float) -> None:
        self.domain = domain
        self.used_at = now
        self.update(state, now)

    def update(self, state: DomainState, now: float) -> None:
        self.state = state
        self.verdict: Verdict = decide(self.domain, state, now)
        self.due_at = state.due_at
        self.changes_at = state.changes_at(now)


class PolicyCache:
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        evaluator: _Evaluator,
        store: _Store | None = None,
        deadline: float = 2.0,
        max_evaluations: int = 100,
        pending: Callable[[str], Verdict] | None = None,
    ) -> None:
        """
        @param pending: what to answer for a domain whose first evaluation
            is still running at the deadline (by default: no policy).
        """
        self._pending = pending or (lambda domain: no_policy_yet(domain, None, False))
        self._clock = clock
        self._evaluator = evaluator
        self._store = store
        self._deadline = deadline
        self._semaphore = DeferredSemaphore(max_evaluations)
        self._entries: dict[str, Entry] = {}
        self._waiting: dict[str, list[Deferred[Entry]]] = {}
        self._listeners: list[Callable[[str], None]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, domain: str) -> bool:
        return domain in self._entries

    def get(self, domain: str) -> Entry | None:
        return self._entries.get(domain)

    def domains(self) -> Iterable[str]:
        return self._entries.keys()

    @property
    def evaluations_in_flight(self) -> int:
        return len(self._waiting)

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call C{listener(domain)} whenever a domain's verdict may change."""
        self._listeners.append(listener)

    def load(self, states: Iterable[tuple[str, DomainState]]) -> int:
        """Fill the memory layer from the store, before serving."""
        now = self._clock.seconds()
        count = 0
        for domain, state in states:
            self._entries[domain] = Entry(domain, state, now)
            count += 1
        return count

    def current(self, domain: str) -> Entry | None:
        """
        The entry for a cached domain, brought up to date without I/O.

        Starts a background re-check when the evidence is due, and
        re-decides when a policy has run out.  This is the hot path.
        """
        entry = self._entries.get(domain)
        if entry is None:
            return None
        now = self._clock.seconds()
        entry.used_at = now
        if now >= entry.due_at:
            self.revalidate(domain)
        if now >= entry.changes_at:
            entry.update(entry.state, now)
            self._changed(domain)
        return entry

    def lookup(self, domain: str) -> Verdict | Deferred[Verdict]:
        """
        The verdict for C{domain}: at once when cached, otherwise after the
        first evaluation or at the deadline, whichever comes first.
        """
        entry = self.current(domain)
        if entry is not None:
            return entry.verdict
        return self._wait(domain, self._evaluate(domain))

    def revalidate(self, domain: str) -> None:
        """Re-evaluate C{domain} in the background, unless already under way."""
        if domain not in self._waiting:
            self._evaluate(domain).addErrback(lambda f: f.trap(CancelledError))

    def _wait(self, domain: str, d: Deferred[Entry]) -> Deferred[Verdict]:
        result: Deferred[Verdict] = Deferred(lambda _: d.cancel())

        def answered(entry: Entry) -> None:
            if not result.called:
                timer.cancel()
                result.callback(entry.verdict)

        def late() -> None:
            verdict = self._pending(domain)
            self._log.info(
                "First evaluation of {domain} still running after {deadline} s; "
                "answering {action} meanwhile ({rule})",
                domain=domain,
                deadline=self._deadline,
                action=verdict.action.value,
                rule=verdict.rule,
            )
            result.callback(verdict)

        def failed(failure: Failure) -> None:
            if timer.active():
                timer.cancel()
            failure.trap(CancelledError)

        timer = self._clock.callLater(self._deadline, late)
        d.addCallbacks(answered, failed)
        return result

    def _evaluate(self, domain: str) -> Deferred[Entry]:
        """
        One evaluation per domain at a time; every caller gets its own
        Deferred so that a caller going away cancels nothing shared.
        """
        child: Deferred[Entry] = Deferred()
        waiters = self._waiting.get(domain)
        if waiters is not None:
            waiters.append(child)
            return child
        self._waiting[domain] = [child]
        entry = self._entries.get(domain)
        prior = entry.state if entry is not None else None
        shared = self._semaphore.run(self._evaluator.evaluate, domain, prior)
        shared.addBoth(self._evaluated, domain)
        return child

    def _evaluated(self, result: DomainState | Failure, domain: str) -> None:
        waiters = self._waiting.pop(domain, [])
        now = self._clock.seconds()
        entry = self._entries.get(domain)
        if isinstance(result, Failure):
            # The evaluators record failures as evidence; this is a bug.
            self._log.failure(
                "Evaluation of {domain} crashed; keeping what was cached",
                result,
                domain=domain,
            )
            if entry is None:
                entry = Entry(domain, DomainState(), now)
        else:
            if entry is None:
                entry = self._entries[domain] = Entry(domain, result, now)
            else:
                before = entry.verdict
                entry.update(result, now)
                if before.action is not entry.verdict.action:
                    self._log.info(
                        "Verdict for {domain} changed from {before} to {after} "
                        "({rule})",
                        domain=domain,
                        before=before.action.value,
                        after=entry.verdict.action.value,
                        rule=entry.verdict.rule,
                    )
            if self._store is not None:
                self._store.put(domain, result)
            self._changed(domain)
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(entry)

    def _changed(self, domain: str) -> None:
        for listener in self._listeners:
            listener(domain)
