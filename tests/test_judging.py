"""
Tests for L{mxpolicyd.cache.judging}: the administrator's policy applied to
cached entries, counted and logged, on its own and through the cache
(tests/test_admin_cache.py drives it from the answers and the control
commands).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.judging import EntryJudge
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.verdict import Action, Verdict, first_answer

from .test_admin_cache import dane_only, dane_temp, enforced, insecure, withdrawn_tlsa
from .test_cache import RecordingStore, ScriptedEvaluator

D = "example.test"


class EntryJudgeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.metrics = Metrics()
        self.judge = EntryJudge(self.clock, self.metrics)
        self.judge.admin = AdminPolicy(downgrade="enforce")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self) -> list[tuple[LogLevel, str]]:
        return [(e["log_level"], formatEvent(e)) for e in self.events]

    def now(self) -> float:
        return self.clock.seconds()

    def held(self) -> DomainState:
        """Evidence weaker than the remembered dane-only."""
        return replace(insecure(self.now()), memory=Remembered("dane-only", self.now()))

    def test_entry_counted_quietly(self) -> None:
        """A new entry's note is counted; with log false (the start-up load) not logged."""
        entry = self.judge.entry(D, self.held(), self.now(), self.now(), log=False)
        self.assertEqual(entry.verdict.action, Action.TEMP)
        self.assertEqual(self.metrics.guard.values, {("held",): 1})
        self.assertEqual(self.logged(), [])
        self.judge.entry(D, self.held(), self.now(), self.now())
        self.assertEqual([level for level, _ in self.logged()], [LogLevel.warn])

    def test_apply_weaker_counted(self) -> None:
        """New evidence with a weaker verdict counts a downgrade and warns; a stronger one informs."""
        self.judge.admin = AdminPolicy()
        entry = self.judge.entry(D, enforced(self.now()), self.now(), self.now())
        self.judge.apply(entry, insecure(self.now()), self.now())
        self.assertEqual(self.metrics.downgrades.values, {(): 1})
        self.judge.apply(entry, dane_only(self.now()), self.now())
        self.assertEqual(self.metrics.downgrades.values, {(): 1})
        self.assertEqual([(level, text.split(":")[0]) for level, text in self.logged()], [
            (LogLevel.warn, "Verdict for example.test weakened from sts-enforce to none"),
            (LogLevel.info, "Verdict for example.test changed from none to dane-only"),
        ])

    def test_redecide_ends_hold(self) -> None:
        """Re-deciding on the same evidence after the policy changed ends a hold: warned, then ended."""
        entry = self.judge.entry(D, self.held(), self.now(), self.now(), log=False)
        self.judge.admin = AdminPolicy(downgrade="warn")
        self.judge.redecide(entry, self.now())
        self.assertEqual(entry.verdict.action, Action.NONE)
        self.assertEqual([level for level, _ in self.logged()], [LogLevel.warn, LogLevel.info])
        self.assertIn("policy.downgrade = warn", self.logged()[0][1])
        self.assertEqual(self.logged()[1][1], "Downgrade hold for example.test ended; answering "
                         "none (no MTA-STS record and no cached policy)")

    def test_with_memory(self) -> None:
        """The memory is carried into a weaker state; a withdrawal replaces it, counted and logged."""
        entry = self.judge.entry(D, dane_only(self.now()), self.now(), self.now())
        entry.state = self.judge.with_memory(D, None, entry.state, self.now())
        self.assertEqual(entry.state.memory, Remembered("dane-only", self.now()))
        weaker = self.judge.with_memory(D, entry, insecure(self.now()), self.now())
        self.assertEqual(weaker.memory, Remembered("dane-only", self.now()))
        gone = self.judge.with_memory(D, entry, withdrawn_tlsa(self.now()), self.now())
        self.assertIsNone(gone.memory)
        self.assertEqual(self.metrics.guard.values, {("withdrawn",): 1})
        self.assertIn("withdrawn by the domain", self.logged()[-1][1])

    def test_with_memory_off(self) -> None:
        """With downgrade off and nothing remembered, the state is taken as it is."""
        self.judge.admin = AdminPolicy(downgrade="off")
        state = dane_only(self.now())
        self.assertIs(self.judge.with_memory(D, None, state, self.now()), state)

    def test_acknowledged(self) -> None:
        """ack remembers the evidence and says so; while the evidence is TEMP there is nothing to accept."""
        entry = self.judge.entry(D, self.held(), self.now(), self.now(), log=False)
        state = self.judge.acknowledged(entry, self.now())
        assert state is not None
        self.assertIsNone(state.memory)
        self.assertEqual(self.logged(), [(LogLevel.info, "Administrator acknowledged the policy "
                                          "of example.test: remembering nothing (was dane-only)")])
        entry.state = dane_temp(self.now())
        self.assertIsNone(self.judge.acknowledged(entry, self.now()))

    def test_first_answer_judged(self) -> None:
        """The first answer is judged too: below a minimum it is TEMP."""
        self.judge.admin = AdminPolicy(min_mx_level="mta-sts")
        verdict = self.judge.first_answer(first_answer(D, None, False))
        self.assertEqual(verdict.action, Action.TEMP)


class DowngradeTests(SynchronousTestCase):
    """Re-evaluations through the cache: a weaker verdict is warned about and counted."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.evaluator = ScriptedEvaluator()
        self.metrics = Metrics()
        self.cache = PolicyCache(self.clock, self.evaluator, None, metrics=self.metrics)
        self.cache.load([("example.test", enforced(self.clock.seconds()))])
        self.events: list[dict[str, object]] = []
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
        self.reevaluate(enforced(now, mode="testing"))
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


class RememberedOnlyTests(SynchronousTestCase):
    """
    A domain reduced to its downgrade memory (idle past the refresh window,
    or evicted for room): no evidence to answer from, so a lookup evaluates
    it afresh, judged against the memory.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store,
                                 CacheSettings(deadline=2.0))
        self.cache.loaded = True
        self.cache.set_admin(AdminPolicy(downgrade="enforce"))
        self.changes: list[str] = []
        self.cache.on_change(self.changes.append)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.seen = self.clock.seconds()
        remembered = replace(enforced(self.seen), memory=Remembered("sts-enforce", self.seen))
        self.cache.load([(D, remembered)])
        self.clock.advance(8 * 86400)

    def reduced(self) -> None:
        entry = self.cache.reduce(D)
        assert entry is not None
        self.events.clear()

    def test_reduce(self) -> None:
        """reduce() keeps the memory alone, in memory and in the store, quietly."""
        self.cache.reduce(D)
        entry = self.cache.get(D)
        assert entry is not None
        memory = DomainState(memory=Remembered("sts-enforce", self.seen))
        self.assertEqual(entry.state, memory)
        self.assertEqual(self.store.rows[D][0], memory)
        self.assertEqual(self.changes, [D])
        self.assertEqual(self.events, [])
        self.assertIsNone(self.cache.reduce("other.test"))

    def test_lookup_waits_for_evaluation(self) -> None:
        """A lookup evaluates afresh and answers the result; the memory is renewed, no change logged."""
        self.reduced()
        self.assertIsNone(self.cache.current(D))
        d = self.cache.lookup(D)
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        now = self.clock.seconds()
        self.evaluator.pending[0].callback(enforced(now))
        self.assertEqual(self.successResultOf(d).action, Action.STS_ENFORCE)
        entry = self.cache.get(D)
        assert entry is not None
        self.assertFalse(entry.state.remembered_only)
        self.assertEqual(entry.state.memory, Remembered("sts-enforce", now))
        self.assertEqual(self.events, [])
        verdict = self.cache.lookup(D)
        assert isinstance(verdict, Verdict)
        self.assertEqual(verdict.action, Action.STS_ENFORCE)

    def test_weaker_evidence_held(self) -> None:
        """Blocked fetches on the way back (no policy found) are held by the memory."""
        self.reduced()
        d = self.cache.lookup(D)
        assert isinstance(d, Deferred)
        self.evaluator.pending[0].callback(DomainState(sts=StsState(
            record="v=STSv1; id=2", failure="policy fetch failed: timeout",
            checked_at=self.clock.seconds(), due_at=self.clock.seconds() + 60)))
        verdict = self.successResultOf(d)
        self.assertEqual(verdict.action, Action.TEMP)
        self.assertIn("policy downgrade from sts-enforce to none held", verdict.reason)

    def test_deadline_judged_against_memory(self) -> None:
        """At the deadline the first answer is judged against the memory: TEMP, not NOTFOUND."""
        self.reduced()
        d = self.cache.lookup(D)
        assert isinstance(d, Deferred)
        self.clock.advance(2.0)
        verdict = self.successResultOf(d)
        self.assertEqual(verdict.action, Action.TEMP)
        self.assertIn("policy downgrade from sts-enforce to none held", verdict.reason)
        late = self.cache.lookup("new.test")
        assert isinstance(late, Deferred)
        self.clock.advance(2.0)
        self.assertEqual(self.successResultOf(late).action, Action.NONE)

    def test_nothing_to_acknowledge(self) -> None:
        """ack of a domain with no evidence kept accepts nothing."""
        self.reduced()
        self.assertIsNone(self.cache.acknowledge(D))
        entry = self.cache.get(D)
        assert entry is not None
        self.assertEqual(entry.state.memory, Remembered("sts-enforce", self.seen))

    def test_memory_ends(self) -> None:
        """The memory ages out downgrade_memory_days after it was last seen; never with downgrade off."""
        entry = self.cache.get(D)
        assert entry is not None
        self.assertEqual(self.cache.memory_ends(entry.state), self.seen + 30 * 86400)
        self.cache.set_admin(AdminPolicy(downgrade="off"))
        self.assertEqual(self.cache.memory_ends(entry.state), float("-inf"))
        self.assertEqual(self.cache.memory_ends(DomainState()), float("-inf"))
