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
from mxpolicyd.cache.fleet import Fleet
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.verdict import Action
from mxpolicyd.store.base import Stored

from .test_cache import RecordingStore, ScriptedEvaluator, enforced

NOW = 1000.0


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
        self.clock.advance(5)
        newer = enforced(NOW + 5)
        self.store.rows["a.test"] = (newer, NOW)
        self.store.answer = succeed(False)
        self.assertIs(self.successResultOf(self.fleet.refresh("a.test")), self.entry)
        self.assertEqual((self.evaluated, self.applied, self.settled), ([], [newer], []))

    def test_held_elsewhere_weaker(self) -> None:
        """Without the lease, newer stored evidence that would weaken ours is not applied: the domain is evaluated here."""
        self.clock.advance(5)
        none = StsPolicy("none", 86400, ())
        weaker = DomainState(sts=StsState(policy=none, policy_id="2", fetched_at=NOW + 5,
                                          expires_at=NOW + 5 + 86400, checked_at=NOW + 5))
        self.store.rows["a.test"] = (weaker, NOW)
        self.store.answer = succeed(False)
        self.assertIs(self.successResultOf(self.fleet.refresh("a.test")), self.entry)
        self.assertEqual(self.evaluated, ["a.test"])
        self.assertEqual([s.sts.policy for s in self.applied], [self.entry.state.sts.policy])

    def test_future_state_capped(self) -> None:
        """A stored state dated 30 years ahead is taken with its times capped: the next check is not pushed out."""
        self.clock.advance(5)
        far = NOW + 30 * 365 * 86400
        self.store.rows["a.test"] = (DomainState(sts=replace(
            enforced(NOW).sts, checked_at=far, due_at=far)), NOW)
        self.store.answer = succeed(False)
        self.successResultOf(self.fleet.refresh("a.test"))
        self.assertEqual(len(self.applied), 1)
        self.assertEqual(self.applied[0].sts.checked_at, NOW + 5)
        self.assertEqual(self.applied[0].due_at, NOW + 5 + 3600)

    def test_merged_in_store(self) -> None:
        """A write that found more in the store brings it into the cached entry."""
        self.clock.advance(5)
        remembered = replace(enforced(NOW), memory=Remembered("dane-only", NOW))
        for listener in self.store.merged_listeners:
            listener("a.test", remembered)
        self.assertEqual([s.memory for s in self.applied], [Remembered("dane-only", NOW)])

    def test_stored(self) -> None:
        """A state read for a domain not held is taken with its times capped."""
        far = NOW + 10**9
        got = self.fleet.stored(DomainState(sts=StsState(checked_at=far, due_at=far)))
        self.assertEqual((got.sts.checked_at, got.sts.due_at), (NOW, NOW + 3600))

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

    def test_stored_times_capped(self) -> None:
        """A domain read from the shared store, dated 30 years ahead, is due no later than the horizon."""
        now = self.clock.seconds()
        far = now + 30 * 365 * 86400
        self.store.rows["example.test"] = (DomainState(sts=replace(
            enforced(now).sts, checked_at=far, due_at=far)), far)
        d = self.cache.lookup("example.test")
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).action, Action.STS_ENFORCE)
        entry = self.cache.get("example.test")
        assert entry is not None
        self.assertEqual((entry.due_at, entry.used_at), (now + 3600, now))

    def test_acknowledged_write(self) -> None:
        """cache ack asks the store to write the acknowledged memory as it is."""
        now = self.clock.seconds()
        self.cache.load([("example.test", replace(enforced(now), memory=Remembered(
            "dane-only", now)))])
        self.assertIsNotNone(self.cache.acknowledge("example.test"))
        self.assertEqual(self.store.acknowledged, ["example.test"])

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
        """A fleet member's policy replaces ours only when fetched later, and never a weaker one."""
        entry = self.cache.get("example.test")
        assert entry is not None
        now = self.clock.seconds()
        none = StsPolicy("none", 86400, ())
        older = DomainState(sts=StsState(policy=none, fetched_at=now - 10,
                                         expires_at=now - 10 + 86400, checked_at=now - 10))
        self.assertFalse(self.cache.adopt("example.test", older))
        self.assertEqual(entry.verdict.action, Action.STS_ENFORCE)
        self.clock.advance(10)
        newer = replace(older, sts=replace(older.sts, fetched_at=now + 10, checked_at=now + 10,
                                           expires_at=now + 10 + 86400))
        self.assertTrue(self.cache.adopt("example.test", newer))
        self.assertEqual(entry.verdict.action, Action.STS_ENFORCE)
        self.assertEqual(entry.state.sts.checked_at, now + 10)
        rotated = enforced(now + 10)
        rotated = replace(rotated, sts=replace(rotated.sts, policy_id="2"))
        self.assertTrue(self.cache.adopt("example.test", rotated))
        self.assertEqual(entry.state.sts.policy_id, "2")

    def test_adopt_keeps_unexpired_policy(self) -> None:
        """A newer state without a policy never makes us drop an unexpired one."""
        entry = self.cache.get("example.test")
        assert entry is not None
        lost = DomainState(sts=StsState(checked_at=self.clock.seconds() + 10))
        self.cache.adopt("example.test", lost)
        self.assertEqual(entry.verdict.action, Action.STS_ENFORCE)
