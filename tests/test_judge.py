"""
Tests for L{mxpolicyd.policy.judge}: security levels, minimums, the downgrade
guard and memory, overrides, and the forced answers the renderers write.
All pure: table tests with no reactor.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.profiles import BUILTIN_PROFILES
from mxpolicyd.answers.render import exim_action, exim_reply, postfix_reply
from mxpolicyd.evidence.dane import DaneState, DaneStatus, HostEvidence, HostState
from mxpolicyd.evidence.state import FOREVER, DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.admin import AdminPolicy, AdminRule
from mxpolicyd.policy.judge import (
    HELD,
    MINIMUM,
    OVERRIDE,
    WARNED,
    WEAKER,
    WITHDRAWN,
    Levels,
    Report,
    acknowledgement,
    administration,
    judge,
    levels,
    noted,
    remember,
    verdict_change,
    weaker,
    withdrawal,
    withdrawn,
)
from mxpolicyd.policy.verdict import Action, Verdict, decide

NOW = 10_000_000.0
DAY = 86400.0
D = "example.test"
ENFORCE = StsPolicy("enforce", 86400, ("mx.example.test",))
TESTING = StsPolicy("testing", 86400, ("mx.example.test",))
MODE_NONE = StsPolicy("none", 86400, ())


def host(state: str) -> HostEvidence:
    return HostEvidence("mx-%s.example.test" % state, 10, state)


def dane(status: str, *states: str, mx_secure: bool | None = True) -> DaneState:
    return DaneState(status, status, mx_secure, False, tuple(host(s) for s in states),
                     NOW - 10, NOW + 3600)


def sts(policy: StsPolicy | None = ENFORCE, expires: float = NOW + DAY) -> StsState:
    return StsState(policy=policy, policy_id="1", fetched_at=NOW - 10,
                    expires_at=expires if policy else 0.0, checked_at=NOW - 10,
                    due_at=NOW + 600)


def state(sts_state: StsState | None = None, dane_state: DaneState | None = None,
          memory: Remembered | None = None) -> DomainState:
    return DomainState(sts=sts_state or StsState(), dane=dane_state, memory=memory)


STATES = {
    "dane-only": state(dane_state=dane(DaneStatus.DANE_ONLY, HostState.USABLE, HostState.USABLE)),
    "dane-all-tlsa": state(dane_state=dane(DaneStatus.DANE, HostState.USABLE, HostState.UNUSABLE, HostState.NO_ADDRESS)),
    "dane-some": state(dane_state=dane(DaneStatus.DANE, HostState.USABLE, HostState.NO_TLSA)),
    "dane-insecure-host": state(dane_state=dane(DaneStatus.DANE, HostState.USABLE, HostState.INSECURE)),
    "enforce": state(sts()),
    "enforce-signed-mx": state(sts(), dane(DaneStatus.NONE, HostState.NO_TLSA)),
    "testing": state(sts(TESTING)),
    "mode-none": state(sts(MODE_NONE)),
    "nothing": state(),
    "nothing-signed": state(dane_state=dane(DaneStatus.NONE, HostState.NO_TLSA)),
    "nothing-unsigned": state(dane_state=dane(DaneStatus.NONE, mx_secure=False)),
    "temp": state(sts(), dane(DaneStatus.TEMP, mx_secure=None)),
    "expired": state(sts(expires=NOW - 1)),
}


def evidence(name: str) -> Verdict:
    return decide(D, STATES[name], NOW)


def admin(**kw: object) -> AdminPolicy:
    return AdminPolicy(**kw)  # type: ignore[arg-type]


def judged(name: str, policy: AdminPolicy, memory: Remembered | None = None,
           now: float = NOW) -> tuple[Verdict, float]:
    s = replace(STATES[name], memory=memory)
    return judge(decide(D, s, now), s, policy, now)


class LevelsTests(SynchronousTestCase):
    def test_levels_table(self) -> None:
        """MX and TLS levels for each kind of evidence; TEMP has none."""
        for name, expected in [
            ("dane-only", Levels("dnssec", "authenticated")),
            ("dane-all-tlsa", Levels("dnssec", "encrypted")),
            ("dane-some", Levels("dnssec", "none")),
            ("dane-insecure-host", Levels("dnssec", "none")),
            ("enforce", Levels("mta-sts", "authenticated")),
            ("enforce-signed-mx", Levels("dnssec", "authenticated")),
            ("testing", Levels("none", "none")),
            ("mode-none", Levels("none", "none")),
            ("nothing", Levels("none", "none")),
            ("nothing-signed", Levels("dnssec", "none")),
            ("nothing-unsigned", Levels("none", "none")),
            ("temp", None),
            ("expired", Levels("none", "none")),
        ]:
            self.assertEqual(levels(evidence(name), STATES[name]), expected, name)

    def test_pending_levels(self) -> None:
        """A pending verdict without its state: DANE means a signed MX set; dane alone no TLS level."""
        self.assertEqual(levels(Verdict(D, Action.DANE, "x"), None), ("dnssec", "none"))
        self.assertEqual(levels(Verdict(D, Action.DANE_ONLY, "x"), None),
                         ("dnssec", "authenticated"))
        self.assertEqual(levels(Verdict(D, Action.NONE, "x"), None), ("none", "none"))


class MinimumTests(SynchronousTestCase):
    def test_minimum_table(self) -> None:
        """An evidence verdict below a minimum is TEMP naming the minimum; at or above, unchanged."""
        for name, mx_min, tls_min, held in [
            ("nothing", "none", "none", False),
            ("nothing", "none", "encrypted", True),
            ("nothing", "mta-sts", "none", True),
            ("enforce", "mta-sts", "authenticated", False),
            ("enforce", "dnssec", "none", True),
            ("enforce-signed-mx", "dnssec", "authenticated", False),
            ("dane-some", "dnssec", "encrypted", True),
            ("dane-all-tlsa", "dnssec", "encrypted", False),
            ("dane-all-tlsa", "none", "authenticated", True),
            ("dane-only", "dnssec", "authenticated", False),
            ("testing", "none", "encrypted", True),
        ]:
            verdict, _ = judged(name, admin(min_mx_level=mx_min, min_tls_level=tls_min))
            self.assertEqual(verdict.action is Action.TEMP, held, (name, mx_min, tls_min))
            if held:
                assert verdict.note is not None
                self.assertEqual(verdict.note.kind, MINIMUM)
            else:
                self.assertEqual(verdict, evidence(name))

    def test_reason_names_minimum_and_key(self) -> None:
        """The TEMP reason names the level missed; the rule names the config key that set it."""
        verdict, _ = judged("nothing", admin(min_tls_level="authenticated"))
        self.assertEqual(verdict.reason,
                         "minimum TLS level authenticated not reached (evidence: none)")
        self.assertIn("policy.min_tls_level = authenticated", verdict.rule)
        self.assertEqual(postfix_reply(verdict, BUILTIN_PROFILES["postfix"]),
                         b"TEMP minimum TLS level authenticated not reached (evidence: none)")

    def test_domain_minimum_overrides_global(self) -> None:
        """A domain's own minimum replaces the global one, either way."""
        strict = AdminRule(D, 'domain."%s"' % D, min_mx_level="dnssec")
        lax = AdminRule(D, 'domain."%s"' % D, min_tls_level="none")
        verdict, _ = judged("enforce", admin(rules={D: strict}))
        self.assertEqual(verdict.action, Action.TEMP)
        self.assertIn('domain."example.test".min_mx_level = dnssec', verdict.rule)
        verdict, _ = judged("nothing", admin(min_tls_level="encrypted", rules={D: lax}))
        self.assertEqual(verdict.action, Action.NONE)

    def test_temp_and_pending(self) -> None:
        """A TEMP stays the evidence's TEMP; a pending NONE below the minimum is TEMP too."""
        verdict, _ = judged("temp", admin(min_tls_level="encrypted"))
        self.assertEqual(verdict, evidence("temp"))
        pending = Verdict(D, Action.NONE, "first evaluation still running")
        verdict, _ = judge(pending, None, admin(min_tls_level="encrypted"), NOW)
        self.assertEqual(verdict.action, Action.TEMP)


REMEMBER = {a: Remembered(a, NOW - DAY) for a in ("dane-only", "dane", "sts-enforce")}


class GuardTests(SynchronousTestCase):
    def test_guard_table(self) -> None:
        """off/warn/enforce against stronger, equal, weaker, legitimately withdrawn and aged-out."""
        for mode, remembered, name, outcome in [
            ("off", "dane-only", "nothing-unsigned", None),
            ("warn", "sts-enforce", "dane-only", None),          # stronger
            ("enforce", "sts-enforce", "enforce", None),         # equal
            ("warn", "dane-only", "nothing-unsigned", WARNED),   # zone went insecure
            ("enforce", "dane-only", "nothing-unsigned", HELD),
            ("enforce", "dane-only", "dane-some", HELD),         # dane-only -> dane
            ("enforce", "dane", "enforce", HELD),                # DANE gone insecurely
            ("enforce", "sts-enforce", "expired", HELD),         # expired, fetch failing
            ("enforce", "sts-enforce", "nothing", HELD),         # record and policy gone
            ("enforce", "sts-enforce", "testing", None),         # owner's valid testing policy
            ("warn", "sts-enforce", "mode-none", None),          # owner's valid none policy
            ("enforce", "dane-only", "nothing-signed", None),    # TLSA removed under signature
            ("enforce", "dane", "enforce-signed-mx", None),      # same, MTA-STS left
            ("enforce", "sts-enforce", "temp", None),            # TEMP is never compared
        ]:
            verdict, until = judged(name, admin(downgrade=mode), REMEMBER[remembered])
            kind = verdict.note.kind if verdict.note is not None else None
            self.assertEqual(kind, outcome, (mode, remembered, name))
            if outcome == HELD:
                self.assertEqual(verdict.action, Action.TEMP)
                self.assertEqual(
                    verdict.reason, 'policy downgrade from %s to %s held: acknowledge with '
                    '"mxpolicyd cache ack example.test"' % (remembered,
                                                            evidence(name).action.value))
                self.assertEqual(until, NOW - DAY + 30 * DAY)
            else:
                self.assertEqual(verdict.action, evidence(name).action, (mode, name))

    def test_aged_out(self) -> None:
        """A memory older than the window no longer holds anything."""
        old = Remembered("dane-only", NOW - 31 * DAY)
        verdict, until = judged("nothing", admin(downgrade="enforce"), old)
        self.assertEqual((verdict.action, verdict.note, until), (Action.NONE, None, FOREVER))
        verdict, _ = judged("nothing", admin(downgrade="enforce", memory=40 * DAY), old)
        self.assertEqual(verdict.action, Action.TEMP)

    def test_warned_still_subject_to_minimum(self) -> None:
        """A warned downgrade that misses a minimum is TEMP by the minimum."""
        verdict, _ = judged("nothing", admin(downgrade="warn", min_tls_level="encrypted"),
                            REMEMBER["sts-enforce"])
        assert verdict.note is not None
        self.assertEqual((verdict.action, verdict.note.kind), (Action.TEMP, MINIMUM))

    def test_withdrawn(self) -> None:
        """Only the owner's authenticated statement is a withdrawal, per remembered kind."""
        for remembered, name, expected in [
            ("sts-enforce", "mode-none", True),
            ("sts-enforce", "testing", True),
            ("sts-enforce", "expired", False),
            ("sts-enforce", "nothing", False),
            ("dane", "nothing-signed", True),
            ("dane-only", "enforce-signed-mx", True),
            ("dane-only", "nothing-unsigned", False),
            ("dane-only", "temp", False),
            ("dane", "mode-none", False),
        ]:
            self.assertEqual(withdrawn(REMEMBER[remembered], STATES[name], NOW), expected,
                             (remembered, name))


class MemoryTests(SynchronousTestCase):
    def run_remember(self, memory: Remembered | None, name: str, mode: str = "enforce",
                     now: float = NOW) -> tuple[Remembered | None, str]:
        return remember(memory, decide(D, STATES[name], now), STATES[name],
                        admin(downgrade=mode), now)

    def test_memory_table(self) -> None:
        """The memory after an evaluation: stronger and equal refresh it, weaker keeps it."""
        old = NOW - DAY
        for memory, name, expected, outcome in [
            (None, "enforce", Remembered("sts-enforce", NOW), ""),
            (None, "nothing", None, ""),
            (None, "testing", None, ""),
            (REMEMBER["sts-enforce"], "dane-only", Remembered("dane-only", NOW), ""),
            (REMEMBER["dane"], "dane-some", Remembered("dane", NOW), ""),
            (REMEMBER["dane-only"], "nothing-unsigned", Remembered("dane-only", old), WEAKER),
            (REMEMBER["sts-enforce"], "expired", Remembered("sts-enforce", old), WEAKER),
            (REMEMBER["sts-enforce"], "mode-none", None, WITHDRAWN),
            (REMEMBER["dane-only"], "enforce-signed-mx", Remembered("sts-enforce", NOW),
             WITHDRAWN),
            (REMEMBER["dane-only"], "temp", REMEMBER["dane-only"], ""),
            (Remembered("dane-only", NOW - 31 * DAY), "nothing", None, ""),
            (Remembered("dane-only", NOW - 31 * DAY), "enforce", Remembered("sts-enforce", NOW),
             ""),
        ]:
            self.assertEqual(self.run_remember(memory, name), (expected, outcome),
                             (memory, name))

    def test_off_forgets(self) -> None:
        """With policy.downgrade = off nothing is remembered, and an old memory is dropped."""
        self.assertEqual(self.run_remember(None, "dane-only", "off"), (None, ""))
        self.assertEqual(self.run_remember(REMEMBER["dane-only"], "nothing", "off"), (None, ""))

    def test_remembered_json(self) -> None:
        """The memory round-trips through the stored JSON; rows without it still load."""
        s = state(sts(), memory=Remembered("dane-only", 12.5))
        data = s.to_json()
        self.assertEqual(data["memory"], {"action": "dane-only", "seen_at": 12.5})
        # Also under 0.1.0's name, for fleets upgraded one daemon at a time.
        self.assertEqual(data["best"], data["memory"])
        self.assertEqual(DomainState.from_json(data), s)
        del data["memory"], data["best"]
        self.assertIsNone(DomainState.from_json(data).memory)
        for bad in ({"action": "sts-testing", "seen_at": 1}, {"action": "dane"}, [1],
                    {"action": "dane", "seen_at": True}):
            self.assertRaises(ValueError, DomainState.from_json, dict(data, memory=bad))
            self.assertRaises(ValueError, DomainState.from_json, dict(data, best=bad))

    def test_remembered_json_of_0_1_0(self) -> None:
        """A state written by 0.1.0 keeps its memory under the old key "best"; the new key wins."""
        data = state(sts()).to_json()
        data["best"] = {"action": "sts-enforce", "seen_at": 7.0}
        self.assertEqual(DomainState.from_json(data).memory, Remembered("sts-enforce", 7.0))
        data["memory"] = {"action": "dane", "seen_at": 9.0}
        self.assertEqual(DomainState.from_json(data).memory, Remembered("dane", 9.0))
        self.assertEqual(set(DomainState.from_json(data).to_json()), {"v", "sts", "memory", "best"})


POSTFIX = BUILTIN_PROFILES["postfix"]


def entry(**kw: object) -> AdminRule:
    return AdminRule(D, 'domain."example.test"', **kw)  # type: ignore[arg-type]


class OverrideTests(SynchronousTestCase):
    def test_exempt(self) -> None:
        """An exemption answers NOTFOUND and action=none whatever the evidence, TEMP included."""
        policy = admin(rules={D: entry(exempt=True, expires=NOW + DAY, expires_text="2026-12-31")},
                       downgrade="enforce", min_tls_level="authenticated")
        for name in ("dane-only", "temp", "nothing"):
            verdict, until = judged(name, policy, REMEMBER["dane-only"])
            self.assertEqual(postfix_reply(verdict, POSTFIX), b"NOTFOUND ", name)
            self.assertEqual(exim_action(verdict), "none")
            self.assertTrue(exim_reply(verdict).startswith(b"action=none rule=\"forced by"))
            assert verdict.note is not None
            self.assertEqual(verdict.note.kind, OVERRIDE)
            self.assertIn("until 2026-12-31", verdict.note.text)
            self.assertEqual(until, NOW + DAY)

    def test_exempt_expired(self) -> None:
        """After its end an exemption no longer applies: the evidence answers."""
        policy = admin(rules={D: entry(exempt=True, expires=NOW)})
        verdict, until = judged("enforce", policy)
        self.assertEqual(verdict, evidence("enforce"))
        self.assertEqual(until, FOREVER)

    def test_forced_both(self) -> None:
        """Postfix and Exim forced: each protocol gets its forced answer, minimums ignored."""
        policy = admin(min_mx_level="dnssec", rules={D: entry(
            postfix="secure match=.example.test", exim="sts-enforce",
            mx=("mx.example.test", "*.example.test"))})
        verdict, _ = judged("nothing", policy)
        self.assertEqual(postfix_reply(verdict, POSTFIX), b"OK secure match=.example.test")
        self.assertEqual(
            exim_reply(verdict),
            b'action=sts-enforce mx="mx.example.test:*.example.test" rule="forced by the '
            b"administrator (domain.'example.test'.exim)\"\n")
        self.assertEqual(verdict.action, Action.STS_ENFORCE)

    def test_forced_exim_temp(self) -> None:
        """A forced Exim temp carries a reason, so Exim logs why it defers."""
        verdict, _ = judged("enforce", admin(rules={D: entry(postfix="encrypt", exim="temp")}))
        self.assertTrue(exim_reply(verdict).startswith(
            b'action=temp reason="held by the administrator'))
        self.assertEqual(verdict.action, Action.TEMP)

    def test_forced_one_protocol(self) -> None:
        """Postfix forced alone: Exim is answered from the evidence, minimums applied to it."""
        policy = admin(min_tls_level="authenticated", rules={D: entry(postfix="encrypt")})
        verdict, _ = judged("nothing", policy)
        self.assertEqual(postfix_reply(verdict, POSTFIX), b"OK encrypt")
        self.assertTrue(exim_reply(verdict).startswith(b"action=temp reason=\"minimum TLS"))
        verdict, _ = judged("enforce", admin(rules={D: entry(exim="dane")}))
        self.assertEqual(postfix_reply(verdict, POSTFIX),
                         b"OK secure match=mx.example.test servername=hostname")
        self.assertEqual(exim_action(verdict), "dane")

    def test_minimum_only_entry_forces_nothing(self) -> None:
        """An entry with only minimums leaves both answers to the evidence."""
        verdict, _ = judged("enforce", admin(rules={D: entry(min_tls_level="authenticated")}))
        self.assertEqual(verdict, evidence("enforce"))
        self.assertIsNone(verdict.override)

    def test_neutral(self) -> None:
        """With nothing configured the evidence verdict is returned as is (no copy)."""
        verdict = evidence("enforce")
        self.assertIs(judge(verdict, STATES["enforce"], admin(), NOW)[0], verdict)


class AdministrationTests(SynchronousTestCase):
    def test_what_explain_shows(self) -> None:
        """explain and cache show get levels, the entry, minimums and the memory."""
        policy = admin(downgrade="enforce", min_mx_level="mta-sts", rules={
            D: entry(postfix="encrypt", expires=NOW + DAY, expires_text="2030-01-01")})
        s = replace(STATES["nothing-unsigned"], memory=REMEMBER["dane-only"])
        verdict, _ = judge(decide(D, s, NOW), s, policy, NOW)
        data = administration(decide(D, s, NOW), s, verdict, policy, NOW)
        self.assertEqual((data["evidence"], data["mx_level"], data["tls_level"]),
                         ("none", "none", "none"))
        self.assertEqual(data["override"], {"entry": 'domain."example.test"',
                                            "subdomains": False, "postfix": "OK encrypt",
                                            "expires": "2030-01-01"})
        self.assertEqual(data["minimum"]["mx"], "mta-sts")
        self.assertEqual(data["remembered"], {"action": "dane-only", "seen_at": NOW - DAY,
                                              "until": NOW + 29 * DAY})
        self.assertTrue(data["held"])
        self.assertIn("policy downgrade from dane-only to none held", data["note"])


def text(report: Report) -> str:
    """A report as twisted.logger would write it."""
    return formatEvent(dict(report.fields, log_format=report.format))


class WeakerTests(SynchronousTestCase):
    def test_weaker_table(self) -> None:
        """A downgrade is a step down dane-only > dane > sts-enforce > testing or none; TEMP is never one."""
        order = [Action.DANE_ONLY, Action.DANE, Action.STS_ENFORCE, Action.STS_TESTING, Action.NONE]
        for i, before in enumerate(order):
            for j, after in enumerate(order):
                expected = j > i and before is not Action.STS_TESTING
                self.assertEqual(weaker(before, after), expected, (before, after))
        for action in order:
            self.assertFalse(weaker(action, Action.TEMP))
            self.assertFalse(weaker(Action.TEMP, action))

    def test_weaker_than_memory(self) -> None:
        """A remembered action (its stored text) compares as the action itself."""
        self.assertTrue(weaker("sts-enforce", Action.STS_TESTING))
        self.assertTrue(weaker("dane-only", Action.DANE))
        self.assertFalse(weaker("dane", Action.DANE))
        self.assertFalse(weaker("dane", Action.TEMP))


class ReportTests(SynchronousTestCase):
    """The wording of what the cache logs about the decisions."""

    def test_verdict_change(self) -> None:
        """A weaker verdict is a warning that says "weakened"; any other change is info."""
        report = verdict_change(evidence("enforce"), evidence("nothing"))
        self.assertTrue(report.warning)
        self.assertEqual(text(report), "Verdict for example.test weakened from sts-enforce to none: "
                         "no MTA-STS record and no cached policy (was: MTA-STS policy in enforce mode)")
        report = verdict_change(evidence("testing"), evidence("nothing"))
        self.assertFalse(report.warning)
        self.assertIn("changed from sts-testing to none", text(report))
        self.assertFalse(verdict_change(evidence("enforce"), evidence("temp")).warning)

    def test_noted_minimum(self) -> None:
        """A minimum newly not reached is counted and warned once; the same note again is nothing."""
        policy = admin(min_mx_level="dnssec")
        after, _ = judged("enforce", policy)
        counted, reports = noted(evidence("enforce"), after, STATES["enforce"], policy, NOW)
        self.assertEqual(counted, MINIMUM)
        self.assertEqual([(r.warning, text(r)) for r in reports], [
            (True, "example.test answered TEMP: policy.min_mx_level = dnssec not reached: "
                   "MX level mta-sts; the evidence: MTA-STS policy in enforce mode")])
        self.assertEqual(noted(after, after, STATES["enforce"], policy, NOW), (None, []))

    def test_noted_held_and_ended(self) -> None:
        """A held downgrade names the ack command and when the memory ages out; its end is info."""
        policy = admin(downgrade="enforce")
        memory = REMEMBER["dane-only"]
        s = replace(STATES["nothing-unsigned"], memory=memory)
        held, _ = judged("nothing-unsigned", policy, memory)
        counted, reports = noted(None, held, s, policy, NOW)
        self.assertEqual(counted, HELD)
        self.assertEqual(len(reports), 1)
        self.assertTrue(reports[0].warning)
        self.assertEqual(
            text(reports[0]),
            "Policy of example.test weakened from dane-only to none "
            "(no MTA-STS record and no cached policy); policy.downgrade = enforce: answering "
            'TEMP until an administrator runs "mxpolicyd cache ack example.test" or the '
            "remembered dane-only ages out on 1970-05-25 17:46:40 UTC")
        free = evidence("nothing-unsigned")
        counted, reports = noted(held, free, STATES["nothing-unsigned"], policy, NOW)
        self.assertIsNone(counted)
        self.assertEqual([(r.warning, text(r)) for r in reports], [
            (False, "Downgrade hold for example.test ended; answering none "
                    "(no MTA-STS record and no cached policy)")])

    def test_noted_warned(self) -> None:
        """With downgrade = warn the line says the mail goes out with the weaker policy."""
        policy = admin(downgrade="warn")
        memory = REMEMBER["sts-enforce"]
        warned, _ = judged("nothing", policy, memory)
        counted, reports = noted(evidence("enforce"), warned,
                                 replace(STATES["nothing"], memory=memory), policy, NOW)
        self.assertEqual(counted, WARNED)
        self.assertIn("weakened from sts-enforce to none", text(reports[0]))
        self.assertIn("policy.downgrade = warn: mail goes out with the weaker policy",
                      text(reports[0]))

    def test_withdrawal_and_acknowledgement(self) -> None:
        """The withdrawal and ack lines name what was remembered and what is now."""
        self.assertEqual(
            text(withdrawal(REMEMBER["sts-enforce"], evidence("mode-none"), None)),
            "The sts-enforce policy of example.test was withdrawn by the domain "
            "(MTA-STS policy in mode none); accepted as a legitimate change, "
            "remembering nothing from now")
        self.assertEqual(
            text(acknowledgement(D, REMEMBER["dane"], REMEMBER["dane-only"])),
            "Administrator acknowledged the policy of example.test: remembering dane "
            "(was dane-only)")
        self.assertFalse(acknowledgement(D, None, None).warning)
