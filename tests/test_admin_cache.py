"""
The administrator's policy in the running daemon: the cache judging entries
(downgrade guard, memory, acknowledgement, ageing, exemptions that end),
the control socket's ack and show, the store keeping the memory, the
responders writing forced answers, and a reload applying new entries.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.control import ControlCommands
from mxpolicyd.answers.exim import EximResponder
from mxpolicyd.answers.postfix import PostfixResponder
from mxpolicyd.answers.profiles import BUILTIN_PROFILES
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.config.load import load, parse
from mxpolicyd.evidence.dane import DaneState, DaneStatus, HostEvidence, HostState
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.admin import AdminPolicy, AdminRule
from mxpolicyd.policy.verdict import Action, Verdict
from mxpolicyd.store.sqlite import SQLiteStore
from mxpolicyd.tap import Daemon, build_evaluator

from .test_cache import RecordingStore, ScriptedEvaluator

DAY = 86400.0
D = "example.test"
ENFORCE = StsPolicy("enforce", 30 * 86400, ("mx.example.test",))
ENFORCE_REPLY = b"OK secure match=mx.example.test servername=hostname"


def checked(now: float) -> StsState:
    """No MTA-STS record, looked for now."""
    return StsState(checked_at=now, due_at=now + 600)


def dane_only(now: float) -> DomainState:
    host = HostEvidence("mx.example.test", 10, HostState.USABLE)
    return DomainState(sts=checked(now), dane=DaneState(
        DaneStatus.DANE_ONLY, "all usable", True, False, (host,), now, now + 600))


def insecure(now: float) -> DomainState:
    """The zone went DNSSEC-insecure: DANE gone, not under a signature."""
    return DomainState(sts=checked(now), dane=DaneState(
        DaneStatus.NONE, "the MX RRset is not DNSSEC-signed", False, False, (), now, now + 600))


def withdrawn_tlsa(now: float) -> DomainState:
    """TLSA records removed, the denial signed: the owner's own statement."""
    return DomainState(sts=checked(now), dane=DaneState(
        DaneStatus.NONE, "no MX host has secure TLSA records", True, False, (), now, now + 600))


def enforced(now: float, mode: str = "enforce") -> DomainState:
    policy = ENFORCE if mode == "enforce" else StsPolicy(mode, 86400, ())
    return DomainState(sts=StsState(policy=policy, policy_id="1", fetched_at=now,
                                    expires_at=now + policy.max_age, record="v=STSv1; id=1",
                                    checked_at=now, due_at=now + 600))


def nothing(now: float) -> DomainState:
    """No MTA-STS record, DANE not looked at."""
    return DomainState(sts=checked(now))


def dane_temp(now: float) -> DomainState:
    return DomainState(sts=checked(now),
                       dane=DaneState(DaneStatus.TEMP, "SERVFAIL", None, False, (), now, now + 60))


class AdminCacheCase(SynchronousTestCase):
    mode = "enforce"

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.evaluator = ScriptedEvaluator()
        self.store = RecordingStore()
        self.metrics = Metrics()
        self.cache = PolicyCache(self.clock, self.evaluator, self.store, metrics=self.metrics)
        self.cache.set_admin(AdminPolicy(downgrade=self.mode))
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.responder = PostfixResponder(self.clock, self.cache, BUILTIN_PROFILES,
                                          metrics=self.metrics)
        self.commands = ControlCommands(self.cache)

    def evaluate(self, state: DomainState) -> None:
        """One (re-)evaluation of D that finds C{state}."""
        self.evaluator.immediate = state
        if D in self.cache:
            self.successResultOf(self.cache.refresh(D))
        else:
            self.successResultOf(self.cache.lookup(D))  # type: ignore[arg-type]
        self.evaluator.immediate = None

    def ask(self) -> bytes:
        reply = self.responder.lookup(b"postfix", D.encode())
        assert isinstance(reply, bytes)
        return reply

    def logged(self, level: LogLevel) -> list[str]:
        lines = [formatEvent(e) for e in self.events if e["log_level"] == level]
        return lines


class EnforceTests(AdminCacheCase):
    def test_held_then_acknowledged(self) -> None:
        """dane-only then insecure: TEMP (warned once) until "cache ack", which persists the new memory."""
        self.evaluate(dane_only(self.clock.seconds()))
        self.assertEqual(self.ask(), b"OK dane-only")
        self.assertEqual(self.store.rows[D][0].memory,
                         Remembered("dane-only", self.clock.seconds()))
        self.clock.advance(100)
        self.evaluate(insecure(self.clock.seconds()))
        reply = self.ask()
        self.assertEqual(reply, b'TEMP policy downgrade from dane-only to none held: '
                         b'acknowledge with "mxpolicyd cache ack example.test"')
        self.clock.advance(100)
        self.evaluate(insecure(self.clock.seconds()))
        warnings = [w for w in self.logged(LogLevel.warn) if "weakened from" in w]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("Policy of example.test weakened from dane-only to none", warnings[0])
        self.assertIn('runs "mxpolicyd cache ack example.test"', warnings[0])
        self.assertEqual(self.metrics.guard.values, {("held",): 1})

        shown = self.commands.run({"command": "show", "domain": D})
        assert isinstance(shown, dict)
        self.assertTrue(shown["held"])
        self.assertEqual(shown["remembered"]["action"], "dane-only")
        self.assertEqual((shown["evidence"], shown["mx_level"]), ("none", "none"))

        reply_ack = self.commands.run({"command": "ack", "domain": D})
        assert isinstance(reply_ack, dict)
        self.assertTrue(reply_ack["acknowledged"])
        self.assertEqual(reply_ack["action"], "none")
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.assertIsNone(self.store.rows[D][0].memory)
        self.assertTrue(any("Downgrade hold for example.test ended" in line
                            for line in self.logged(LogLevel.info)))

    def test_ack_errors(self) -> None:
        """ack of an uncached domain, or while the evidence is TEMP, says so and changes nothing."""
        reply = self.commands.run({"command": "ack", "domain": "nope.test"})
        self.assertEqual(reply, {"error": "nope.test is not cached", "domain": "nope.test"})
        self.evaluate(dane_only(self.clock.seconds()))
        self.evaluate(dane_temp(self.clock.seconds()))
        reply = self.commands.run({"command": "ack", "domain": D})
        assert isinstance(reply, dict)
        self.assertIn("temporarily unknown", reply["error"])
        entry = self.cache.get(D)
        assert entry is not None
        self.assertEqual(entry.state.memory, Remembered("dane-only", self.clock.seconds()))

    def test_memory_ages_out(self) -> None:
        """A held downgrade ends when the remembered verdict ages out, with no new evaluation."""
        self.evaluate(dane_only(self.clock.seconds()))
        self.evaluate(insecure(self.clock.seconds()))
        self.assertTrue(self.ask().startswith(b"TEMP"))
        self.clock.advance(30 * DAY - 1)
        self.assertTrue(self.ask().startswith(b"TEMP"))
        self.clock.advance(1)
        self.assertEqual(self.ask(), b"NOTFOUND ")
        # The (due) re-check started in the background has not finished.
        self.assertEqual([d.called for d in self.evaluator.pending], [False])

    def test_legitimate_withdrawal(self) -> None:
        """TLSA records removed under a valid signature: accepted, logged and counted, not held."""
        self.evaluate(dane_only(self.clock.seconds()))
        self.evaluate(withdrawn_tlsa(self.clock.seconds()))
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.assertIsNone(self.store.rows[D][0].memory)
        self.assertEqual(self.metrics.guard.values, {("withdrawn",): 1})
        self.assertTrue(any("withdrawn by the domain" in line
                            for line in self.logged(LogLevel.info)))

    def test_sts_mode_none_is_legitimate(self) -> None:
        """An enforce policy replaced by a valid mode none policy is accepted at once."""
        self.evaluate(enforced(self.clock.seconds()))
        self.assertEqual(self.ask(), ENFORCE_REPLY)
        self.evaluate(enforced(self.clock.seconds(), mode="none"))
        self.assertEqual(self.ask(), b"NOTFOUND ")

    def test_forget_drops_memory(self) -> None:
        """cache forget drops the entry and its stored row: the next evaluation starts afresh."""
        self.evaluate(dane_only(self.clock.seconds()))
        self.evaluate(insecure(self.clock.seconds()))
        self.assertTrue(self.ask().startswith(b"TEMP"))
        self.assertEqual(self.commands.run({"command": "forget", "domain": D}),
                         {"domain": D, "forgotten": True})
        self.assertNotIn(D, self.store.rows)
        self.evaluate(insecure(self.clock.seconds()))
        self.assertEqual(self.ask(), b"NOTFOUND ")

    def test_temp_never_remembered(self) -> None:
        """A TEMP evaluation neither replaces nor refreshes the memory."""
        self.evaluate(dane_only(self.clock.seconds()))
        seen = self.clock.seconds()
        self.clock.advance(100)
        self.evaluate(dane_temp(self.clock.seconds()))
        entry = self.cache.get(D)
        assert entry is not None
        self.assertEqual(entry.state.memory, Remembered("dane-only", seen))


class WarnTests(AdminCacheCase):
    mode = "warn"

    def test_warned_once_and_answered(self) -> None:
        """warn answers the weaker verdict, with one warning and one count per change."""
        self.evaluate(enforced(self.clock.seconds()))
        self.evaluate(nothing(self.clock.seconds()))
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.evaluate(nothing(self.clock.seconds()))
        warnings = [w for w in self.logged(LogLevel.warn) if "policy.downgrade = warn" in w]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn("weakened from sts-enforce to none", warnings[0])
        self.assertEqual(self.metrics.guard.values, {("warned",): 1})
        entry = self.cache.get(D)
        assert entry is not None
        self.assertEqual(entry.state.memory and entry.state.memory.action, "sts-enforce")


class OffTests(AdminCacheCase):
    mode = "off"

    def test_nothing_remembered(self) -> None:
        """With downgrade off no memory is stored and a downgrade is answered as is."""
        self.evaluate(dane_only(self.clock.seconds()))
        self.evaluate(insecure(self.clock.seconds()))
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.assertIsNone(self.store.rows[D][0].memory)


def synchronous(f: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class PersistenceTests(SynchronousTestCase):
    def test_memory_survives_restart(self) -> None:
        """The memory goes through the SQLite store: a restarted daemon still holds the downgrade."""
        path = os.path.join(os.path.abspath(self.mktemp()), "store.sqlite")
        clock = Clock()
        clock.advance(1_000_000)
        enforce = AdminPolicy(downgrade="enforce")

        def start() -> tuple[SQLiteStore, PolicyCache, ScriptedEvaluator]:
            store = SQLiteStore(path, synchronous)
            store.open()
            self.addCleanup(store.close)
            evaluator = ScriptedEvaluator()
            cache = PolicyCache(clock, evaluator, store,
                                cooperator=Cooperator(scheduler=lambda f: f()))  # type: ignore[arg-type]
            cache.set_admin(enforce)
            return store, cache, evaluator

        store, cache, evaluator = start()
        evaluator.immediate = dane_only(clock.seconds())
        self.successResultOf(cache.lookup(D))  # type: ignore[arg-type]
        self.successResultOf(store.flush())
        store.close()

        store, cache, evaluator = start()
        self.assertEqual(self.successResultOf(cache.warm()), 1)
        entry = cache.get(D)
        assert entry is not None
        self.assertEqual(entry.state.memory, Remembered("dane-only", clock.seconds()))
        evaluator.immediate = insecure(clock.seconds())
        self.successResultOf(cache.refresh(D))
        self.assertEqual(entry.verdict.action, Action.TEMP)


END = 1_800_000_000.0


class ExemptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(END - 2 * DAY)
        self.evaluator = ScriptedEvaluator()
        self.metrics = Metrics()
        self.cache = PolicyCache(self.clock, self.evaluator, metrics=self.metrics)
        rule = AdminRule(D, 'domain."example.test"', exempt=True, expires=END,
                         expires_text="2027-01-14")
        self.cache.set_admin(AdminPolicy(rules={D: rule}))
        self.cache.load([(D, enforced(self.clock.seconds()))])
        self.responder = PostfixResponder(self.clock, self.cache, BUILTIN_PROFILES,
                                          metrics=self.metrics)
        self.exim = EximResponder(self.cache, self.metrics)

    def ask(self) -> bytes:
        reply = self.responder.lookup(b"postfix", D.encode())
        assert isinstance(reply, bytes)
        return reply

    def test_exemption_ends_on_the_clock(self) -> None:
        """Exempt until its end (memoised meanwhile), then answered from the evidence at once."""
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.assertEqual(self.exim.lookup(D.encode()),
                         b'action=none rule="forced by the administrator '
                         b"(domain.'example.test'.exempt)\"\n")
        # Every answer the exemption forced is counted, memoised ones too.
        self.assertEqual(self.metrics.overrides.values, {("exempt",): 3})
        self.assertEqual(self.metrics.lookups.values[("exim", "none")], 1)
        self.clock.advance(2 * DAY - 1)
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.clock.advance(1)
        self.assertEqual(self.ask(), ENFORCE_REPLY)
        reply = self.exim.lookup(D.encode())
        assert isinstance(reply, bytes)
        self.assertTrue(reply.startswith(b'action=sts-enforce mx="mx.example.test"'))
        self.assertEqual(self.metrics.overrides.values, {("exempt",): 4})

    def test_set_admin_redecides_lazily(self) -> None:
        """A new policy re-decides a cached entry at its next lookup; the same policy changes nothing."""
        self.assertEqual(self.ask(), b"NOTFOUND ")
        self.cache.set_admin(AdminPolicy())
        self.assertEqual(self.ask(), ENFORCE_REPLY)
        entry = self.cache.get(D)
        assert entry is not None
        changes_at = entry.changes_at
        self.cache.set_admin(AdminPolicy())
        self.assertEqual(entry.changes_at, changes_at)


class ForcedAnswerMetricTests(SynchronousTestCase):
    def test_forced_postfix_counted_per_answer(self) -> None:
        """A forced Postfix policy is counted for each Postfix answer, not for Exim's evidence answer."""
        clock = Clock()
        clock.advance(END)
        metrics = Metrics()
        cache = PolicyCache(clock, ScriptedEvaluator(), metrics=metrics)
        rule = AdminRule(D, 'domain."example.test"', postfix="encrypt")
        cache.set_admin(AdminPolicy(rules={D: rule}))
        cache.load([(D, enforced(clock.seconds()))])
        responder = PostfixResponder(clock, cache, BUILTIN_PROFILES, metrics=metrics)
        for _ in range(3):
            self.assertEqual(responder.lookup(b"postfix", D.encode()), b"OK encrypt")
        reply = EximResponder(cache, metrics).lookup(D.encode())
        assert isinstance(reply, bytes)
        self.assertTrue(reply.startswith(b"action=sts-enforce"))
        self.assertEqual(metrics.overrides.values, {("postfix",): 3})


class PendingTests(SynchronousTestCase):
    def test_pending_below_minimum_is_temp(self) -> None:
        """The answer at the lookup deadline is judged too: below the minimum it is TEMP."""
        clock = Clock()
        cache = PolicyCache(clock, ScriptedEvaluator(), settings=CacheSettings(deadline=2.0))
        cache.set_admin(AdminPolicy(min_mx_level="mta-sts"))
        d = cache.lookup("slow.test")
        assert isinstance(d, Deferred)
        clock.advance(2)
        verdict: Verdict = self.successResultOf(d)
        self.assertEqual((verdict.action, verdict.reason),
                         (Action.TEMP, "minimum MX level mta-sts not reached (evidence: none)"))


class ReloadTests(SynchronousTestCase):
    def test_reload_applies_entries(self) -> None:
        """A reload with a new [domain] entry changes the answer of a cached domain."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "m.toml")
        base = '[daemon]\nstate_directory = "%s"\n[dns]\nnameservers = ["127.0.0.1"]\n' % (
            directory,)
        with open(path, "w") as f:
            f.write(base)
        config = load(path)
        reactor = MemoryReactorClock()
        reactor.advance(1_000_000)
        cache = PolicyCache(reactor, build_evaluator(config, reactor))
        cache.load([(D, enforced(reactor.seconds()))])
        responder = PostfixResponder(reactor, cache, config.profiles)
        daemon = Daemon(MultiService(), cache, None,  # type: ignore[arg-type]
                        responder, None, Metrics(), config, reactor)
        self.assertEqual(responder.lookup(b"postfix", D.encode()), ENFORCE_REPLY)
        with open(path, "w") as f:
            f.write(base + '[domain."example.test"]\npostfix = "encrypt"\nexim = "none"\n')
        self.assertTrue(daemon.reload(path))
        self.assertEqual(responder.lookup(b"postfix", D.encode()), b"OK encrypt")
        self.assertEqual(cache.admin.rules[D].postfix, "encrypt")


class ParsedExpiryTests(SynchronousTestCase):
    def test_config_date_drives_cache(self) -> None:
        """An expires date from the config ends the entry at the next day's start, UTC."""
        admin = parse({"domain": {D: {"exempt": True, "expires": datetime.date(2027, 1, 14)}}},
                      "t.toml", {"HOME": "/h"}).admin
        end = datetime.datetime(2027, 1, 15, tzinfo=datetime.timezone.utc).timestamp()
        clock = Clock()
        clock.advance(end - 1)
        cache = PolicyCache(clock, ScriptedEvaluator())
        cache.set_admin(admin)
        cache.load([(D, enforced(clock.seconds()))])
        self.assertEqual(cache.lookup(D).action, Action.NONE)  # type: ignore[union-attr]
        clock.advance(1)
        self.assertEqual(cache.lookup(D).action, Action.STS_ENFORCE)  # type: ignore[union-attr]


class ExplainOutputTests(SynchronousTestCase):
    def test_explain_text(self) -> None:
        """explain's text names the levels, the override and its end, the memory and a hold."""
        import io
        import sys

        from mxpolicyd import cli
        from mxpolicyd.answers.render import exim_reply, postfix_reply
        from mxpolicyd.policy.judge import administration, judge
        from mxpolicyd.policy.verdict import decide

        now = 1_000_000.0
        rule = AdminRule(D, 'domain."example.test"', subdomains=True, postfix="encrypt",
                         expires=now + DAY, expires_text="2030-01-01")
        policy = AdminPolicy(downgrade="enforce", min_tls_level="encrypted", rules={D: rule})
        state = DomainState(sts=checked(now), memory=Remembered("sts-enforce", now - 10))
        evidence = decide(D, state, now)
        verdict, _ = judge(evidence, state, policy, now)
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        cli._print_explain({
            "domain": D, "rule": verdict.rule, "action": verdict.action.value,
            "postfix": postfix_reply(verdict, BUILTIN_PROFILES["postfix"]).decode(),
            "exim": exim_reply(verdict).decode().strip(),
            "admin": administration(evidence, state, verdict, policy, now),
        }, False)
        text = out.getvalue()
        for expected in [
            "levels:  MX none, TLS none (evidence: none)",
            "minimum: MX none (policy.min_mx_level), TLS encrypted (policy.min_tls_level)",
            'override: domain."example.test": postfix OK encrypt (and subdomains) '
            "until 2030-01-01",
            "memory:  sts-enforce, last seen 1970-01-12 13:46:30 UTC",
            "held:    yes: policy downgrade from sts-enforce to none held",
            "verdict: temp",
            "postfix: OK encrypt",
            'exim:    action=temp reason="policy downgrade from sts-enforce to none held',
        ]:
            self.assertIn(expected, text)
