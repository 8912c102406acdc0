"""
What the cache and the refresher need of a durable store, whichever it is.
"""

from __future__ import annotations

from typing import Callable, Iterator, Protocol

from twisted.internet.defer import Deferred

from mxpolicyd.evidence.state import DomainState

# A domain's state and when a lookup last asked for it.
Stored = tuple[str, DomainState, float]


class Store(Protocol):
    """What the cache and the refresher need of a durable store."""

    # True when other daemons write to it too: a miss is then worth a read.
    shared: bool

    def scan(self, batch: int) -> Iterator[list[Stored] | Deferred[list[Stored]]]:
        """Every stored domain, in batches (a network store yields Deferreds)."""

    def get(self, domain: str) -> Deferred[Stored | None]:
        """One domain, or None; fails if the store cannot be reached."""

    def put(self, domain: str, state: DomainState, used_at: float,
            acknowledged: bool = False) -> None:
        """
        Record a domain's new state; written behind, never blocking.
        C{acknowledged}: an administrator accepted its verdict (cache ack),
        so its downgrade memory replaces a stronger one that a shared store
        may hold.
        """

    def delete(self, domain: str) -> None:
        """Forget a domain; written behind."""

    def on_merged(self, listener: Callable[[str, DomainState], None]) -> None:
        """
        Call C{listener(domain, state)} when a write found more in the
        store than it brought (another daemon's policy, DANE result or
        memory) and stored the merge, C{state}: a shared store's news for
        the cache.
        """

    def lease(self, domain: str, seconds: float) -> Deferred[bool]:
        """
        Whether this daemon should refresh C{domain} now: False while
        another member of the fleet holds it.
        """


class DurableStore(Store, Protocol):
    """A store written behind: what L{StoreService} flushes and closes."""

    # Where the states live, for log lines.
    path: str

    @property
    def unwritten(self) -> int:
        """States recorded and not yet written."""

    def flush(self) -> Deferred[None]:
        """Write the unwritten states; failures are logged and retried later."""

    def close(self) -> None:
        """Release the file or connection."""
