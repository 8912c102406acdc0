"""
Reading the store into the cache: all of it in the background at start-up,
a batch per reactor turn, so that a restarted daemon answers from memory
from the first second; and one domain on a miss, while that runs (its batch
may not have arrived yet) or whenever a fleet shares the store (a peer may
have evaluated it).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator, cooperate
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxpolicyd.cache.entries import Entries, Entry
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.store.base import Store, Stored


class StoreLoader:
    """Loads stored domains into the cache's entries."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: Store,
        entries: Entries,
        insert: Callable[[str, DomainState, float, float], Entry],
        cooperator: Cooperator | None = None,
    ) -> None:
        """
        @param insert: adds a domain to the cache: C{insert(domain, state,
            now, used_at)}.
        @param cooperator: runs the background load (Twisted's global one by
            default).
        """
        self._clock = clock
        self._store = store
        self._entries = entries
        self._insert = insert
        self._cooperator = cooperator

    @property
    def misses_stored(self) -> bool:
        """Whether a domain missing from memory may be in the store."""
        return not self._entries.loaded or self._store.shared

    def warm(self, batch: int = 2000) -> Deferred[int]:
        """
        Read the whole store into memory in the background, a batch per
        reactor turn; fires with the number of domains loaded.  A domain
        evaluated meanwhile keeps its new state.
        """
        store = self._store
        table = self._entries.by_domain
        count = [0]

        def insert(rows: list[Stored]) -> None:
            now = self._clock.seconds()
            for domain, state, used_at in rows:
                if domain not in table:
                    self._insert(domain, state, now, used_at or now)
                    count[0] += 1

        def batches() -> Iterator[Deferred[None] | None]:
            # A store on the network yields Deferreds; the cooperator waits.
            for rows in store.scan(batch):
                if isinstance(rows, Deferred):
                    yield rows.addCallback(insert)
                else:
                    insert(rows)
                    yield None

        def done(_: Any) -> int:
            entries = self._entries
            entries.loaded = True
            # Rows arrive in name order: queue them by last use before
            # evicting any, then trim to the cap (a store written before
            # the cap, or under a higher one, may hold more).
            entries.reorder()
            entries.trim()
            return count[0]

        run = self._cooperator.cooperate if self._cooperator is not None else cooperate
        return run(batches()).whenDone().addCallback(done)

    def read(self, domain: str, deadline: float) -> Deferred[None]:
        """
        Read C{domain} into the cache if it is stored; fires when done.  A
        store that fails, or has not answered within C{deadline}, is logged
        and taken as a miss.
        """
        d = self._store.get(domain)
        d.addTimeout(deadline, self._clock)
        return d.addCallbacks(self._found, self._unreadable,
                              callbackArgs=(domain,), errbackArgs=(domain,))

    def _found(self, row: Stored | None, domain: str) -> None:
        if row is not None and domain not in self._entries.by_domain:
            now = self._clock.seconds()
            self._insert(domain, row[1], now, now)

    def _unreadable(self, failure: Failure, domain: str) -> None:
        self._log.warn(
            "Cannot read {domain} from the store ({error}); evaluating it afresh",
            domain=domain,
            error=failure.getErrorMessage(),
        )
