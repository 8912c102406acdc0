"""
Tests for L{mxpolicyd.cache.entries}: the table and the eviction of domains
holding no policy (lookup.max_negative), on their own and through the cache.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.entries import Entries, Entry, holds_policy
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.verdict import Action, first_answer

from .test_cache import RecordingStore, ScriptedEvaluator, enforced, negative


def dane_only(now: float) -> DomainState:
    """What a name under a DNSSEC-signed wildcard with TLSA leaves."""
    return replace(negative(now), dane=DaneState(DaneStatus.DANE_ONLY, "all usable",
                                                 checked_at=now, due_at=now + 60))


class HoldsPolicyTests(SynchronousTestCase):
    def test_what_holds_a_policy(self) -> None:
        """An unexpired policy or a state reduced to its memory hold; DANE verdicts, expiry or nothing do not."""
        now = 1000.0
        self.assertTrue(holds_policy(enforced(now), now))
        self.assertFalse(holds_policy(enforced(now), now + 86400))
        self.assertFalse(holds_policy(negative(now), now))
        remembered = replace(negative(now), memory=Remembered("dane", now))
        self.assertFalse(holds_policy(remembered, now))
        self.assertTrue(holds_policy(remembered.reduced(), now))
        for status in DaneStatus:
            state = replace(negative(now), dane=DaneState(status, "x", checked_at=now))
            self.assertFalse(holds_policy(state, now), status)


class EntriesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = RecordingStore()
        self.metrics = Metrics()
        self.busy: set[str] = set()
        self.evicted: list[tuple[str, bool]] = []
        self.entries = Entries(self.clock, self.store, self.metrics, 2, self.busy.__contains__,
                               self.gone)
        self.entries.loaded = True

    def gone(self, entry: Entry) -> None:
        # Whether the entry had left the table when the callback ran.
        self.evicted.append((entry.domain, entry.domain in self.entries.by_domain))

    def add(self, domain: str, state: DomainState | None = None, used_at: float = 0.0) -> Entry:
        now = self.clock.seconds()
        entry = Entry(domain, state or negative(now), now, used_at or now)
        self.entries.by_domain[domain] = entry
        self.entries.track(entry, now)
        return entry

    def test_evicted_from_table_and_store(self) -> None:
        """Past the cap the oldest goes from the table and the store, then the callback runs."""
        for domain in ("a.test", "b.test", "c.test"):
            self.add(domain)
        self.assertEqual(sorted(self.entries.by_domain), ["b.test", "c.test"])
        self.assertEqual(self.store.deleted, ["a.test"])
        self.assertEqual(self.evicted, [("a.test", False)])
        self.assertEqual((self.entries.evicted, self.entries.negative), (1, 2))
        self.assertIn("mxpolicyd_cache_evictions_total 1.0\n", self.metrics.render().decode())

    def test_busy_passed_over(self) -> None:
        """A busy domain keeps its place; the next one goes instead."""
        self.add("a.test")
        self.add("b.test")
        self.busy.add("a.test")
        self.add("c.test")
        self.assertEqual(self.evicted, [("b.test", False)])

    def test_nothing_evicted_before_loaded(self) -> None:
        """While the store is read, the queue may pass the cap; reorder and trim then evict by last use."""
        self.entries.loaded = False
        self.add("a.test", used_at=500.0)
        self.add("b.test", used_at=100.0)
        self.add("c.test", used_at=900.0)
        self.add("p.test", state=enforced(self.clock.seconds()), used_at=1.0)
        self.assertEqual(self.evicted, [])
        self.entries.loaded = True
        self.entries.reorder()
        self.entries.trim()
        self.assertEqual(self.evicted, [("b.test", False)])
        self.assertIn("p.test", self.entries.by_domain)

    def test_remove(self) -> None:
        """remove() drops a domain from the table and the queue, with no eviction."""
        entry = self.add("a.test")
        self.assertIs(self.entries.remove("a.test"), entry)
        self.assertIsNone(self.entries.remove("a.test"))
        self.assertEqual((self.entries.negative, self.evicted, self.store.deleted), (0, [], []))


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
        """Domains with an unexpired MTA-STS policy are neither evicted nor counted."""
        now = self.clock.seconds()
        self.add("p1.test", "p2.test", "p3.test", "p4.test", state=enforced(now))
        self.add("n1.test", "n2.test", "n3.test", "n4.test", "n5.test")
        self.assertEqual(self.evicted, ["n1.test", "n2.test"])
        for domain in ("p1.test", "p2.test", "p3.test", "p4.test"):
            self.assertIn(domain, self.cache)
        self.assertEqual((self.cache.negative, len(self.cache)), (3, 7))

    def test_dane_evicted_with_the_rest(self) -> None:
        """DANE domains (names under a signed wildcard) count against the cap and are evicted, LRU first."""
        now = self.clock.seconds()
        self.add("w1.test", "w2.test", "w3.test", "w4.test", "w5.test", state=dane_only(now))
        self.assertEqual(self.evicted, ["w1.test", "w2.test"])
        self.assertEqual(self.store.deleted, ["w1.test", "w2.test"])
        self.add("n1.test")
        self.assertEqual(self.evicted, ["w1.test", "w2.test", "w3.test"])
        self.assertEqual((self.cache.negative, len(self.cache)), (3, 3))

    def test_evicted_dane_domain_evaluated_again(self) -> None:
        """An evicted DANE domain's next lookup evaluates it; with DANE unknown at the deadline, TEMP."""
        cache = PolicyCache(self.clock, self.evaluator, self.store,
                            CacheSettings(max_negative=1, deadline=2.0),
                            first_answer=lambda domain: first_answer(domain, None, True))
        cache.loaded = True
        now = self.clock.seconds()
        cache.load([("w1.test", dane_only(now)), ("w2.test", dane_only(now))])
        self.assertNotIn("w1.test", cache)
        d = cache.lookup("w1.test")
        assert isinstance(d, Deferred)
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(d).action, Action.TEMP)
        self.assertEqual(self.evaluator.calls, [("w1.test", None)])

    def test_downgrade_memory_kept_evidence_evicted(self) -> None:
        """Evicted for room, a domain with downgrade memory keeps the memory alone, uncounted."""
        self.cache.set_admin(AdminPolicy(downgrade="enforce"))
        now = self.clock.seconds()
        remembered = replace(dane_only(now), memory=Remembered("dane-only", now))
        self.add("was-dane.test", state=remembered)
        self.assertEqual(self.cache.negative, 1)
        self.add("n1.test", "n2.test", "n3.test")
        entry = self.cache.get("was-dane.test")
        assert entry is not None
        self.assertEqual(entry.state, DomainState(memory=Remembered("dane-only", now)))
        self.assertTrue(entry.state.remembered_only)
        self.assertEqual(self.store.rows["was-dane.test"][0], entry.state)
        self.assertNotIn("was-dane.test", self.store.deleted)
        self.assertEqual(self.evicted, [])
        self.assertIn("was-dane.test", self.changes)
        self.assertEqual((self.cache.negative, self.metrics.evictions.values), (3, {(): 1}))
        # More junk evicts junk, never the memory.
        self.add("n4.test", "n5.test")
        self.assertEqual(self.evicted, ["n1.test", "n2.test"])
        self.assertIn("was-dane.test", self.cache)

    def test_memory_unused_when_downgrade_off(self) -> None:
        """With policy.downgrade off nothing reads the memory: the domain is evicted whole."""
        now = self.clock.seconds()
        remembered = replace(negative(now), memory=Remembered("dane-only", now))
        self.add("was-dane.test", state=remembered)
        self.add("n1.test", "n2.test", "n3.test")
        self.assertEqual(self.evicted, ["was-dane.test"])
        self.assertEqual(self.store.deleted, ["was-dane.test"])

    def test_aged_out_memory_not_kept(self) -> None:
        """A memory older than downgrade_memory_days is not worth keeping: evicted whole."""
        self.cache.set_admin(AdminPolicy(downgrade="enforce", memory=30 * 86400.0))
        now = self.clock.seconds()
        old = replace(negative(now), memory=Remembered("dane-only", now - 31 * 86400))
        self.add("was-dane.test", state=old)
        self.add("n1.test", "n2.test", "n3.test")
        self.assertEqual(self.evicted, ["was-dane.test"])

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
                      "mxpolicyd_cache_evictions_total 1.0\n", text)
        self.assertIn("\nmxpolicyd_cached_negative_domains 3.0\n", text)

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
