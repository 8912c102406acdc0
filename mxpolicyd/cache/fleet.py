"""
A fleet of daemons sharing one store (Redis): a short lease per domain makes
one of them re-evaluate it for all, and the others adopt its result from the
store.  What a peer stored is merged with what this daemon knows
(L{mxpolicyd.policy.merge}), never trusted to weaken it: newer peer evidence
that would is a reason to re-check the domain here, lease or not.  With a
store that no other daemon writes (SQLite), every lease is granted and every
refresh is local.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxpolicyd.cache.entries import Entry
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.policy.merge import capped, merged
from mxpolicyd.store.base import Store, Stored

class Fleet:
    """Refreshes under the store's lease, and adoption of the peers' results."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: Store,
        lease: float,
        entries: dict[str, Entry],
        evaluate: Callable[[str], Deferred[Entry]],
        apply: Callable[[Entry, DomainState], None],
        settled: Callable[[Entry], None],
        horizon: float = 3600.0,
    ) -> None:
        """
        @param lease: how long this daemon holds a domain while it
            re-evaluates it for the fleet.
        @param entries: the cache's table.
        @param evaluate: re-evaluates a domain here (coalesced).
        @param apply: takes a new state into a cached entry.
        @param settled: tells the refresher to reschedule an entry.
        @param horizon: the longest this daemon waits between checks of a
            domain: a peer's state never schedules one later.
        """
        self._horizon = horizon
        # Domains whose lease is being asked for: not to be re-checked or
        # evicted meanwhile.
        self.leasing: set[str] = set()
        self._clock = clock
        self._store = store
        self._lease = lease
        self._entries = entries
        self._evaluate = evaluate
        self._apply = apply
        self._settled = settled
        # A write that found more in the store brings it to the cache too.
        store.on_merged(self._merged_in_store)

    def refresh(self, domain: str) -> Deferred[Entry | None]:
        """
        Re-evaluate C{domain} if this daemon gets its lease; otherwise take
        what the fleet member holding it stored, and look again after the
        lease.  Fires with the domain's entry.
        """
        store = self._store
        self.leasing.add(domain)
        d = store.lease(domain, self._lease)

        def leased(granted: bool) -> Deferred[Any]:
            self.leasing.discard(domain)
            if granted:
                return self._evaluate(domain)
            return store.get(domain).addCallback(self._adopt_row, domain)

        def unleased(failure: Failure) -> Deferred[Any]:
            # A store that cannot say: refresh here, answers must stay fresh.
            self.leasing.discard(domain)
            failure.trap(Exception)
            return self._evaluate(domain)

        return d.addCallbacks(leased, unleased)

    def adopt(self, domain: str, state: DomainState) -> bool:
        """
        Take what a state that another daemon stored adds to ours
        (L{merged}); whether it added anything.
        """
        entry = self._entries.get(domain)
        if entry is None:
            return False
        taken = merged(entry.state, state, self._clock.seconds(), self._horizon).state
        if taken is None:
            return False
        self._apply(entry, taken)
        return True

    def stored(self, state: DomainState) -> DomainState:
        """
        A state read from the store for a domain this daemon does not
        hold (start-up, a miss): there is nothing of ours to weaken, but
        another daemon may have written it, so its times are capped.
        """
        return capped(state, self._clock.seconds(), self._horizon)

    def _merged_in_store(self, domain: str, state: DomainState) -> None:
        self.adopt(domain, state)

    def _adopt_row(self, row: Stored | None, domain: str) -> Entry | None | Deferred[Entry]:
        entry = self._entries.get(domain)
        if entry is None:
            return None
        if row is not None:
            taken, recheck = merged(entry.state, row[1], self._clock.seconds(), self._horizon)
            if taken is not None:
                self._apply(entry, taken)
            if recheck:
                # Newer evidence from a peer that would weaken ours (or no
                # refetch of a policy about to run out): only this daemon's
                # own evaluation may weaken its answer.
                self._log.info(
                    "Not taking all of the fleet's stored state of {domain} (newer "
                    "but weaker evidence, or a policy overdue for its refetch); "
                    "checking the domain here",
                    domain=domain,
                )
                return self._evaluate(domain)
            if taken is not None:
                return entry
        # Nothing newer yet: the lease holder is still at it.
        entry.due_at = max(entry.due_at, self._clock.seconds() + self._lease)
        self._settled(entry)
        return entry
