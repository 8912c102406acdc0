"""
A fleet of daemons sharing one store (Redis): a short lease per domain makes
one of them re-evaluate it for all, and the others adopt its result from the
store.  What a peer stored is merged with what this daemon knows, never
trusted to make it forget an unexpired policy.  With a store that no other
daemon writes (SQLite), every lease is granted and every refresh is local.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from mxpolicyd.cache.entries import Entry
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.store.base import Store, Stored


def checked(state: DomainState) -> float:
    """When the evidence in C{state} was last gathered."""
    if state.dane is None:
        return state.sts.checked_at
    return max(state.sts.checked_at, state.dane.checked_at)


def merged(ours: DomainState, theirs: DomainState, now: float) -> DomainState | None:
    """
    The state to take from a peer, or None when ours is as new.  Never one
    that drops an unexpired MTA-STS policy we hold: a peer that lost its
    memory (or found no TXT record) is no reason to forget a policy before
    max_age (RFC 8461 s5.1); a policy legitimately withdrawn arrives as a
    fetched mode none policy.
    """
    if checked(theirs) <= checked(ours):
        return None
    if ours.sts.active_policy(now) is not None and theirs.sts.policy is None:
        return replace(theirs, sts=ours.sts)
    return theirs


class Fleet:
    """Refreshes under the store's lease, and adoption of the peers' results."""

    def __init__(
        self,
        clock: IReactorTime,
        store: Store,
        lease: float,
        entries: dict[str, Entry],
        evaluate: Callable[[str], Deferred[Entry]],
        apply: Callable[[Entry, DomainState], None],
        settled: Callable[[Entry], None],
    ) -> None:
        """
        @param lease: how long this daemon holds a domain while it
            re-evaluates it for the fleet.
        @param entries: the cache's table.
        @param evaluate: re-evaluates a domain here (coalesced).
        @param apply: takes a new state into a cached entry.
        @param settled: tells the refresher to reschedule an entry.
        """
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
        Take a state that another daemon of the fleet evaluated, merged
        (L{merged}); whether it was newer than ours.
        """
        entry = self._entries.get(domain)
        if entry is None:
            return False
        taken = merged(entry.state, state, self._clock.seconds())
        if taken is None:
            return False
        self._apply(entry, taken)
        return True

    def _adopt_row(self, row: Stored | None, domain: str) -> Entry | None:
        entry = self._entries.get(domain)
        if entry is None:
            return None
        if row is not None and self.adopt(domain, row[1]):
            return entry
        # Nothing newer yet: the lease holder is still at it.
        entry.due_at = max(entry.due_at, self._clock.seconds() + self._lease)
        self._settled(entry)
        return entry
