"""
Tests for L{mxpolicyd.cache.fleet}: leases and adopting a peer's state, on
their own and through the cache (tests/test_refresher.py drives them from
the refresher).
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.entries import Entry
from mxpolicyd.cache.fleet import Fleet, merged
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.verdict import Action
from mxpolicyd.store.base import Stored

from .test_cache import RecordingStore, ScriptedEvaluator, enforced

NOW = 1000.0


class MergedTests(SynchronousTestCase):
    def test_newer_only(self) -> None:
        """A peer's state is taken only when its evidence was gathered later, DANE's included."""
        ours = enforced(NOW)
        self.assertIsNone(merged(ours, enforced(NOW), NOW))
        self.assertIsNone(merged(ours, enforced(NOW - 1), NOW))
        newer = enforced(NOW + 1)
        self.assertIs(merged(ours, newer, NOW), newer)
        dane_newer = replace(enforced(NOW - 1), dane=DaneState(DaneStatus.NONE, "x",
                                                               checked_at=NOW + 5))
        self.assertIs(merged(ours, dane_newer, NOW), dane_newer)

    def test_unexpired_policy_kept(self) -> None:
        """A newer state without a policy keeps ours while it is unexpired, not after."""
        ours = enforced(NOW)
        lost = DomainState(sts=StsState(checked_at=NOW + 10))
        taken = merged(ours, lost, NOW + 10)
        assert taken is not None
        self.assertEqual(taken.sts, ours.sts)
        self.assertIs(merged(ours, lost, NOW + 86400), lost)


class LeaseStore(RecordingStore):
    """A store whose lease answers the test scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: Deferred[bool] = succeed(True)

    def lease(self, domain: str, seconds: float) -> Deferred[bool]:
        return self.answer


class FleetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.store = LeaseStore()
        self.entry = Entry("a.test", enforced(NOW, due=10), NOW, NOW)
        self.evaluated: list[str] = []
        self.applied: list[DomainState] = []
        self.settled: list[Entry] = []
        self.fleet = Fleet(self.clock, self.store, 60.0, {"a.test": self.entry},
                           self.evaluate, self.apply, self.settled.append)

    def evaluate(self, domain: str) -> Deferred[Entry]:
        self.evaluated.append(domain)
        return succeed(self.entry)

    def apply(self, entry: Entry, state: DomainState) -> None:
        self.applied.append(state)

    def test_granted(self) -> None:
        """With the lease, the domain is evaluated here."""
        self.assertIs(self.successResultOf(self.fleet.refresh("a.test")), self.entry)
        self.assertEqual((self.evaluated, self.applied), (["a.test"], []))

    def test_leasing_while_asked(self) -> None:
        """While the store has not answered, the domain is marked as leasing, and no longer after."""
        self.store.answer = Deferred()
        self.fleet.refresh("a.test")
        self.assertEqual(self.fleet.leasing, {"a.test"})
        self.store.answer.callback(True)
        self.assertEqual(self.fleet.leasing, set())

    def test_held_elsewhere_adopts(self) -> None:
        """Without the lease, a newer stored state is applied, not evaluated."""
        newer = enforced(NOW + 5)
        self.store.rows["a.test"] = (newer, NOW)
        self.store.answer = succeed(False)
        self.assertIs(self.successResultOf(self.fleet.refresh("a.test")), self.entry)
        self.assertEqual((self.evaluated, self.applied, self.settled), ([], [newer], []))

    def test_held_nothing_newer(self) -> None:
        """Without the lease and nothing newer, look again after the lease: due later, rescheduled."""
        self.store.answer = succeed(False)
        self.successResultOf(self.fleet.refresh("a.test"))
        self.assertEqual(self.entry.due_at, NOW + 60)
        self.assertEqual((self.evaluated, self.applied, self.settled), ([], [], [self.entry]))

    def test_store_cannot_say(self) -> None:
        """A lease request that fails refreshes here: answers must stay fresh."""
        self.store.answer = fail(ConnectionError("redis down"))
        self.successResultOf(self.fleet.refresh("a.test"))
        self.assertEqual((self.evaluated, self.fleet.leasing), (["a.test"], set()))


class CacheFleetTests(SynchronousTestCase):
    """A store shared with other daemons: leases and reads on a miss."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.store = SharedStore()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store, CacheSettings(lease=60))
        self.cache.loaded = True

    def test_due_lookup_asks_for_the_lease(self) -> None:
        """A lookup of a due domain re-evaluates only if this daemon gets the lease."""
        now = self.clock.seconds()
        self.cache.load([("example.test", enforced(now, due=10))])
        self.store.held.add("example.test")
        self.clock.advance(11)
        self.cache.lookup("example.test")
        self.cache.lookup("example.test")
        self.assertEqual(self.evaluator.calls, [])
        self.assertEqual(self.store.leases, ["example.test"])
        entry = self.cache.get("example.test")
        assert entry is not None
        self.assertEqual(entry.due_at, self.clock.seconds() + 60)
        self.store.held.clear()
        self.clock.advance(60)
        self.cache.lookup("example.test")
        self.assertEqual(len(self.evaluator.calls), 1)

    def test_miss_reads_shared_store(self) -> None:
        """On a shared store, a miss reads what another daemon stored before evaluating."""
        self.store.rows["example.test"] = (enforced(self.clock.seconds()), 0.0)
        d = self.cache.lookup("example.test")
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).action, Action.STS_ENFORCE)
        self.assertEqual(self.evaluator.calls, [])

    def test_slow_store_read_bounded(self) -> None:
        """A store read that hangs gives way to an evaluation within the lookup deadline."""
        self.store.hang = True
        d = self.cache.lookup("example.test")
        assert isinstance(d, Deferred)
        self.clock.advance(2.0)
        self.assertEqual(len(self.evaluator.calls), 1)
        self.assertEqual(self.successResultOf(d).action, Action.NONE)


class SharedStore(RecordingStore):
    shared = True

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] = set()
        self.leases: list[str] = []
        self.hang = False

    def get(self, domain: str) -> Deferred[Stored | None]:
        if self.hang:
            return Deferred()
        return super().get(domain)

    def lease(self, domain: str, seconds: float) -> Deferred[bool]:
        self.leases.append(domain)
        return succeed(domain not in self.held)


class AdoptTests(SynchronousTestCase):
    """A state a fleet peer stored, taken into the cache."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = RecordingStore()
        self.cache = PolicyCache(self.clock, ScriptedEvaluator(), self.store)
        self.cache.load([("example.test", enforced(self.clock.seconds()))])
        self.changes: list[str] = []
        self.cache.on_change(self.changes.append)

    def test_adopt_newer_only(self) -> None:
        """A fleet member's state replaces ours only when it was checked later."""
        entry = self.cache.get("example.test")
        assert entry is not None
        none = StsPolicy("none", 86400, ())
        older = DomainState(sts=StsState(policy=none, expires_at=10**9,
                                         checked_at=self.clock.seconds() - 10))
        self.assertFalse(self.cache.adopt("example.test", older))
        self.assertEqual(entry.verdict.action, Action.STS_ENFORCE)
        newer = replace(older, sts=replace(older.sts, checked_at=self.clock.seconds() + 10))
        self.assertTrue(self.cache.adopt("example.test", newer))
        self.assertEqual(entry.verdict.action, Action.NONE)

    def test_adopt_keeps_unexpired_policy(self) -> None:
        """A newer state without a policy never makes us drop an unexpired one."""
        entry = self.cache.get("example.test")
        assert entry is not None
        lost = DomainState(sts=StsState(checked_at=self.clock.seconds() + 10))
        self.cache.adopt("example.test", lost)
        self.assertEqual(entry.verdict.action, Action.STS_ENFORCE)
