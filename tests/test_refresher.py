"""Tests for L{mxpolicyd.cache.refresher}: the schedule, on a Clock."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, Cooperator
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.cache.refresher import Refresher
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.admin import AdminPolicy

from .test_cache import RecordingStore, ScriptedEvaluator

START = 1_000_000.0
DAY = 86400.0


def state(checked: float, due: float, policy: StsPolicy | None = None,
          expires: float = 0.0) -> DomainState:
    return DomainState(sts=StsState(policy=policy, expires_at=expires,
                                    checked_at=checked, due_at=due))


class FleetStore(RecordingStore):
    """A store whose leases another daemon may hold."""

    def __init__(self) -> None:
        super().__init__()
        self.held: set[str] = set()
        self.leases: list[str] = []

    def lease(self, domain: str, seconds: float) -> Deferred[bool]:
        self.leases.append(domain)
        return succeed(domain not in self.held)


class RefresherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.evaluator = ScriptedEvaluator()
        self.store = FleetStore()
        self.cache = PolicyCache(
            self.clock, self.evaluator, self.store, CacheSettings(max_evaluations=100, lease=60),
            cooperator=Cooperator(scheduler=lambda f: self.clock.callLater(0, f)),
        )
        self.random = 0.5
        self.refresher = Refresher(
            self.clock, self.cache, window=7 * DAY, concurrency=2,
            lead=0.1, lead_max=300, startup_spread=60, min_interval=30,
            random=lambda: self.random,
        )
        self.refresher.startService()

    def warm(self, rows: dict[str, tuple[float, float]]) -> None:
        now = self.clock.seconds()
        for domain, (due_in, used_ago) in rows.items():
            self.store.rows[domain] = (state(now, now + due_in), now - used_ago)
        self.load()

    def load(self) -> None:
        """Run the cache's background load to its end."""
        d = self.cache.warm()
        while not d.called:
            self.clock.advance(0)
        self.successResultOf(d)

    def evaluated(self) -> list[str]:
        return [domain for domain, _ in self.evaluator.calls]

    def finish_all(self, due_in: float) -> None:
        """Complete every pending evaluation with evidence due in due_in s."""
        while self.evaluator.pending:
            d = self.evaluator.pending.pop(0)
            now = self.clock.seconds()
            d.callback(state(now, now + due_in))
        self.clock.advance(0)

    def test_due_order(self) -> None:
        """Domains are refreshed in the order their evidence comes due."""
        self.warm({"c.test": (300, 0), "a.test": (100, 0), "b.test": (200, 0)})
        self.clock.advance(300)
        self.assertEqual(self.evaluated(), ["a.test", "b.test"])  # concurrency 2
        self.finish_all(3600)
        self.assertEqual(self.evaluated(), ["a.test", "b.test", "c.test"])

    def test_lead_and_jitter_bounds(self) -> None:
        """A refresh starts early by a random fraction of the time left, at most lead_max."""
        for r, early in ((0.0, 0), (0.5, 50), (1.0, 100)):
            self.random = r
            domain = "d%d.test" % int(r * 10)
            self.warm({domain: (1000, 0)})
            entry = self.cache.get(domain)
            assert entry is not None
            self.assertEqual(entry.refresher_bucket, START + 1000 - early)
        self.random = 1.0
        self.warm({"far.test": (DAY, 0)})
        far = self.cache.get("far.test")
        assert far is not None
        self.assertEqual(far.refresher_bucket, START + DAY - 300)

    def test_refreshed_before_due(self) -> None:
        """A regularly used domain is refreshed before a lookup would find it stale."""
        self.warm({"a.test": (1000, 0)})
        self.clock.advance(950)
        self.assertEqual(self.evaluated(), ["a.test"])
        self.finish_all(1000)
        entry = self.cache.get("a.test")
        assert entry is not None
        self.assertGreater(entry.due_at, self.clock.seconds())

    def test_startup_spread(self) -> None:
        """Overdue domains after a restart are spread over the startup window."""
        now = self.clock.seconds()
        values = iter([0.0, 0.25, 0.99])
        self.random = 0  # unused below
        self.refresher._random = lambda: next(values)
        self.warm({"a.test": (-10, 0), "b.test": (-10, 0), "c.test": (-10, 0)})
        self.assertEqual(self.evaluated(), ["a.test"])
        times = sorted(e.refresher_bucket for e in map(self.cache.get, ["b.test", "c.test"]) if e)
        self.assertEqual(times, [now + 15, now + 60])

    def test_concurrency_bound(self) -> None:
        """No more than `concurrency` refreshes run at once; the rest wait their turn."""
        self.warm({"d%d.test" % i: (10, 0) for i in range(5)})
        self.clock.advance(10)
        self.assertEqual(len(self.evaluator.pending), 2)
        self.assertEqual(self.refresher.in_flight, 2)
        self.evaluator.pending.pop(0).callback(state(self.clock.seconds(), self.clock.seconds() + 3600))
        self.clock.advance(0)
        self.assertEqual(len(self.evaluator.pending), 2)
        self.assertEqual(len(self.evaluator.calls), 3)

    def test_failing_domain_backs_off(self) -> None:
        """A domain whose re-check fails is retried on its state's schedule, not in a loop."""
        self.warm({"fail.test": (100, 0)})
        self.clock.advance(100)
        # The MTA-STS evaluator backs off by setting the next due time.
        self.finish_all(300)
        for _ in range(20):
            self.clock.advance(10)
        self.assertEqual(len(self.evaluator.calls), 1)
        self.clock.advance(100)
        self.assertEqual(len(self.evaluator.calls), 2)

    def test_crashed_refresh_retried_later(self) -> None:
        """An evaluation that crashes is retried after a pause, not at once."""
        self.warm({"a.test": (10, 0)})
        self.clock.advance(10)
        self.evaluator.pending.pop(0).errback(RuntimeError("bug"))
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(len(self.evaluator.calls), 1)
        self.clock.advance(61)
        self.assertEqual(len(self.evaluator.calls), 2)

    def test_idle_domain_evicted(self) -> None:
        """A domain unused for longer than the window is evicted, not refreshed."""
        self.warm({"old.test": (100, 8 * DAY)})
        self.clock.advance(100)
        self.assertEqual(self.evaluated(), [])
        self.assertNotIn("old.test", self.cache)
        self.assertEqual(self.store.deleted, ["old.test"])
        self.assertEqual(self.refresher.evicted, 1)

    def test_idle_policy_kept_until_expiry(self) -> None:
        """An unused domain with an unexpired MTA-STS policy is kept until it expires."""
        now = self.clock.seconds()
        policy = StsPolicy("enforce", 30 * 86400, ("mx.test",))
        self.store.rows["kept.test"] = (
            state(now, now + 100, policy=policy, expires=now + 10 * DAY), now - 8 * DAY)
        self.load()
        self.clock.advance(100)
        self.assertIn("kept.test", self.cache)
        self.assertEqual(self.evaluated(), [])
        self.clock.advance(10 * DAY)
        self.assertNotIn("kept.test", self.cache)

    def remembered(self, domain: str, used_ago: float, seen_ago: float,
                   policy_left: float | None = None) -> None:
        """A stored domain with downgrade memory of sts-enforce, loaded."""
        now = self.clock.seconds()
        policy = StsPolicy("enforce", 86400, ("mx.test",))
        expires = now + policy_left if policy_left is not None else now - used_ago + DAY
        self.store.rows[domain] = (
            replace(state(now - used_ago, now - used_ago + 3600, policy=policy, expires=expires),
                    memory=Remembered("sts-enforce", now - seen_ago)),
            now - used_ago)
        self.load()

    def test_idle_memory_kept_until_it_ages_out(self) -> None:
        """An idle remembered domain outlives the window without its evidence, then goes with its memory."""
        self.cache.set_admin(AdminPolicy(downgrade="enforce"))
        # Last looked up (and its sts-enforce seen) 8 days ago: past the window.
        self.remembered("kept.test", used_ago=8 * DAY, seen_ago=8 * DAY)
        self.clock.advance(60)
        entry = self.cache.get("kept.test")
        assert entry is not None
        memory = DomainState(memory=Remembered("sts-enforce", START - 8 * DAY))
        self.assertEqual(entry.state, memory)
        self.assertEqual(self.store.rows["kept.test"][0], memory)
        self.assertEqual((self.evaluated(), self.store.deleted, self.refresher.evicted),
                         ([], [], 0))
        # Still there, never refreshed, until 30 days after it was last seen.
        self.clock.advance(22 * DAY - 60 - 1)
        self.assertIn("kept.test", self.cache)
        self.assertEqual(self.evaluated(), [])
        self.clock.advance(1)
        self.assertNotIn("kept.test", self.cache)
        self.assertEqual((self.store.deleted, self.refresher.evicted), (["kept.test"], 1))

    def test_idle_policy_then_memory(self) -> None:
        """An idle domain keeps its policy whole until it expires, then its memory alone."""
        self.cache.set_admin(AdminPolicy(downgrade="enforce"))
        self.remembered("kept.test", used_ago=8 * DAY, seen_ago=8 * DAY, policy_left=10 * DAY)
        self.clock.advance(60)
        entry = self.cache.get("kept.test")
        assert entry is not None
        self.assertFalse(entry.state.remembered_only)
        self.clock.advance(10 * DAY)
        self.assertTrue(entry.state.remembered_only)
        self.clock.advance(12 * DAY)
        self.assertNotIn("kept.test", self.cache)
        self.assertEqual(self.evaluated(), [])

    def test_idle_memory_restart(self) -> None:
        """After a restart, a stored domain reduced to its memory is kept until it ages out."""
        self.cache.set_admin(AdminPolicy(downgrade="enforce"))
        now = self.clock.seconds()
        self.store.rows["kept.test"] = (
            DomainState(memory=Remembered("dane-only", now - 20 * DAY)), now - 20 * DAY)
        self.load()
        self.clock.advance(61)
        self.assertIn("kept.test", self.cache)
        self.clock.advance(10 * DAY)
        self.assertNotIn("kept.test", self.cache)
        self.assertEqual((self.evaluated(), self.store.deleted), ([], ["kept.test"]))

    def test_idle_memory_dropped_when_downgrade_off(self) -> None:
        """With policy.downgrade off nothing reads the memory: the idle domain goes at the window."""
        self.remembered("old.test", used_ago=8 * DAY, seen_ago=8 * DAY)
        self.clock.advance(60)
        self.assertNotIn("old.test", self.cache)
        self.assertEqual(self.store.deleted, ["old.test"])

    def test_used_domain_not_evicted(self) -> None:
        """Lookups keep a domain in the refresh window."""
        self.warm({"a.test": (DAY, 6 * DAY)})
        self.cache.current("a.test")
        self.clock.advance(DAY)
        self.assertEqual(self.evaluated(), ["a.test"])

    def test_lease_held_elsewhere(self) -> None:
        """When another daemon holds the lease, its newer stored result is adopted."""
        self.warm({"a.test": (100, 0)})
        self.store.held.add("a.test")
        newer = state(START + 100, START + 3000,
                      policy=StsPolicy("enforce", 86400, ("mx.test",)), expires=START + 86500)
        newer = replace(newer, sts=replace(newer.sts, fetched_at=START + 100))
        self.store.rows["a.test"] = (newer, START)
        self.clock.advance(100)
        self.assertEqual(self.evaluated(), [])
        self.assertEqual(self.store.leases, ["a.test"])
        entry = self.cache.get("a.test")
        assert entry is not None
        self.assertEqual(entry.state, newer)

    def test_lease_held_nothing_newer(self) -> None:
        """Losing the lease with nothing newer stored looks again after the lease time."""
        self.warm({"a.test": (100, 0)})
        self.store.held.add("a.test")
        self.clock.advance(100)
        entry = self.cache.get("a.test")
        assert entry is not None
        self.assertEqual(entry.due_at, START + 160)
        # Refreshed early by the usual random lead: 0.5 * 10% of 60 s.
        self.assertEqual(entry.refresher_bucket, START + 157)
        self.store.held.clear()
        self.clock.advance(57)
        self.assertEqual(self.evaluated(), ["a.test"])

    def test_stop_cancels_timer(self) -> None:
        """Stopping the service leaves no timer behind."""
        self.warm({"a.test": (100, 0)})
        self.refresher.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class EvictionTests(SynchronousTestCase):
    """The refresher and the cache's cap on domains holding no policy."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store,
                                 CacheSettings(max_negative=2))
        self.cache.loaded = True
        self.refresher = Refresher(self.clock, self.cache, concurrency=10,
                                   random=lambda: 0.0)
        self.refresher.startService()

    def test_evicted_domain_leaves_the_wheel(self) -> None:
        """A domain evicted for room is unscheduled at once and never refreshed."""
        now = self.clock.seconds()
        for i, domain in enumerate(["a.test", "b.test", "c.test"]):
            self.clock.advance(1)
            self.cache.load([(domain, state(now, now + 100 + i))])
        self.assertNotIn("a.test", self.cache)
        self.assertEqual(self.refresher.queue_depth, 2)
        self.assertNotIn("a.test", [d for b in self.refresher._buckets.values() for d in b])
        self.clock.advance(200)
        self.assertEqual([c[0] for c in self.evaluator.calls], ["b.test", "c.test"])

    def test_refresh_result_tracked(self) -> None:
        """A refresh that finds a policy takes the domain out of the cap's count."""
        now = self.clock.seconds()
        self.cache.load([("a.test", state(now, now + 100))])
        self.assertEqual(self.cache.negative, 1)
        self.clock.advance(100)
        policy = StsPolicy("enforce", 86400, ("mx.test",))
        t = self.clock.seconds()
        self.evaluator.pending.pop().callback(state(t, t + 3600, policy, t + 86400))
        self.assertEqual(self.cache.negative, 0)

    def test_memory_kept_for_room_then_dropped(self) -> None:
        """A domain evicted for room keeps only its memory, is never refreshed, and goes when it ages out."""
        self.cache.set_admin(AdminPolicy(downgrade="enforce"))
        now = self.clock.seconds()
        remembered = replace(state(now, now + 100), memory=Remembered("dane", now))
        self.cache.load([("kept.test", remembered)])
        for domain in ("a.test", "b.test"):
            self.clock.advance(1)
            self.cache.load([(domain, state(now, now + 3600))])
        entry = self.cache.get("kept.test")
        assert entry is not None
        self.assertTrue(entry.state.remembered_only)
        self.clock.advance(29 * DAY)
        self.assertIn("kept.test", self.cache)
        self.assertNotIn("kept.test", [c[0] for c in self.evaluator.calls])
        self.clock.advance(DAY)
        self.assertNotIn("kept.test", self.cache)
        self.assertIn("kept.test", self.store.deleted)
