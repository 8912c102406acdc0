"""
Tests for L{mxpolicyd.cache.evaluations}: coalescing, the bound, the queue
(lookup.max_waiting) and the deadline, on their own and through the cache
(tests/test_cache.py has the lookups' view of them).
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.entries import Entry
from mxpolicyd.cache.evaluations import Evaluations
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.verdict import Action, Verdict, first_answer

from .test_cache import ScriptedEvaluator, enforced, negative


class EvaluationsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.metrics = Metrics()
        self.settled: list[tuple[str, DomainState | None]] = []
        self.evaluations = Evaluations(
            self.clock, self.evaluator, self.settle,
            lambda domain: first_answer(domain, None, False), self.judged, self.metrics,
            deadline=2.0, max_evaluations=1, max_waiting=1)

    def settle(self, domain: str, state: DomainState | None) -> Entry:
        self.settled.append((domain, state))
        now = self.clock.seconds()
        return Entry(domain, state or DomainState(), now, now)

    def judged(self, verdict: Verdict) -> Verdict:
        return replace(verdict, rule="judged: " + verdict.rule)

    def test_coalesced(self) -> None:
        """Callers of one domain share one evaluation, settled once; each gets the entry."""
        first = self.evaluations.evaluate("a.test", None)
        second = self.evaluations.evaluate("a.test", None)
        self.assertEqual(len(self.evaluator.calls), 1)
        self.assertEqual(list(self.evaluations.in_flight), ["a.test"])
        state = enforced(self.clock.seconds())
        self.evaluator.pending[0].callback(state)
        self.assertEqual(self.settled, [("a.test", state)])
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.evaluations.in_flight, {})
        self.assertEqual(self.metrics.evaluations.values, {(): 1})

    def test_prior_passed(self) -> None:
        """The evaluator is given the prior state, to re-check rather than start afresh."""
        prior = enforced(self.clock.seconds())
        self.evaluations.evaluate("a.test", prior)
        self.assertEqual(self.evaluator.calls, [("a.test", prior)])

    def test_crash_settles_nothing(self) -> None:
        """An evaluator bug is logged and settled as None; callers still get an entry."""
        d = self.evaluations.evaluate("a.test", None)
        self.evaluator.pending[0].errback(RuntimeError("bug"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.settled, [("a.test", None)])
        self.assertEqual(self.successResultOf(d).verdict.action, Action.NONE)
        self.assertEqual(self.metrics.evaluations.values, {})

    def test_deadline_answers_judged_first_answer(self) -> None:
        """At the deadline the first answer, judged, is given; the evaluation runs on."""
        d = self.evaluations.first("a.test", 2.0)
        assert isinstance(d, Deferred)
        self.clock.advance(1.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        verdict = self.successResultOf(d)
        self.assertEqual(verdict.action, Action.NONE)
        self.assertTrue(verdict.rule.startswith("judged: first evaluation still running"))
        self.assertIn("a.test", self.evaluations.in_flight)

    def test_answer_before_deadline_cancels_timer(self) -> None:
        """An evaluation that ends in time answers and leaves no timer."""
        d = self.evaluations.first("a.test", 2.0)
        assert isinstance(d, Deferred)
        self.evaluator.pending[0].callback(enforced(self.clock.seconds()))
        self.assertEqual(self.successResultOf(d).action, Action.STS_ENFORCE)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_queue_full_sheds(self) -> None:
        """With the slot busy and max_waiting queued, a new domain is answered at once, unevaluated."""
        self.evaluations.first("a.test", 2.0)
        self.evaluations.first("b.test", 2.0)
        self.assertEqual(self.evaluations.waiting, 1)
        self.assertTrue(self.evaluations.full())
        verdict = self.evaluations.first("c.test", 2.0)
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.NONE)
        self.assertEqual([c[0] for c in self.evaluator.calls], ["a.test"])
        self.assertNotIn("c.test", self.evaluations.in_flight)
        self.assertEqual((self.evaluations.shed, self.metrics.shed.values), (1, {(): 1}))
        self.assertIsInstance(self.evaluations.first("b.test", 2.0), Deferred)
        self.assertEqual(self.evaluations.shed, 1)

    def test_queue_full_answer_judged(self) -> None:
        """The answer beyond the queue is judged, as the one at the deadline is."""
        self.evaluations.first("a.test", 2.0)
        self.evaluations.first("b.test", 2.0)
        verdict = self.evaluations.first("c.test", 2.0)
        assert isinstance(verdict, Verdict)
        self.assertTrue(verdict.rule.startswith("judged: first evaluation still running"),
                        verdict.rule)


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
        self.assertIn("mxpolicyd_lookups_shed_total 1.0\n", self.metrics.render().decode())
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

    def test_beyond_the_queue_minimum_applied(self) -> None:
        """With min_mx_level = "mta-sts", a new domain beyond the queue gets TEMP, as at the deadline."""
        cache = PolicyCache(self.clock, self.evaluator, None,
                            CacheSettings(max_evaluations=1, max_waiting=0, deadline=2.0))
        cache.set_admin(AdminPolicy(min_mx_level="mta-sts"))
        late = cache.lookup("a.test")
        assert isinstance(late, Deferred)
        shed = cache.lookup("b.test")
        assert isinstance(shed, Verdict)
        self.clock.advance(2.0)
        at_deadline = self.successResultOf(late)
        self.assertEqual(at_deadline.action, Action.TEMP)
        self.assertEqual((shed.action, shed.reason), (at_deadline.action, at_deadline.reason))
        self.assertIn("policy.min_mx_level = mta-sts not reached", shed.rule)

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
