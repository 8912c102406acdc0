"""Tests for L{mxpolicyd.cache.policycache}: coalescing, deadlines, stale-while-revalidate."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, Cooperator
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.verdict import Action, Verdict, first_answer
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
        self.metrics = Metrics()
        self.cache = PolicyCache(self.clock, self.evaluator, None, metrics=self.metrics)
        self.cache.load([("example.test", enforced(self.clock.seconds()))])
        self.events: list[dict[str, object]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def reevaluate(self, state: DomainState) -> None:
        self.evaluator.immediate = state
        self.cache.revalidate("example.test")

    def downgrades(self) -> float:
        return self.metrics.downgrades.values.get((), 0)

    def test_weaker_verdict_counted_and_warned(self) -> None:
        """enforce -> none is a downgrade: a warning with both rules, and a count."""
        self.reevaluate(DomainState())
        self.assertEqual(self.downgrades(), 1)
        warnings = [e for e in self.events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        text = formatEvent(warnings[0])
        self.assertIn("weakened from sts-enforce to none", text)
        self.assertIn("MTA-STS policy in enforce mode", text)

    def test_stronger_verdict_not_counted(self) -> None:
        """enforce -> dane-only is no downgrade."""
        now = self.clock.seconds()
        self.reevaluate(replace(enforced(now), dane=DaneState(DaneStatus.DANE_ONLY, "all usable",
                                                              checked_at=now, due_at=now + 60)))
        self.assertEqual(self.downgrades(), 0)

    def test_temp_not_counted(self) -> None:
        """A temporary failure is not a downgrade of the domain's policy."""
        now = self.clock.seconds()
        self.reevaluate(replace(enforced(now), dane=DaneState(DaneStatus.TEMP, "timeout",
                                                              checked_at=now, due_at=now + 60)))
        self.assertEqual(self.downgrades(), 0)

    def test_testing_to_none_is_a_change(self) -> None:
        """testing -> none is no downgrade (testing counts as no policy): logged at info, not counted."""
        now = self.clock.seconds()
        testing = enforced(now)
        testing = replace(testing, sts=replace(testing.sts, policy=replace(ENFORCE, mode="testing")))
        self.reevaluate(testing)
        self.assertEqual(self.downgrades(), 1)
        self.events.clear()
        self.reevaluate(DomainState())
        self.assertEqual(self.downgrades(), 1)
        changes = [(e["log_level"], formatEvent(e)) for e in self.events
                   if "Verdict for" in str(e.get("log_format"))]
        self.assertEqual(changes, [(LogLevel.info,
                                    "Verdict for example.test changed from sts-testing to none: "
                                    "no MTA-STS record and no cached policy "
                                    "(was: MTA-STS policy in testing mode)")])


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


def negative(now: float, due: float = 3600) -> DomainState:
    """What a junk name leaves: no MTA-STS record, DANE not applicable."""
    return DomainState(
        sts=StsState(checked_at=now, due_at=now + due),
        dane=DaneState("none", "the domain does not exist", checked_at=now, due_at=now + due),
    )


class NegativeCapTests(SynchronousTestCase):
    """lookup.max_negative: domains holding no policy are capped, LRU first."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        self.metrics = Metrics()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store,
                                 CacheSettings(max_negative=3), metrics=self.metrics)
        self.cache.loaded = True
        self.changes: list[str] = []
        self.cache.on_change(self.changes.append)
        self.evicted: list[str] = []
        self.cache.on_evicted(lambda entry: self.evicted.append(entry.domain))

    def add(self, *domains: str, state: DomainState | None = None) -> None:
        for domain in domains:
            self.clock.advance(1)
            self.cache.load([(domain, state or negative(self.clock.seconds()))])

    def test_least_recently_used_evicted(self) -> None:
        """Past the cap, the domain looked up least recently goes, from memory and store."""
        self.add("a.test", "b.test", "c.test")
        self.clock.advance(1)
        self.cache.lookup("a.test")
        self.add("d.test")
        self.assertEqual(sorted(self.cache.domains()), ["a.test", "c.test", "d.test"])
        self.assertEqual(self.evicted, ["b.test"])
        self.assertEqual(self.store.deleted, ["b.test"])
        self.assertIn("b.test", self.changes)
        self.add("e.test")
        self.assertEqual(self.evicted, ["b.test", "c.test"])
        self.assertEqual((self.metrics.evictions.values, self.cache.negative, len(self.cache)),
                         ({(): 2}, 3, 3))

    def test_hot_path_use_counts(self) -> None:
        """A use recorded only in Entry.used_at (the responder's memo path) keeps a domain."""
        self.add("a.test", "b.test", "c.test")
        entry = self.cache.get("a.test")
        assert entry is not None
        entry.used_at = self.clock.seconds() + 0.5
        self.add("d.test")
        self.assertEqual(self.evicted, ["b.test"])

    def test_policy_never_evicted(self) -> None:
        """Domains with an unexpired MTA-STS policy or a DANE verdict are neither evicted nor counted."""
        now = self.clock.seconds()
        dane = replace(negative(now), dane=DaneState(DaneStatus.DANE_ONLY, "all usable",
                                                     checked_at=now, due_at=now + 60))
        self.add("p1.test", "p2.test", "p3.test", "p4.test", state=enforced(now))
        self.add("dane.test", state=dane)
        self.add("n1.test", "n2.test", "n3.test", "n4.test", "n5.test")
        self.assertEqual(self.evicted, ["n1.test", "n2.test"])
        for domain in ("p1.test", "p2.test", "p3.test", "p4.test", "dane.test"):
            self.assertIn(domain, self.cache)
        self.assertEqual((self.cache.negative, len(self.cache)), (3, 8))

    def test_downgrade_memory_never_evicted(self) -> None:
        """A domain whose strongest verdict is remembered keeps it through a flood of junk names."""
        now = self.clock.seconds()
        remembered = replace(negative(now), memory=Remembered("dane-only", now))
        self.add("was-dane.test", state=remembered)
        self.add("n1.test", "n2.test", "n3.test", "n4.test")
        self.assertIn("was-dane.test", self.cache)
        self.assertNotIn("was-dane.test", self.store.deleted)
        self.assertEqual(self.evicted, ["n1.test"])

    def test_expired_policy_becomes_negative(self) -> None:
        """A policy that runs out leaves its domain evictable like any other."""
        self.add("p.test", state=enforced(self.clock.seconds(), due=10**6))
        self.add("a.test", "b.test")
        self.clock.advance(86400)
        self.cache.lookup("p.test")
        self.assertEqual(self.cache.negative, 3)
        self.add("c.test")
        self.assertEqual(self.evicted, ["a.test"])
        self.add("d.test", "e.test")
        self.assertEqual(self.evicted, ["a.test", "b.test", "p.test"])

    def test_new_policy_leaves_the_queue(self) -> None:
        """A negative domain that gains a policy stops counting against the cap."""
        self.add("a.test", "b.test", "c.test")
        self.evaluator.immediate = enforced(self.clock.seconds())
        self.cache.revalidate("a.test")
        self.assertEqual(self.cache.negative, 2)
        self.evaluator.immediate = None
        self.add("d.test", "e.test")
        self.assertEqual(self.evicted, ["b.test"])
        self.assertIn("a.test", self.cache)

    def test_under_evaluation_passed_over(self) -> None:
        """A domain being re-evaluated is not evicted under it; the next one goes instead."""
        self.add("a.test", "b.test", "c.test")
        self.cache.revalidate("a.test")
        self.add("d.test")
        self.assertEqual(self.evicted, ["b.test"])
        self.evaluator.pending[0].callback(negative(self.clock.seconds()))
        self.assertIn("a.test", self.cache)

    def test_metrics(self) -> None:
        """Evictions are exported as a counter and the negative domains as a gauge."""
        self.add("a.test", "b.test", "c.test", "d.test")
        text = self.metrics.render().decode()
        self.assertIn("# TYPE mxpolicyd_cache_evictions_total counter\n"
                      "mxpolicyd_cache_evictions_total 1\n", text)
        self.assertIn("\nmxpolicyd_cached_negative_domains 3\n", text)

    def test_lower_cap_applies_at_once(self) -> None:
        """set_bounds() (a reload) with a lower cap evicts down to it at once."""
        self.add("a.test", "b.test", "c.test")
        self.cache.set_bounds(1, 1000)
        self.assertEqual(self.evicted, ["a.test", "b.test"])

    def test_forget_leaves_the_queue(self) -> None:
        """A forgotten domain no longer counts against the cap."""
        self.add("a.test", "b.test", "c.test")
        self.cache.forget("b.test")
        self.add("d.test")
        self.assertEqual(self.evicted, [])
        self.assertEqual(self.cache.negative, 3)


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


class WaitingBoundTests(SynchronousTestCase):
    """lookup.max_waiting: the queue of evaluations waiting for a slot is bounded."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.metrics = Metrics()
        self.cache = PolicyCache(
            self.clock, self.evaluator, None, CacheSettings(max_evaluations=2, max_waiting=1),
            first_answer=lambda domain: first_answer(domain, None, True), metrics=self.metrics,
        )

    def test_beyond_the_queue_answered_at_once(self) -> None:
        """With every slot busy and the queue full, a new domain gets TEMP at once, unevaluated."""
        running = [self.cache.lookup(d) for d in ("a.test", "b.test")]
        queued = self.cache.lookup("c.test")
        self.assertIsInstance(queued, Deferred)
        self.assertEqual(self.cache.evaluations_waiting, 1)
        verdict = self.cache.lookup("d.test")
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.TEMP)
        self.assertIn("DANE state unknown", verdict.rule)
        self.assertIn("mxpolicyd_lookups_shed_total 1\n", self.metrics.render().decode())
        for d in self.evaluator.pending[:2]:
            d.callback(negative(self.clock.seconds()))
        self.assertEqual([c[0] for c in self.evaluator.calls], ["a.test", "b.test", "c.test"])
        self.assertNotIn("d.test", self.cache)
        for r in running:
            assert isinstance(r, Deferred)
            self.successResultOf(r)

    def test_without_dane_notfound(self) -> None:
        """With only MTA-STS pending (DANE off), the answer beyond the queue is no policy."""
        cache = PolicyCache(self.clock, self.evaluator, None,
                            CacheSettings(max_evaluations=1, max_waiting=0))
        cache.lookup("a.test")
        verdict = cache.lookup("b.test")
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.NONE)
        self.assertEqual(len(self.evaluator.calls), 1)

    def test_free_slot_not_shed(self) -> None:
        """max_waiting 0 still evaluates while a slot is free."""
        cache = PolicyCache(self.clock, self.evaluator, None,
                            CacheSettings(max_evaluations=1, max_waiting=0), metrics=self.metrics)
        self.assertIsInstance(cache.lookup("a.test"), Deferred)
        self.assertEqual(self.metrics.shed.values, {})

    def test_coalesced_not_shed(self) -> None:
        """A lookup of a domain already queued joins its evaluation, full queue or not."""
        for d in ("a.test", "b.test", "c.test"):
            self.cache.lookup(d)
        again = self.cache.lookup("c.test")
        self.assertIsInstance(again, Deferred)
        self.assertEqual(self.metrics.shed.values, {})

    def test_revalidation_skipped_when_full(self) -> None:
        """A due cached domain is answered from memory and not queued while the queue is full."""
        now = self.clock.seconds()
        self.cache.load([("cached.test", enforced(now, due=10))])
        for d in ("a.test", "b.test", "c.test"):
            self.cache.lookup(d)
        self.clock.advance(11)
        verdict = self.cache.lookup("cached.test")
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.STS_ENFORCE)
        self.assertEqual(len(self.evaluator.calls), 2)
        self.assertEqual(self.cache.evaluations_waiting, 1)
