"""
The policy cache: every domain's state and verdict in memory, in front of
the evaluator and the durable store.  The answers, the control commands and
the refresher use it; it assembles the parts that do each job.

A lookup of a cached domain is a dict lookup and a clock read.  When the
evidence behind a verdict is due, the lookup still answers at once and starts
a background re-check (stale-while-revalidate).  A lookup of an unknown domain
starts an evaluation and waits for it no longer than the lookup deadline
(L{mxpolicyd.cache.evaluations}).  Domains holding no policy are capped in
number (L{mxpolicyd.cache.entries}).  An idle domain whose downgrade memory
outlives the refresh window, or one evicted for room, is reduced to its
memory (L{reduce}), and a lookup of it then waits for a fresh evaluation as
for a new domain.  At start-up the
store is read in the background; a domain asked for before its batch
arrives is read from the store on its own (L{mxpolicyd.cache.loading}).  In
a fleet sharing the store, one daemon re-evaluates a domain for all
(L{mxpolicyd.cache.fleet}).  Every verdict is judged by the administrator's
policy (L{mxpolicyd.cache.judging}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator

from mxpolicyd.cache.entries import Entries, Entry
from mxpolicyd.cache.evaluations import DomainEvaluator, Evaluations
from mxpolicyd.cache.fleet import Fleet
from mxpolicyd.cache.judging import EntryJudge
from mxpolicyd.cache.loading import StoreLoader
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy import verdict
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.verdict import Verdict
from mxpolicyd.store.base import Store


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """
    The cache's bounds and times: the [lookup] settings and store.lease,
    which mxpolicyd.config checks.
    """

    # How long a lookup waits for a domain's first evaluation.
    deadline: float = 2.0
    # Evaluations running at once.
    max_evaluations: int = 100
    # Evaluations waiting for a slot; beyond, a lookup of a new domain is
    # answered at once as if its first evaluation had run out of time.
    max_waiting: int = 1000
    # Cached domains holding no unexpired MTA-STS policy (DANE ones too:
    # entries.holds_policy); beyond, the least recently used are evicted,
    # from the store too, or reduced to their downgrade memory.
    max_negative: int = 100000
    # How long this daemon holds a domain while it re-evaluates it for a
    # fleet sharing the store.
    lease: float = 60.0
    # The longest this daemon waits between checks of a domain's evidence
    # (mta_sts.txt_ttl_max, mta_sts.retry_interval, dane.ttl_max): a fleet
    # peer's state never schedules a check later than this from now.
    horizon: float = 3600.0


def _no_policy_yet(domain: str) -> Verdict:
    """The first answer with DANE off: as if there were no policy."""
    return verdict.first_answer(domain, None, False)


class PolicyCache:
    """Cached domains, their evaluations and their verdicts."""

    def __init__(
        self,
        clock: IReactorTime,
        evaluator: DomainEvaluator,
        store: Store | None = None,
        settings: CacheSettings = CacheSettings(),
        first_answer: Callable[[str], Verdict] = _no_policy_yet,
        metrics: Metrics | None = None,
        cooperator: Cooperator | None = None,
    ) -> None:
        """
        @param first_answer: what to answer for a domain whose first
            evaluation has not ended by the deadline (L{verdict.first_answer}
            with what the evaluator knows of DANE so far).
        @param cooperator: runs the background load (Twisted's global one by
            default).
        """
        metrics = metrics or Metrics()
        self._clock = clock
        self._store = store
        self._change_listeners: list[Callable[[str], None]] = []
        self._settled_listeners: list[Callable[[Entry], None]] = []
        self._evicted_listeners: list[Callable[[Entry], None]] = []
        self._judge = EntryJudge(clock, metrics)
        self._entries = Entries(clock, store, metrics, settings.max_negative, self._busy,
                                self._evicted, self._reduce_evicted)
        self._evaluations = Evaluations(
            clock, evaluator, self._settle, first_answer, self._judged_first, metrics,
            deadline=settings.deadline, max_evaluations=settings.max_evaluations,
            max_waiting=settings.max_waiting)
        self._loader: StoreLoader | None = None
        self._fleet: Fleet | None = None
        self._leasing: set[str] = set()
        if store is not None:
            self._fleet = Fleet(clock, store, settings.lease, self._entries.by_domain,
                                self._evaluate, self._apply, self._settled, settings.horizon)
            self._leasing = self._fleet.leasing
            insert = self._insert_shared if store.shared else self._insert
            self._loader = StoreLoader(clock, store, self._entries, insert, cooperator)
        # Read by the lookup path (current, revalidate) without going
        # through the parts: the table, the domains under evaluation, and
        # whether the queue for a slot is full.
        self._by_domain = self._entries.by_domain
        self._in_flight = self._evaluations.in_flight
        self._full = self._evaluations.full

    def set_evaluator(self, evaluator: DomainEvaluator, first_answer: Callable[[str], Verdict],
                      deadline: float) -> None:
        """Evaluate with these from now on (a reload)."""
        evaluations = self._evaluations
        evaluations.evaluator = evaluator
        evaluations.first_answer = first_answer
        evaluations.deadline = deadline

    def set_bounds(self, max_negative: int, max_waiting: int) -> None:
        """Apply new memory bounds (a reload); a lower cap evicts at once."""
        self._evaluations.max_waiting = max_waiting
        self._entries.max_negative = max_negative
        self._entries.trim()

    @property
    def admin(self) -> AdminPolicy:
        return self._judge.admin

    def set_admin(self, admin: AdminPolicy) -> None:
        """
        Judge by this administrator's policy from now on (start-up, reload).

        Entries are re-decided lazily: each one's change time is reset, so
        the next lookup (which the memo then lets through) re-decides it,
        and an idle domain costs nothing.
        """
        if admin == self._judge.admin:
            return
        self._judge.admin = admin
        for entry in self._by_domain.values():
            entry.changes_at = 0.0

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
    def evaluations_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def evaluations_waiting(self) -> int:
        return self._evaluations.waiting

    def __len__(self) -> int:
        return len(self._by_domain)

    def __contains__(self, domain: str) -> bool:
        return domain in self._by_domain

    def get(self, domain: str) -> Entry | None:
        return self._by_domain.get(domain)

    def domains(self) -> Iterable[str]:
        return self._by_domain.keys()

    def now(self) -> float:
        """The cache's clock, for what describes its entries."""
        return self._clock.seconds()

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
            if entry.state.remembered_only:
                # Only the downgrade memory is left: nothing to answer from.
                # lookup() evaluates it as a new domain, judged against it.
                return None
            self.revalidate(domain)
        if now >= entry.changes_at:
            self._judge.redecide(entry, now)
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

    def memory_ends(self, state: DomainState) -> float:
        """
        When a domain's downgrade memory ages out (policy.downgrade_memory_days
        after it was last seen); -inf without memory, or with downgrade
        protection off, when nothing reads it.
        """
        memory = state.memory
        admin = self._judge.admin
        if memory is None or admin.downgrade == "off":
            return -math.inf
        return memory.seen_at + admin.memory

    def reduce(self, domain: str) -> Entry | None:
        """
        Keep only a domain's downgrade memory, in memory and in the store,
        and drop its evidence: an idle domain whose memory outlives the
        refresh window, or one evicted for room.  Its next lookup waits for
        a fresh evaluation, judged against the memory.  None when the
        domain is not cached or holds no memory.
        """
        entry = self._by_domain.get(domain)
        if entry is None or entry.state.memory is None:
            return None
        if not entry.state.remembered_only:
            now = self._clock.seconds()
            state = entry.state.reduced()
            # Quietly: nothing about the domain changed, its evidence is
            # only no longer kept.
            entry.update(state, now, self._judge.admin)
            self._entries.track(entry, now)
            if self._store is not None:
                self._store.put(domain, state, entry.used_at)
            self._changed(domain)
        return entry

    def forget(self, domain: str) -> bool:
        """Drop a domain from memory and from the store."""
        if self._entries.remove(domain) is None:
            return False
        if self._store is not None:
            self._store.delete(domain)
        self._changed(domain)
        return True

    def acknowledge(self, domain: str) -> Entry | None:
        """
        Accept a domain's current evidence as its policy from now on: the
        downgrade memory becomes what the evidence shows, and a held
        downgrade is released.  None when the domain is not cached or its
        evidence is TEMP.
        """
        entry = self._by_domain.get(domain)
        if entry is None:
            return None
        state = self._judge.acknowledged(entry, self._clock.seconds())
        if state is None:
            return None
        self._apply(entry, state)
        if self._store is not None:
            self._store.put(domain, entry.state, entry.used_at, acknowledged=True)
        return entry

    def _insert(self, domain: str, state: DomainState, now: float, used_at: float) -> Entry:
        # Quiet while the store is read: its notes were logged before the restart.
        entry = self._by_domain[domain] = self._judge.entry(
            domain, state, now, used_at, log=self._entries.loaded)
        self._settled(entry)
        self._entries.track(entry, now)
        return entry

    def _insert_shared(self, domain: str, state: DomainState, now: float,
                       used_at: float) -> Entry:
        """A domain read from a store that other daemons write: their word, merged."""
        assert self._fleet is not None
        return self._insert(domain, self._fleet.stored(state), now, min(used_at, now))

    def _apply(self, entry: Entry, state: DomainState, fresh: bool = False) -> None:
        now = self._clock.seconds()
        self._judge.apply(entry, state, now, fresh)
        self._changed(entry.domain)
        self._settled(entry)
        self._entries.track(entry, now)

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
                return Entry(domain, DomainState(), now, now, self._judge.admin)
            self._settled(entry)
            return entry
        state = self._judge.with_memory(domain, entry, state, now)
        if entry is None:
            entry = self._insert(domain, state, now, now)
            self._changed(domain)
        else:
            # A domain reduced to its memory is decided as a new one: the
            # verdict it had was no answer, so no change to log.
            self._apply(entry, state, fresh=entry.state.remembered_only)
        if self._store is not None:
            self._store.put(domain, state, entry.used_at)
        return entry

    def _judged_first(self, verdict: Verdict) -> Verdict:
        """
        A first answer (the deadline, or the queue full), judged by the
        administrator's policy and against the downgrade memory of a domain
        reduced to it.
        """
        entry = self._by_domain.get(verdict.domain)
        memory = entry.state.reduced() if entry is not None and entry.state.memory else None
        return self._judge.first_answer(verdict, memory)

    def _reduce_evicted(self, entry: Entry) -> bool:
        """
        For an entry evicted for room: reduce it to its downgrade memory if
        that is still to be kept (and tell the refresher, which forgets it
        when the memory ages out); whether it was.
        """
        if self.memory_ends(entry.state) <= self._clock.seconds():
            return False
        self.reduce(entry.domain)
        self._settled(entry)
        return True

    def _busy(self, domain: str) -> bool:
        """Whether a domain is under evaluation or lease: not to be evicted."""
        return domain in self._in_flight or domain in self._leasing

    def _evicted(self, entry: Entry) -> None:
        for listener in self._evicted_listeners:
            listener(entry)
        self._changed(entry.domain)

    def _changed(self, domain: str) -> None:
        for listener in self._change_listeners:
            listener(domain)

    def _settled(self, entry: Entry) -> None:
        for listener in self._settled_listeners:
            listener(entry)
