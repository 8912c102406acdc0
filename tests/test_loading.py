"""
Tests for L{mxpolicyd.cache.loading}: reading the store at start-up and on
a miss, on its own and through the cache.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock, Cooperator
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.entries import Entries, Entry
from mxpolicyd.cache.loading import StoreLoader
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.verdict import Action
from mxpolicyd.store.base import Stored

from .test_cache import RecordingStore, ScriptedEvaluator, enforced, negative


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


class WarmUpTests(SynchronousTestCase):
    """Start-up: the store is read in the background; misses meanwhile read one row."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        for i in range(10):
            self.store.rows["d%d.test" % i] = (enforced(self.clock.seconds()), 900.0)
        self.cache = PolicyCache(
            self.clock, self.evaluator, self.store,
            cooperator=Cooperator(scheduler=lambda f: self.clock.callLater(0, f)),
        )

    def test_warm(self) -> None:
        """warm() loads every stored domain, keeps its last use, then marks the cache loaded."""
        d = self.cache.warm(batch=3)
        self.assertFalse(self.cache.loaded)
        while not d.called:
            self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), 10)
        self.assertTrue(self.cache.loaded)
        entry = self.cache.get("d7.test")
        assert entry is not None
        self.assertEqual(entry.used_at, 900.0)
        self.assertEqual(self.evaluator.calls, [])

    def test_lookup_before_loaded(self) -> None:
        """A stored domain asked for before its batch arrives is read alone, not evaluated."""
        self.cache.warm(batch=3)
        d = self.cache.lookup("d9.test")
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).action, Action.STS_ENFORCE)
        self.assertEqual(self.store.gets, ["d9.test"])
        self.assertEqual(self.evaluator.calls, [])

    def test_unknown_before_loaded(self) -> None:
        """A domain not in the store is evaluated as usual during the load."""
        self.cache.warm(batch=3)
        d = self.cache.lookup("new.test")
        assert isinstance(d, Deferred)
        self.assertEqual(len(self.evaluator.calls), 1)

    def test_evaluated_state_not_overwritten(self) -> None:
        """A domain evaluated during the load keeps its new state when its batch arrives."""
        d = self.cache.warm(batch=100)
        self.evaluator.immediate = DomainState()
        self.cache.revalidate("d3.test")
        while not d.called:
            self.clock.advance(0)
        entry = self.cache.get("d3.test")
        assert entry is not None
        self.assertEqual(entry.verdict.action, Action.NONE)


class NegativeCapWarmTests(SynchronousTestCase):
    def test_load_evicts_by_last_use(self) -> None:
        """Rows read at start-up (in name order) are evicted by last use, after the load."""
        clock = Clock()
        clock.advance(10000)
        store = RecordingStore()
        used = {"a.test": 500.0, "b.test": 900.0, "c.test": 100.0, "d.test": 700.0}
        for domain, at in used.items():
            store.rows[domain] = (negative(clock.seconds()), at)
        store.rows["p.test"] = (enforced(clock.seconds()), 1.0)
        cache = PolicyCache(
            clock, ScriptedEvaluator(), store, CacheSettings(max_negative=2),
            cooperator=Cooperator(scheduler=lambda f: clock.callLater(0, f)),
        )
        d = cache.warm(batch=2)
        while not d.called:
            clock.advance(0)
        self.assertEqual(sorted(cache.domains()), ["b.test", "d.test", "p.test"])
        self.assertEqual(sorted(store.deleted), ["a.test", "c.test"])
