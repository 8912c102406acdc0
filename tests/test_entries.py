"""
Tests for L{mxpolicyd.cache.entries}: the table and the eviction of domains
holding no policy, on their own (tests/test_cache.py drives them through
the cache).
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.entries import Entries, Entry, holds_policy
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered
from mxpolicyd.ops.metrics import Metrics

from .test_cache import RecordingStore, enforced, negative


class HoldsPolicyTests(SynchronousTestCase):
    def test_what_holds_a_policy(self) -> None:
        """An unexpired policy, a DANE verdict or downgrade memory hold; expiry or nothing do not."""
        now = 1000.0
        self.assertTrue(holds_policy(enforced(now), now))
        self.assertFalse(holds_policy(enforced(now), now + 86400))
        self.assertFalse(holds_policy(negative(now), now))
        self.assertTrue(holds_policy(replace(negative(now), memory=Remembered("dane", now)), now))
        for status, held in ((DaneStatus.DANE_ONLY, True), (DaneStatus.DANE, True),
                             (DaneStatus.TEMP, False), (DaneStatus.NONE, False)):
            state = replace(negative(now), dane=DaneState(status, "x", checked_at=now))
            self.assertEqual(holds_policy(state, now), held, status)


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
        self.assertIn("mxpolicyd_cache_evictions_total 1\n", self.metrics.render().decode())

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
