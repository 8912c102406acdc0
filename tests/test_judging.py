"""
Tests for L{mxpolicyd.cache.judging}: the administrator's policy applied to
cached entries, counted and logged, on its own and through the cache
(tests/test_admin_cache.py drives it from the answers and the control
commands).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.cache.judging import EntryJudge
from mxpolicyd.cache.policycache import PolicyCache
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.verdict import Action, first_answer

from .test_admin_cache import dane_only, dane_temp, enforced, insecure, withdrawn_tlsa
from .test_cache import ScriptedEvaluator

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
