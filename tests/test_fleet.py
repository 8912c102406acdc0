"""
Tests for L{mxpolicyd.cache.fleet}: leases and adopting a peer's state, on
their own (tests/test_cache.py and tests/test_refresher.py drive them
through the cache).
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.entries import Entry
from mxpolicyd.cache.fleet import Fleet, merged
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, StsState

from .test_cache import RecordingStore, enforced

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
