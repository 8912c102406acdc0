"""Tests for L{mxpolicyd.policy.verdict}: the answer table and the Postfix replies."""

from __future__ import annotations

from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.profiles import BUILTIN_PROFILES, Profile
from mxpolicyd.answers.render import postfix_reply
from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.verdict import Action, Verdict, decide, first_answer

NOW = 10_000.0
MX = ("mail.example.test", "*.example.net")


def sts(mode: str | None, expires: float = NOW + 1, record: str | None = "v=STSv1; id=1") -> DomainState:
    policy = None if mode is None else StsPolicy(mode, 86400, MX if mode != "none" else ())
    return DomainState(sts=StsState(policy=policy, expires_at=expires, record=record))


class DecideTests(SynchronousTestCase):
    def test_table(self) -> None:
        """Each MTA-STS state maps to the action and rule of DESIGN.md's table."""
        table = [
            (sts("enforce"), Action.STS_ENFORCE, "enforce"),
            (sts("testing"), Action.STS_TESTING, "testing"),
            (sts("none"), Action.NONE, "mode none"),
            (sts(None, record=None), Action.NONE, "no MTA-STS record"),
            (sts(None), Action.NONE, "no valid policy"),
            (sts("enforce", expires=NOW), Action.NONE, "expired"),
            (DomainState(), Action.NONE, "no MTA-STS record"),
        ]
        for state, action, rule in table:
            verdict = decide("example.test", state, NOW)
            self.assertEqual(verdict.action, action, state)
            self.assertIn(rule, verdict.rule, state)

    def test_dane_table(self) -> None:
        """DANE decides before MTA-STS; an unknown DANE state is TEMP, never a fall-through."""
        table = [
            (DaneState(DaneStatus.DANE_ONLY, "all usable"), "enforce", Action.DANE_ONLY),
            (DaneState(DaneStatus.DANE, "some"), "enforce", Action.DANE),
            (DaneState(DaneStatus.DANE, "some"), None, Action.DANE),
            (DaneState(DaneStatus.TEMP, "MX lookup failed: DNS SERVFAIL"), "enforce", Action.TEMP),
            (DaneState(DaneStatus.TEMP, "x"), None, Action.TEMP),
            (DaneState(DaneStatus.NONE, "insecure"), "enforce", Action.STS_ENFORCE),
            (DaneState(DaneStatus.NONE, "insecure"), "testing", Action.STS_TESTING),
            (DaneState(DaneStatus.NONE, "insecure"), None, Action.NONE),
        ]
        for dane, mode, action in table:
            state = replace(sts(mode), dane=dane)
            self.assertEqual(decide("example.test", state, NOW).action, action, (dane, mode))

    def test_temp_reason(self) -> None:
        """A TEMP verdict carries the DANE failure as its reason."""
        state = DomainState(dane=DaneState(DaneStatus.TEMP, "MX lookup failed: DNS SERVFAIL for x.test MX"))
        verdict = decide("x.test", state, NOW)
        self.assertEqual(verdict.reason, "DANE MX lookup failed: DNS SERVFAIL for x.test MX")

    def test_pending(self) -> None:
        """At the deadline: TEMP while DANE is unknown, its verdict once known, else NOTFOUND."""
        self.assertEqual(first_answer("d.test", None, False).action, Action.NONE)
        self.assertEqual(first_answer("d.test", None, True).action, Action.TEMP)
        self.assertEqual(first_answer("d.test", DaneState(DaneStatus.NONE), True).action, Action.NONE)
        self.assertEqual(first_answer("d.test", DaneState(DaneStatus.DANE_ONLY), True).action, Action.DANE_ONLY)
        self.assertEqual(first_answer("d.test", DaneState(DaneStatus.TEMP, "x"), True).action, Action.TEMP)


class PostfixReplyTests(SynchronousTestCase):
    postfix = BUILTIN_PROFILES["postfix"]

    def reply(self, state: DomainState, profile: Profile | None = None) -> bytes:
        return postfix_reply(decide("example.test", state, NOW), profile or self.postfix)

    def test_enforce(self) -> None:
        """enforce answers secure with the patterns in policy order and servername."""
        self.assertEqual(
            self.reply(sts("enforce")),
            b"OK secure match=mail.example.test:.example.net servername=hostname",
        )

    def test_enforce_without_servername(self) -> None:
        """A profile can leave servername= out."""
        profile = Profile("p", servername=False)
        self.assertEqual(
            self.reply(sts("enforce"), profile),
            b"OK secure match=mail.example.test:.example.net",
        )

    def test_testing(self) -> None:
        """testing is NOTFOUND unless the profile is strict."""
        self.assertEqual(self.reply(sts("testing")), b"NOTFOUND ")
        self.assertEqual(
            self.reply(sts("testing"), BUILTIN_PROFILES["postfix-strict"]),
            b"OK secure match=mail.example.test:.example.net servername=hostname",
        )

    def test_none_and_absent(self) -> None:
        """Mode none, no record and an expired policy are NOTFOUND."""
        for state in (sts("none"), sts(None, record=None), sts("enforce", expires=NOW)):
            self.assertEqual(self.reply(state), b"NOTFOUND ")

    def test_tlsrpt(self) -> None:
        """The TLSRPT profile adds Postfix 3.10's policy attributes."""
        self.assertEqual(
            self.reply(sts("enforce"), BUILTIN_PROFILES["postfix-tlsrpt"]),
            b"OK secure match=mail.example.test:.example.net servername=hostname"
            b" policy_type=sts policy_domain=example.test"
            b" mx_host_pattern=mail.example.test mx_host_pattern=*.example.net"
            b" { policy_string = version: STSv1 } { policy_string = mode: enforce }"
            b" { policy_string = mx: mail.example.test }"
            b" { policy_string = mx: *.example.net }"
            b" { policy_string = max_age: 86400 }",
        )

    def test_temp_and_dane(self) -> None:
        """TEMP carries its reason; DANE verdicts never carry match=."""
        self.assertEqual(
            postfix_reply(Verdict("d.test", Action.TEMP, "r", reason="DNSSEC bogus"), self.postfix),
            b"TEMP DNSSEC bogus",
        )
        self.assertEqual(postfix_reply(Verdict("d.test", Action.DANE, "r"), self.postfix), b"OK dane")
        self.assertEqual(
            postfix_reply(Verdict("d.test", Action.DANE_ONLY, "r"), self.postfix), b"OK dane-only"
        )

    def test_never_bare_ok(self) -> None:
        """No verdict renders as a bare or empty OK (Postfix reads those as errors)."""
        states = [sts(m) for m in ("enforce", "testing", "none", None)]
        for profile in BUILTIN_PROFILES.values():
            for state in states:
                reply = self.reply(state, profile)
                self.assertNotIn(reply, (b"OK", b"OK "))
                self.assertTrue(reply == b"NOTFOUND " or reply.startswith(b"OK secure "))
