"""
The policy cache: every domain's state and verdict in memory, in front of
the evaluator and the durable store.

A lookup of a cached domain is a dict lookup and a clock read.  When the
evidence behind a verdict is due, the lookup still answers at once and starts
a background re-check (stale-while-revalidate).  A lookup of an unknown domain
starts an evaluation and waits for it no longer than the lookup deadline.
Concurrent evaluations of one domain are coalesced into one, and evaluations
in flight are bounded, and so is the queue waiting for them: beyond it, a new
domain gets the first-evaluation answer at once.  Domains holding neither an
unexpired MTA-STS policy nor a DANE verdict are capped in number, the least
recently used evicted first, so that a flood of junk names costs bounded
memory; a domain holding a policy is never evicted for room.  At start-up the
store is read in the background; a domain asked for before its batch arrives
is read from the store on its own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger

from mxpolicyd.cache.entries import NO_ADMIN, Entries, Entry
from mxpolicyd.cache.evaluations import DomainEvaluator, Evaluations
from mxpolicyd.cache.fleet import Fleet
from mxpolicyd.cache.loading import StoreLoader
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
from mxpolicyd.policy.verdict import Action, Verdict, decide, first_answer
from mxpolicyd.store.base import Store


class PolicyCache:
    _log = Logger()
    # The administrator's policy (set_admin); every verdict is judged by it.
    _admin: AdminPolicy = NO_ADMIN

    def __init__(
        self,
        clock: IReactorTime,
        evaluator: DomainEvaluator,
        store: Store | None = None,
        deadline: float = 2.0,
        max_evaluations: int = 100,
        pending: Callable[[str], Verdict] | None = None,
        cooperator: Cooperator | None = None,
        lease: float = 60.0,
        metrics: Metrics | None = None,
        max_negative: int = 100000,
        max_waiting: int = 1000,
    ) -> None:
        """
        @param pending: what to answer for a domain whose first evaluation
            is still running at the deadline (by default: no policy).
        @param cooperator: runs the background load (Twisted's global one by
            default).
        @param lease: how long this daemon holds a domain while it
            re-evaluates it for a fleet sharing the store.
        @param max_negative: how many domains holding no policy (see
            L{mxpolicyd.cache.entries.holds_policy}) stay cached; beyond, the least recently used
            are evicted, from the store too.
        @param max_waiting: how many evaluations may wait for one of the
            C{max_evaluations} slots; beyond, a lookup of a new domain is
            answered at once as if its first evaluation had run out of time.
        """
        self._metrics = metrics or Metrics()
        self._clock = clock
        self._store = store
        self._entries = Entries(clock, store, self._metrics, max_negative, self._busy,
                                self._evicted)
        # The table, read directly on the lookup path.
        self._by_domain = self._entries.by_domain
        self._evaluations = Evaluations(
            clock, evaluator, self._settle,
            pending or (lambda domain: first_answer(domain, None, False)),
            self._judge_first, self._metrics,
            deadline=deadline, max_evaluations=max_evaluations, max_waiting=max_waiting)
        # Read on the lookup path: which domains are under evaluation, and
        # whether the queue for a slot is full.
        self._in_flight = self._evaluations.in_flight
        self._full = self._evaluations.full
        self._loader: StoreLoader | None = None
        self._fleet: Fleet | None = None
        self._leasing: set[str] = set()
        if store is not None:
            self._loader = StoreLoader(clock, store, self._entries, self._insert, cooperator)
            self._fleet = Fleet(clock, store, lease, self._by_domain, self._evaluate,
                                self._apply, self._settled)
            self._leasing = self._fleet.leasing
        self._change_listeners: list[Callable[[str], None]] = []
        self._settled_listeners: list[Callable[[Entry], None]] = []
        self._evicted_listeners: list[Callable[[Entry], None]] = []
        self.downgrades = 0

    def set_evaluator(self, evaluator: DomainEvaluator, pending: Callable[[str], Verdict],
                      deadline: float) -> None:
        """Evaluate with these settings from now on (a reload)."""
        evaluations = self._evaluations
        evaluations.evaluator = evaluator
        evaluations.first_answer = pending
        evaluations.deadline = deadline

    def set_bounds(self, max_negative: int, max_waiting: int) -> None:
        """Apply new memory bounds (a reload); a lower cap evicts at once."""
        self._evaluations.max_waiting = max_waiting
        self._entries.max_negative = max_negative
        self._entries.trim()

    @property
    def loaded(self) -> bool:
        """
        Whether the store has been read in full: until then, a miss may be
        a domain whose batch has not arrived yet, and nothing is evicted.
        """
        return self._entries.loaded

    @loaded.setter
    def loaded(self, value: bool) -> None:
        self._entries.loaded = value

    @property
    def negative(self) -> int:
        """Cached domains holding no policy: those lookup.max_negative counts."""
        return self._entries.negative

    @property
    def evicted(self) -> int:
        """Domains evicted for room so far."""
        return self._entries.evicted

    @property
    def evaluations_waiting(self) -> int:
        return self._evaluations.waiting

    @property
    def shed(self) -> int:
        """Lookups answered unevaluated because the queue was full."""
        return self._evaluations.shed

    def __len__(self) -> int:
        return len(self._by_domain)

    def __contains__(self, domain: str) -> bool:
        return domain in self._by_domain

    def get(self, domain: str) -> Entry | None:
        return self._by_domain.get(domain)

    def domains(self) -> Iterable[str]:
        return self._by_domain.keys()

    @property
    def evaluations_in_flight(self) -> int:
        return len(self._in_flight)

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call C{listener(domain)} whenever a domain's verdict may change."""
        self._change_listeners.append(listener)

    def on_evicted(self, listener: Callable[[Entry], None]) -> None:
        """
        Call C{listener(entry)} when an entry is evicted for room: the
        refresher drops it from its schedule.
        """
        self._evicted_listeners.append(listener)

    def on_settled(self, listener: Callable[[Entry], None]) -> None:
        """
        Call C{listener(entry)} whenever an entry is added or re-evaluated:
        the refresher reschedules it.
        """
        self._settled_listeners.append(listener)

    def load(self, states: Iterable[tuple[str, DomainState]]) -> int:
        """Fill the memory layer at once (tests and tools)."""
        now = self._clock.seconds()
        count = 0
        for domain, state in states:
            self._insert(domain, state, now, now)
            count += 1
        return count

    def warm(self, batch: int = 2000) -> Deferred[int]:
        """
        Read the whole store into memory in the background, a batch per
        reactor turn, so that lookups are served from the first second.
        """
        assert self._loader is not None
        return self._loader.warm(batch)

    def _insert(self, domain: str, state: DomainState, now: float, used_at: float) -> Entry:
        entry = self._by_domain[domain] = Entry(domain, state, now, used_at, self._admin)
        if entry.verdict.note is not None:
            # Quiet while the store is read: those were logged before the restart.
            self._judged(entry, None, log=self.loaded)
        self._settled(entry)
        self._entries.track(entry, now)
        return entry

    def current(self, domain: str) -> Entry | None:
        """
        The entry for a cached domain, brought up to date without I/O.

        Starts a background re-check when the evidence is due, and
        re-decides when a policy has run out.  This is the hot path.
        """
        entry = self._by_domain.get(domain)
        if entry is None:
            return None
        now = self._clock.seconds()
        entry.used_at = now
        if now >= entry.due_at:
            self.revalidate(domain)
        if now >= entry.changes_at:
            before = entry.verdict
            entry.update(entry.state, now, self._admin)
            self._judged(entry, before)
            self._changed(domain)
            self._entries.track(entry, now)
        return entry

    def lookup(self, domain: str) -> Verdict | Deferred[Verdict]:
        """
        The verdict for C{domain}: at once when cached, otherwise after the
        first evaluation or at the deadline, whichever comes first.
        """
        entry = self.current(domain)
        if entry is not None:
            return entry.verdict
        deadline = self._evaluations.deadline
        loader = self._loader
        if loader is not None and loader.misses_stored:
            # Not read yet, or maybe evaluated by another daemon.
            started = self._clock.seconds()
            return loader.read(domain, deadline).addCallback(self._read, domain, started)
        return self._evaluations.first(domain, deadline)

    def _read(self, _: None, domain: str, started: float) -> Verdict | Deferred[Verdict]:
        entry = self.current(domain)
        if entry is not None:
            return entry.verdict
        left = max(0.0, self._evaluations.deadline - (self._clock.seconds() - started))
        return self._evaluations.first(domain, left)

    def revalidate(self, domain: str) -> None:
        """
        Re-check C{domain} in the background, unless already under way or
        the queue is full (the refresher, or a later lookup, gets to it).
        """
        if domain not in self._in_flight and domain not in self._leasing and not self._full():
            self.refresh(domain).addErrback(lambda f: f.trap(CancelledError))

    def refresh(self, domain: str) -> Deferred[Entry | None]:
        """
        Re-evaluate C{domain} (coalesced), under the store's lease: in a
        fleet, the daemon holding it re-evaluates and the others take its
        result.  Fires with the domain's entry.
        """
        if self._fleet is None or domain in self._in_flight:
            return self._evaluate(domain)  # type: ignore[return-value]
        return self._fleet.refresh(domain)

    def adopt(self, domain: str, state: DomainState) -> bool:
        """Take a state that another daemon of the fleet evaluated, if newer."""
        return self._fleet is not None and self._fleet.adopt(domain, state)

    def forget(self, domain: str) -> bool:
        """Drop a domain from memory and from the store."""
        if self._entries.remove(domain) is None:
            return False
        if self._store is not None:
            self._store.delete(domain)
        self._changed(domain)
        return True

    @property
    def admin(self) -> AdminPolicy:
        return self._admin

    def now(self) -> float:
        """The cache's clock, for what describes its entries."""
        return self._clock.seconds()

    def set_admin(self, admin: AdminPolicy) -> None:
        """
        Judge by this administrator's policy from now on (start-up, reload).

        Entries are re-decided lazily: each one's change time is reset, so
        the next lookup (which the memo then lets through) re-decides it,
        and an idle domain costs nothing.
        """
        if admin == self._admin:
            return
        self._admin = admin
        for entry in self._by_domain.values():
            entry.changes_at = 0.0

    def acknowledge(self, domain: str) -> Entry | None:
        """
        Accept a domain's current evidence as its policy from now on: the
        downgrade memory becomes what the evidence shows, and a held
        downgrade is released.
        """
        entry = self._by_domain.get(domain)
        if entry is None:
            return None
        now = self._clock.seconds()
        evidence = decide(domain, entry.state, now)
        if evidence.action is Action.TEMP:
            return None
        memory, _ = remember(None, evidence, entry.state, self._admin, now)
        self._emit(acknowledgement(domain, memory, entry.state.memory))
        self._apply(entry, replace(entry.state, memory=memory))
        if self._store is not None:
            self._store.put(domain, entry.state, entry.used_at)
        return entry

    def _evaluate(self, domain: str) -> Deferred[Entry]:
        entry = self._by_domain.get(domain)
        return self._evaluations.evaluate(domain, entry.state if entry is not None else None)

    def _settle(self, domain: str, state: DomainState | None) -> Entry:
        """
        Take an evaluation's result into the cache and the store; on a
        crash (None), keep what was cached.
        """
        now = self._clock.seconds()
        entry = self._by_domain.get(domain)
        if state is None:
            if entry is None:
                return Entry(domain, DomainState(), now, now, self._admin)
            self._settled(entry)
            return entry
        state = self._remember(domain, entry, state, now)
        if entry is None:
            entry = self._insert(domain, state, now, now)
            self._changed(domain)
        else:
            self._apply(entry, state)
        if self._store is not None:
            self._store.put(domain, state, entry.used_at)
        return entry

    def _apply(self, entry: Entry, state: DomainState) -> None:
        now = self._clock.seconds()
        before = entry.verdict
        entry.update(state, now, self._admin)
        after = entry.verdict
        self._judged(entry, before)
        if before.action is not after.action:
            if weaker(before.action, after.action):
                self.downgrades += 1
                self._metrics.downgrades.inc()
            self._emit(verdict_change(before, after))
        self._changed(entry.domain)
        self._settled(entry)
        self._entries.track(entry, now)

    def _busy(self, domain: str) -> bool:
        """Whether a domain is under evaluation or lease: not to be evicted."""
        return domain in self._in_flight or domain in self._leasing

    def _evicted(self, entry: Entry) -> None:
        for listener in self._evicted_listeners:
            listener(entry)
        self._changed(entry.domain)

    def _judge_first(self, verdict: Verdict) -> Verdict:
        """A first answer, by the administrator's policy too (minimums)."""
        verdict, _ = judge(verdict, None, self._admin, self._clock.seconds())
        return verdict

    def _remember(self, domain: str, entry: Entry | None, state: DomainState,
                  now: float) -> DomainState:
        """Carry the downgrade memory into a newly evaluated state."""
        prior = entry.state.memory if entry is not None else None
        if prior is None and self._admin.downgrade == "off":
            return state
        evidence = decide(domain, state, now)
        memory, outcome = remember(prior, evidence, state, self._admin, now)
        if outcome == WITHDRAWN and prior is not None:
            self._metrics.guard.inc(WITHDRAWN)
            self._emit(withdrawal(prior, evidence, memory))
        return state if memory is state.memory else replace(state, memory=memory)

    def _judged(self, entry: Entry, before: Verdict | None, log: bool = True) -> None:
        """Log and count what the administrator's policy changed, once per change."""
        counted, reports = noted(before, entry.verdict, entry.state, self._admin,
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

    def _changed(self, domain: str) -> None:
        for listener in self._change_listeners:
            listener(domain)

    def _settled(self, entry: Entry) -> None:
        for listener in self._settled_listeners:
            listener(entry)

