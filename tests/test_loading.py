"""
Tests for L{mxpolicyd.cache.loading}: reading the store at start-up and on
a miss, on their own (tests/test_cache.py drives them through the cache).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock, Cooperator
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.entries import Entries, Entry
from mxpolicyd.cache.loading import StoreLoader
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.store.base import Stored

from .test_cache import RecordingStore, enforced, negative


class SlowStore(RecordingStore):
    """A store whose reads hang, or fail, when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.broken: Exception | None = None
        self.hang = False

    def get(self, domain: str) -> Deferred[Stored | None]:
        if self.hang:
            return Deferred()
        if self.broken is not None:
            return fail(self.broken)
        return super().get(domain)


class StoreLoaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = SlowStore()
        self.entries = Entries(self.clock, self.store, Metrics(), 1, lambda d: False,
                               lambda e: None)
        self.inserted: list[tuple[str, float, float]] = []
        self.loader = StoreLoader(self.clock, self.store, self.entries, self.insert,
                                  Cooperator(scheduler=lambda f: self.clock.callLater(0, f)))
        self.events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def insert(self, domain: str, state: DomainState, now: float, used_at: float) -> Entry:
        self.inserted.append((domain, now, used_at))
        entry = self.entries.by_domain[domain] = Entry(domain, state, now, used_at)
        self.entries.track(entry, now)
        return entry

    def warm(self, batch: int) -> int:
        d = self.loader.warm(batch)
        while not d.called:
            self.clock.advance(0)
        return self.successResultOf(d)

    def test_warm(self) -> None:
        """Every row is inserted, in batches, with its last use (now if it has none)."""
        self.store.rows["a.test"] = (enforced(1000), 900.0)
        self.store.rows["b.test"] = (enforced(1000), 0.0)
        self.store.rows["c.test"] = (enforced(1000), 800.0)
        self.assertEqual(self.warm(2), 3)
        self.assertEqual(self.inserted, [("a.test", 1000, 900.0), ("b.test", 1000, 1000),
                                         ("c.test", 1000, 800.0)])

    def test_warm_keeps_newer(self) -> None:
        """A domain already in memory (evaluated during the load) is not replaced, nor counted."""
        self.store.rows["a.test"] = (enforced(1000), 900.0)
        self.entries.by_domain["a.test"] = Entry("a.test", DomainState(), 1000, 1000)
        self.assertEqual(self.warm(10), 0)
        self.assertEqual(self.inserted, [])

    def test_warm_then_evicts_by_last_use(self) -> None:
        """The load ends loaded, and past the cap the least recently used rows go."""
        self.store.rows["a.test"] = (negative(1000), 500.0)
        self.store.rows["b.test"] = (negative(1000), 100.0)
        self.assertTrue(self.loader.misses_stored)
        self.assertEqual(self.warm(1), 2)
        self.assertTrue(self.entries.loaded)
        self.assertFalse(self.loader.misses_stored)
        self.assertEqual(list(self.entries.by_domain), ["a.test"])
        self.assertEqual(self.store.deleted, ["b.test"])

    def test_shared_store_always_read(self) -> None:
        """A store other daemons write to may hold any miss, loaded or not."""
        self.store.shared = True
        self.warm(10)
        self.assertTrue(self.loader.misses_stored)

    def test_read(self) -> None:
        """A stored domain read on a miss is inserted as used now; an absent one is not."""
        self.store.rows["a.test"] = (enforced(1000), 1.0)
        self.successResultOf(self.loader.read("a.test", 2.0))
        self.successResultOf(self.loader.read("b.test", 2.0))
        self.assertEqual(self.inserted, [("a.test", 1000, 1000)])
        self.assertEqual(self.store.gets, ["a.test", "b.test"])

    def test_read_failure_is_a_miss(self) -> None:
        """A store that fails is logged, naming the domain, and read as a miss."""
        self.store.broken = ConnectionError("gone")
        self.assertIsNone(self.successResultOf(self.loader.read("a.test", 2.0)))
        warnings = [e for e in self.events if e["log_level"] == LogLevel.warn]
        self.assertEqual([(e["domain"], e["error"]) for e in warnings], [("a.test", "gone")])

    def test_read_deadline(self) -> None:
        """A store that hangs is given up at the deadline."""
        self.store.hang = True
        d = self.loader.read("a.test", 2.0)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.inserted, [])
