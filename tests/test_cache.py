"""Tests for L{mxpolicyd.cache.policycache}: coalescing, deadlines, stale-while-revalidate."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.dane import DaneState
from mxpolicyd.evidence.state import DomainState, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.verdict import Action, Verdict
from mxpolicyd.store.base import Stored

ENFORCE = StsPolicy("enforce", 86400, ("mx.example.test",))


class ScriptedEvaluator:
    """Each evaluation returns a Deferred the test fires."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, DomainState | None]] = []
        self.pending: list[Deferred[DomainState]] = []
        self.immediate: DomainState | None = None

    def evaluate(self, domain: str, prior: DomainState | None) -> Deferred[DomainState]:
        self.calls.append((domain, prior))
        if self.immediate is not None:
            return succeed(self.immediate)
        d: Deferred[DomainState] = Deferred()
        self.pending.append(d)
        return d


class RecordingStore:
    """A store that holds what it is given and records every call."""

    shared = False

    def __init__(self) -> None:
        self.puts: list[tuple[str, DomainState]] = []
        self.rows: dict[str, tuple[DomainState, float]] = {}
        self.gets: list[str] = []
        self.deleted: list[str] = []
        self.acknowledged: list[str] = []
        self.merged_listeners: list[Callable[[str, DomainState], None]] = []

    def scan(self, batch: int) -> Iterator[list[Stored]]:
        rows = [(d, s, u) for d, (s, u) in sorted(self.rows.items())]
        for i in range(0, len(rows), batch):
            yield rows[i : i + batch]

    def get(self, domain: str) -> Deferred[Stored | None]:
        self.gets.append(domain)
        row = self.rows.get(domain)
        return succeed(None if row is None else (domain, row[0], row[1]))

    def put(self, domain: str, state: DomainState, used_at: float = 0.0,
            acknowledged: bool = False) -> None:
        self.puts.append((domain, state))
        self.rows[domain] = (state, used_at)
        if acknowledged:
            self.acknowledged.append(domain)

    def on_merged(self, listener: Callable[[str, DomainState], None]) -> None:
        self.merged_listeners.append(listener)

    def delete(self, domain: str) -> None:
        self.deleted.append(domain)
        self.rows.pop(domain, None)

    def lease(self, domain: str, seconds: float) -> Deferred[bool]:
        return succeed(True)


def enforced(now: float, due: float = 600) -> DomainState:
    return DomainState(
        sts=StsState(policy=ENFORCE, policy_id="1", fetched_at=now,
                     expires_at=now + 86400, record="v=STSv1; id=1",
                     checked_at=now, due_at=now + due)
    )


def negative(now: float, due: float = 3600) -> DomainState:
    """What a junk name leaves: no MTA-STS record, DANE not applicable."""
    return DomainState(
        sts=StsState(checked_at=now, due_at=now + due),
        dane=DaneState("none", "the domain does not exist", checked_at=now, due_at=now + due),
    )


class PolicyCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store,
                                 CacheSettings(deadline=2.0, max_evaluations=2))
        self.changes: list[str] = []
        self.cache.on_change(self.changes.append)

    def test_cold_lookup_waits_for_evaluation(self) -> None:
        """An uncached domain is answered when its first evaluation finishes."""
        d = self.cache.lookup("example.test")
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        self.evaluator.pending[0].callback(enforced(self.clock.seconds()))
        verdict = self.successResultOf(d)
        self.assertEqual(verdict.action, Action.STS_ENFORCE)
        self.assertEqual(self.store.puts[0][0], "example.test")
        self.assertEqual(self.changes, ["example.test"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cached_lookup_is_synchronous(self) -> None:
        """A cached domain is answered at once, with no evaluation."""
        self.cache.load([("example.test", enforced(self.clock.seconds()))])
        verdict = self.cache.lookup("example.test")
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.STS_ENFORCE)
        self.assertEqual(self.evaluator.calls, [])

    def test_coalescing(self) -> None:
        """Concurrent lookups of one domain share one evaluation."""
        results = [self.cache.lookup("example.test") for _ in range(1000)]
        self.assertEqual(len(self.evaluator.calls), 1)
        self.evaluator.pending[0].callback(enforced(self.clock.seconds()))
        for d in results:
            assert isinstance(d, Deferred)
            self.assertEqual(self.successResultOf(d).action, Action.STS_ENFORCE)

    def test_cancel_one_caller(self) -> None:
        """One caller cancelling does not cancel the shared evaluation."""
        a = self.cache.lookup("example.test")
        b = self.cache.lookup("example.test")
        assert isinstance(a, Deferred) and isinstance(b, Deferred)
        a.cancel()
        self.failureResultOf(a)
        self.evaluator.pending[0].callback(enforced(self.clock.seconds()))
        self.assertEqual(self.successResultOf(b).action, Action.STS_ENFORCE)
        self.assertIn("example.test", self.cache)

    def test_deadline(self) -> None:
        """A lookup waits no longer than the deadline; the evaluation still fills the cache."""
        d = self.cache.lookup("slow.test")
        assert isinstance(d, Deferred)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        verdict = self.successResultOf(d)
        self.assertEqual(verdict.action, Action.NONE)
        self.assertIn("still running", verdict.rule)
        self.evaluator.pending[0].callback(enforced(self.clock.seconds()))
        later = self.cache.lookup("slow.test")
        assert isinstance(later, Verdict)
        self.assertEqual(later.action, Action.STS_ENFORCE)

    def test_bounded_evaluations(self) -> None:
        """No more than max_evaluations evaluations run at once."""
        for name in ("a.test", "b.test", "c.test"):
            self.cache.lookup(name)
        self.assertEqual([c[0] for c in self.evaluator.calls], ["a.test", "b.test"])
        self.evaluator.pending[0].callback(DomainState())
        self.assertEqual(len(self.evaluator.calls), 3)

    def test_stale_while_revalidate(self) -> None:
        """A due domain is answered from cache at once and re-checked in the background."""
        now = self.clock.seconds()
        self.cache.load([("example.test", enforced(now, due=60))])
        self.clock.advance(61)
        verdict = self.cache.lookup("example.test")
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.STS_ENFORCE)
        self.assertEqual(len(self.evaluator.calls), 1)
        self.assertEqual(self.evaluator.calls[0][1], enforced(now, due=60))
        # Further lookups while the re-check runs start nothing more.
        self.cache.lookup("example.test")
        self.assertEqual(len(self.evaluator.calls), 1)
        testing = replace(ENFORCE, mode="testing")
        fresh = enforced(self.clock.seconds())
        self.evaluator.pending[0].callback(replace(fresh, sts=replace(fresh.sts, policy=testing)))
        verdict = self.cache.lookup("example.test")
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.STS_TESTING)
        self.assertEqual(self.changes, ["example.test"])

    def test_expiry_redecides(self) -> None:
        """A cached policy that runs out stops being answered, even before a re-check ends."""
        now = self.clock.seconds()
        state = enforced(now, due=10**6)
        self.cache.load([("example.test", state)])
        self.clock.advance(86400)
        verdict = self.cache.lookup("example.test")
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.NONE)
        self.assertIn("expired", verdict.rule)
        self.assertEqual(self.changes, ["example.test"])

    def test_evaluation_crash(self) -> None:
        """An evaluator bug is logged; waiting lookups get the no-policy answer."""
        d = self.cache.lookup("example.test")
        assert isinstance(d, Deferred)
        self.evaluator.pending[0].errback(RuntimeError("bug"))
        self.assertEqual(self.successResultOf(d).action, Action.NONE)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.store.puts, [])

    def test_synchronous_evaluator(self) -> None:
        """An evaluation that completes synchronously answers the lookup."""
        self.evaluator.immediate = enforced(self.clock.seconds())
        d = self.cache.lookup("example.test")
        assert isinstance(d, Deferred)
        self.assertEqual(self.successResultOf(d).action, Action.STS_ENFORCE)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ForgetTests(SynchronousTestCase):
    """cache forget: the domain goes from memory and store."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = RecordingStore()
        self.cache = PolicyCache(self.clock, ScriptedEvaluator(), self.store)
        self.cache.load([("example.test", enforced(self.clock.seconds()))])
        self.changes: list[str] = []
        self.cache.on_change(self.changes.append)

    def test_forget(self) -> None:
        """forget() drops the domain from memory and store and says so."""
        self.assertTrue(self.cache.forget("example.test"))
        self.assertNotIn("example.test", self.cache)
        self.assertEqual(self.store.deleted, ["example.test"])
        self.assertEqual(self.changes, ["example.test"])
        self.assertFalse(self.cache.forget("example.test"))
