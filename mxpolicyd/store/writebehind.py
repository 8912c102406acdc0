"""
Write-behind: the changes a store has been given and not yet written, by
domain.  The cache records a change here without any I/O; the store's timer
(L{mxpolicyd.store.service.StoreService}) writes them in batches, one batch
at a time.  A batch that cannot be written stays in memory, behind anything
newer, for the next flush, so the daemon goes on answering from memory
whatever happens to the disk or to Redis.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

T = TypeVar("T")

# The newest change of each domain: its value to write, or None to delete it.
Batch = dict[str, T | None]


class WriteBehind(Generic[T]):
    """
    The newest unwritten change of each domain, written in batches.

    One batch is written at a time, so that writes land in the order they
    were made; what a failed write leaves of its batch is kept for the next
    flush unless a newer change replaced it.
    """

    def __init__(
        self,
        write: Callable[[Batch[T]], Deferred[object]],
        written: Callable[[int], None],
        failed: Callable[[Failure, int], None],
    ) -> None:
        """
        @param write: writes a batch.  What is left in the batch when the
            write fails is kept, so a writer that confirms part of a batch
            before failing removes what it confirmed.
        @param written: told the size of each batch written.
        @param failed: told why a batch failed, and its size, once what is
            kept of it is back among the unwritten changes.
        """
        self._write = write
        self._written = written
        self._failed = failed
        self._unwritten: Batch[T] = {}
        self._writing: Deferred[None] | None = None

    def put(self, domain: str, value: T) -> None:
        self._unwritten[domain] = value

    def delete(self, domain: str) -> None:
        self._unwritten[domain] = None

    def __contains__(self, domain: str) -> bool:
        """Whether C{domain} has a change not yet written."""
        return domain in self._unwritten

    def __getitem__(self, domain: str) -> T | None:
        """The newest unwritten change of C{domain}: None is a deletion."""
        return self._unwritten[domain]

    def __len__(self) -> int:
        """Domains with changes not yet written, not counting a batch in flight."""
        return len(self._unwritten)

    def flush(self) -> Deferred[None]:
        """
        Write the unwritten changes as one batch; fires when that is over,
        whether it worked or not (the hooks say which).  While a batch is
        being written, wait for it instead: what came in since goes with
        the next flush.
        """
        if self._writing is None and self._unwritten:
            batch, self._unwritten = self._unwritten, {}
            writing = maybeDeferred(self._write, batch).addCallbacks(
                self._done, self._keep, callbackArgs=(len(batch),), errbackArgs=(batch, len(batch))
            )
            self._writing = writing
            # It may be over already: the synchronous writer of the tests.
            writing.addBoth(self._idle)
        if self._writing is None:
            return succeed(None)
        # Each caller its own Deferred: one caller's callbacks must not
        # change what another gets.
        over: Deferred[None] = Deferred()
        self._writing.addBoth(lambda _: over.callback(None))
        return over

    def _done(self, result: object, count: int) -> None:
        self._written(count)

    def _keep(self, failure: Failure, batch: Batch[T], count: int) -> None:
        newer = self._unwritten
        # Newer changes win; merge the smaller into the larger, since a long
        # outage retries a large batch at every flush.
        if len(batch) > len(newer):
            batch.update(newer)
            self._unwritten = batch
        else:
            for domain, value in batch.items():
                newer.setdefault(domain, value)
        self._failed(failure, count)

    def _idle(self, result: None) -> None:
        self._writing = None
