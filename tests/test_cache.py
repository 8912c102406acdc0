"""Tests for L{mxpolicyd.cache}: coalescing, deadlines, stale-while-revalidate."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, Cooperator
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache import PolicyCache
from mxpolicyd.dane import DANE_ONLY, TEMP, DaneState
from mxpolicyd.state import DomainState, StsState
from mxpolicyd.store import Stored
from mxpolicyd.sts import StsPolicy
from mxpolicyd.verdict import Action, Verdict

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

    def scan(self, batch: int) -> Iterator[list[Stored]]:
        rows = [(d, s, u) for d, (s, u) in sorted(self.rows.items())]
        for i in range(0, len(rows), batch):
            yield rows[i : i + batch]

    def get(self, domain: str) -> Deferred[Stored | None]:
        self.gets.append(domain)
        row = self.rows.get(domain)
        return succeed(None if row is None else (domain, row[0], row[1]))

    def put(self, domain: str, state: DomainState, used_at: float = 0.0) -> None:
        self.puts.append((domain, state))
        self.rows[domain] = (state, used_at)

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


class PolicyCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store,
                                 deadline=2.0, max_evaluations=2)
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


class DowngradeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        self.cache = PolicyCache(self.clock, self.evaluator, None)
        self.cache.load([("example.test", enforced(self.clock.seconds()))])
        self.events: list[dict[str, object]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def reevaluate(self, state: DomainState) -> None:
        self.evaluator.immediate = state
        self.cache.revalidate("example.test")

    def test_weaker_verdict_counted_and_warned(self) -> None:
        """enforce -> none is a downgrade: a warning with both rules, and a count."""
        self.reevaluate(DomainState())
        self.assertEqual(self.cache.downgrades, 1)
        warnings = [e for e in self.events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        text = formatEvent(warnings[0])
        self.assertIn("weakened from sts-enforce to none", text)
        self.assertIn("MTA-STS policy in enforce mode", text)

    def test_stronger_verdict_not_counted(self) -> None:
        """enforce -> dane-only is no downgrade."""
        now = self.clock.seconds()
        self.reevaluate(replace(enforced(now), dane=DaneState(DANE_ONLY, "all usable",
                                                              checked_at=now, due_at=now + 60)))
        self.assertEqual(self.cache.downgrades, 0)

    def test_temp_not_counted(self) -> None:
        """A temporary failure is not a downgrade of the domain's policy."""
        now = self.clock.seconds()
        self.reevaluate(replace(enforced(now), dane=DaneState(TEMP, "timeout",
                                                              checked_at=now, due_at=now + 60)))
        self.assertEqual(self.cache.downgrades, 0)


class ForgetAdoptTests(SynchronousTestCase):
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


class FleetTests(SynchronousTestCase):
    """A store shared with other daemons: leases and reads on a miss."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.store = SharedStore()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store, lease=60)
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
