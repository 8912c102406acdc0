"""Tests for L{mxpolicyd.evidence.dane}: RFC 7672 evaluation over a scripted resolver."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import dns.rcode
import dns.rdatatype
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.evidence.dane import (
    DaneState,
    DaneStatus,
    HostEvidence,
    HostState,
    classify,
    usable,
)
from mxpolicyd.evidence.dane_lookups import DaneEvaluator
from mxpolicyd.evidence.evaluator import Evaluator
from mxpolicyd.evidence.sts_discovery import StsEvaluator
from mxpolicyd.policy.verdict import Action
from mxpolicyd.tap import first_answers

from .fakes import FakeFetcher, FakeResolver, answer, empty

MX, A, AAAA, TLSA = (dns.rdatatype.MX, dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.TLSA)
D = "example.test"
SHA256 = "aa" * 32
GOOD = "3 1 1 " + SHA256


class UsableTests(SynchronousTestCase):
    def test_table(self) -> None:
        """Only usages 2/3, selectors 0/1, matching types 0/1/2 of the right length are usable."""
        table = [
            ((3, 1, 1, 32), True),
            ((2, 0, 2, 64), True),
            ((3, 0, 0, 300), True),
            ((0, 1, 1, 32), False),
            ((1, 1, 1, 32), False),
            ((4, 1, 1, 32), False),
            ((3, 2, 1, 32), False),
            ((3, 1, 3, 32), False),
            ((3, 1, 1, 20), False),
            ((3, 1, 2, 32), False),
            ((3, 1, 0, 0), False),
        ]
        for (u, s, m, n), expected in table:
            self.assertEqual(usable(u, s, m, b"x" * n), expected, (u, s, m, n))


def host(state: str, name: str = "mx.test") -> HostEvidence:
    return HostEvidence(name, 10, state, error="boom" if state == HostState.INDETERMINATE else None)


class ClassifyTests(SynchronousTestCase):
    def test_table(self) -> None:
        """The domain status follows from its hosts' states."""
        table = [
            ((HostState.USABLE, HostState.USABLE), DaneStatus.DANE_ONLY),
            ((HostState.USABLE,), DaneStatus.DANE_ONLY),
            ((HostState.USABLE, HostState.UNUSABLE), DaneStatus.DANE),
            ((HostState.UNUSABLE, HostState.UNUSABLE), DaneStatus.DANE),
            ((HostState.USABLE, HostState.NO_TLSA), DaneStatus.DANE),
            ((HostState.USABLE, HostState.INSECURE), DaneStatus.DANE),
            ((HostState.USABLE, HostState.NO_ADDRESS), DaneStatus.DANE),
            ((HostState.NO_TLSA, HostState.INSECURE), DaneStatus.NONE),
            ((HostState.NO_ADDRESS,), DaneStatus.NONE),
            ((), DaneStatus.NONE),
            ((HostState.USABLE, HostState.INDETERMINATE), DaneStatus.TEMP),
            ((HostState.NO_TLSA, HostState.INDETERMINATE), DaneStatus.TEMP),
        ]
        for states, expected in table:
            status, reason = classify(tuple(host(s, "h%d" % i) for i, s in enumerate(states)))
            self.assertEqual(status, expected, states)
            self.assertTrue(reason)


class DaneEvaluatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.dns = FakeResolver()
        self.evaluator = DaneEvaluator(self.clock, self.dns, ttl_min=60, ttl_max=3600)

    def mx(self, *targets: str, secure: bool = True, ttl: int = 300) -> None:
        self.dns.answers[(D, MX)] = answer(D, MX, *targets, secure=secure, ttl=ttl)

    def host(self, name: str, tlsa: tuple[str, ...] = (GOOD,), secure: bool = True,
             tlsa_secure: bool = True, ttl: int = 300) -> None:
        self.dns.answers[(name, A)] = answer(name, A, "192.0.2.1", secure=secure, ttl=ttl)
        self.dns.answers[(name, AAAA)] = empty(name, AAAA, secure=secure)
        if tlsa:
            self.dns.answers[("_25._tcp." + name, TLSA)] = answer(
                "_25._tcp." + name, TLSA, *tlsa, secure=tlsa_secure, ttl=ttl)

    def evaluate(self) -> DaneState:
        return self.successResultOf(self.evaluator.evaluate(D))

    def test_dane_only(self) -> None:
        """Secure MX whose every host has secure usable TLSA is dane-only."""
        self.mx("10 mx1.example.test.", "20 mx2.example.test.")
        self.host("mx1.example.test")
        self.host("mx2.example.test", tlsa=("2 0 2 " + "bb" * 64,))
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE_ONLY)
        self.assertEqual([h.name for h in state.hosts], ["mx1.example.test", "mx2.example.test"])
        self.assertTrue(state.mx_secure)
        self.assertEqual(state.hosts[0].tlsa[0].data, SHA256)

    def test_some_hosts(self) -> None:
        """TLSA on one of two hosts is dane."""
        self.mx("10 mx1.example.test.", "20 mx2.example.test.")
        self.host("mx1.example.test")
        self.host("mx2.example.test", tlsa=())
        self.assertEqual(self.evaluate().status, DaneStatus.DANE)

    def test_unusable_only(self) -> None:
        """Only unusable TLSA (usage 1, usage 0) is dane: TLS required, unauthenticated."""
        self.mx("10 mx1.example.test.")
        self.host("mx1.example.test", tlsa=("1 1 1 " + SHA256, "0 0 1 " + SHA256))
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE)
        self.assertEqual(state.hosts[0].state, HostState.UNUSABLE)

    def test_malformed_tlsa_unusable(self) -> None:
        """TLSA records the DNS library could not parse count as unusable, not as none."""
        self.mx("10 mx1.example.test.")
        self.host("mx1.example.test", tlsa=())
        name = "_25._tcp.mx1.example.test"
        self.dns.answers[(name, TLSA)] = replace(empty(name, TLSA), malformed=1)
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE)
        self.assertEqual(state.hosts[0].state, HostState.UNUSABLE)
        self.assertIn("malformed", state.hosts[0].error or "")

    def test_secure_mx_no_tlsa(self) -> None:
        """A signed MX set with no TLSA anywhere leaves the domain to MTA-STS."""
        self.mx("10 mx1.example.test.")
        self.host("mx1.example.test", tlsa=())
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.NONE)
        self.assertEqual(state.hosts[0].state, HostState.NO_TLSA)

    def test_insecure_mx(self) -> None:
        """An unsigned MX RRset means no DANE, and no host lookups."""
        self.mx("10 mx1.example.test.", secure=False)
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.NONE)
        self.assertFalse(state.mx_secure)
        self.assertEqual(self.dns.queries, [(D, MX)])

    def test_insecure_host(self) -> None:
        """A host with unsigned addresses is not DANE; its TLSA is never asked."""
        self.mx("10 mx1.example.test.", "20 mx2.example.test.")
        self.host("mx1.example.test")
        self.host("mx2.example.test", secure=False)
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE)
        self.assertEqual(state.hosts[1].state, HostState.INSECURE)
        self.assertNotIn(("_25._tcp.mx2.example.test", TLSA), self.dns.queries)

    def test_insecure_tlsa_ignored(self) -> None:
        """TLSA records without the AD bit are ignored."""
        self.mx("10 mx1.example.test.")
        self.host("mx1.example.test", tlsa_secure=False)
        self.assertEqual(self.evaluate().status, DaneStatus.NONE)

    def test_nxdomain_host(self) -> None:
        """An MX host that does not exist does not make the domain TEMP."""
        self.mx("10 mx1.example.test.", "20 gone.example.test.")
        self.host("mx1.example.test")
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE)
        self.assertEqual(state.hosts[1].state, HostState.NO_ADDRESS)

    def test_servfail_mx(self) -> None:
        """SERVFAIL (bogus) on the MX lookup is TEMP, re-checked after the floor."""
        self.dns.fail(D, MX, "servfail")
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.TEMP)
        self.assertIn("SERVFAIL", state.reason)
        self.assertEqual(state.due_at, self.clock.seconds() + 60)

    def test_timeout_host(self) -> None:
        """A timeout on a host's address is indeterminate: TEMP."""
        self.mx("10 mx1.example.test.", "20 mx2.example.test.")
        self.host("mx1.example.test")
        self.dns.fail("mx2.example.test", A, "timeout")
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.TEMP)
        self.assertIn("mx2.example.test", state.reason)

    def test_servfail_tlsa(self) -> None:
        """A failing TLSA lookup of a secure host is indeterminate: TEMP."""
        self.mx("10 mx1.example.test.")
        self.host("mx1.example.test", tlsa=())
        self.dns.fail("_25._tcp.mx1.example.test", TLSA, "servfail")
        self.assertEqual(self.evaluate().status, DaneStatus.TEMP)

    def test_implicit_mx(self) -> None:
        """Secure NODATA for MX makes the domain its own MX host."""
        self.dns.answers[(D, MX)] = empty(D, MX)
        self.host(D)
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE_ONLY)
        self.assertTrue(state.implicit_mx)
        self.assertEqual(state.hosts[0].name, D)

    def test_nxdomain_domain(self) -> None:
        """A domain that does not exist has no DANE."""
        self.dns.answers[(D, MX)] = empty(D, MX, rcode=dns.rcode.NXDOMAIN)
        self.assertEqual(self.evaluate().status, DaneStatus.NONE)

    def test_null_mx(self) -> None:
        """A null MX (RFC 7505) has no DANE."""
        self.mx("0 .")
        self.assertEqual(self.evaluate().status, DaneStatus.NONE)

    def test_cname_host(self) -> None:
        """TLSA is asked at the CNAME-expanded name first, then at the original."""
        self.mx("10 mx.example.test.")
        self.dns.answers[("mx.example.test", A)] = answer(
            "mx.example.test", A, "192.0.2.1", canonical="real.example.net")
        self.dns.answers[("mx.example.test", AAAA)] = empty("mx.example.test", AAAA)
        self.dns.answers[("_25._tcp.real.example.net", TLSA)] = answer(
            "_25._tcp.real.example.net", TLSA, GOOD)
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE_ONLY)
        self.assertEqual(state.hosts[0].tlsa_name, "_25._tcp.real.example.net")

    def test_cname_host_fallback(self) -> None:
        """Without TLSA at the CNAME target, the original name's TLSA is used."""
        self.mx("10 mx.example.test.")
        self.dns.answers[("mx.example.test", A)] = answer(
            "mx.example.test", A, "192.0.2.1", canonical="real.example.net")
        self.dns.answers[("mx.example.test", AAAA)] = empty("mx.example.test", AAAA)
        self.dns.answers[("_25._tcp.mx.example.test", TLSA)] = answer(
            "_25._tcp.mx.example.test", TLSA, GOOD)
        state = self.evaluate()
        self.assertEqual(state.status, DaneStatus.DANE_ONLY)
        self.assertEqual(state.hosts[0].tlsa_name, "_25._tcp.mx.example.test")
        self.assertEqual(self.dns.queries[-2:], [("_25._tcp.real.example.net", TLSA),
                                                 ("_25._tcp.mx.example.test", TLSA)])

    def test_ttl_is_minimum(self) -> None:
        """The result is due after the smallest TTL seen, clamped."""
        self.mx("10 mx1.example.test.", ttl=3000)
        self.host("mx1.example.test", ttl=120)
        self.assertEqual(self.evaluate().due_at, self.clock.seconds() + 60)  # AAAA NODATA: 60
        self.dns.answers[("mx1.example.test", AAAA)] = empty("mx1.example.test", AAAA, ttl=500)
        self.assertEqual(self.evaluate().due_at, self.clock.seconds() + 120)

    def test_round_trip(self) -> None:
        """A DANE state survives JSON as the store keeps it."""
        self.mx("10 mx1.example.test.", "20 mx2.example.test.")
        self.host("mx1.example.test")
        self.host("mx2.example.test", secure=False)
        state = self.evaluate()
        self.assertEqual(DaneState.from_json(state.to_json()), state)
        self.assertRaises(ValueError, DaneState.from_json, {"status": "bogus"})
        self.assertRaises(ValueError, DaneState.from_json, {"status": "dane", "hosts": [{}]})


class CombinedEvaluatorTests(SynchronousTestCase):
    """MTA-STS and DANE together: parallel lookups and the early DANE answer."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.dns = FakeResolver()
        self.fetcher = FakeFetcher()
        self.evaluator = Evaluator(
            StsEvaluator(self.clock, self.dns, self.fetcher),
            DaneEvaluator(self.clock, self.dns),
        )

    def test_parallel(self) -> None:
        """The DANE lookups start while the MTA-STS lookup is still pending."""
        self.dns.answers[("_mta-sts." + D, dns.rdatatype.TXT)] = Deferred()
        self.evaluator.evaluate(D, None)
        self.assertIn((D, MX), self.dns.queries)

    def test_pending_answers(self) -> None:
        """While MTA-STS is pending: TEMP before DANE is known, DANE's verdict once it is."""
        txt: Deferred[object] = Deferred()
        mx: Deferred[object] = Deferred()
        self.dns.answers[("_mta-sts." + D, dns.rdatatype.TXT)] = txt
        self.dns.answers[(D, MX)] = mx
        d = self.evaluator.evaluate(D, None)
        self.assertEqual(first_answers(self.evaluator)(D).action, Action.TEMP)
        mx.callback(answer(D, MX, "10 mx.example.test.", secure=False))
        self.assertEqual(first_answers(self.evaluator)(D).action, Action.NONE)
        txt.callback(empty("_mta-sts." + D, dns.rdatatype.TXT))
        state = self.successResultOf(d)
        assert state.dane is not None
        self.assertEqual(state.dane.status, DaneStatus.NONE)
        self.assertEqual(first_answers(self.evaluator)(D).action, Action.TEMP)


class GraceTests(SynchronousTestCase):
    """Indeterminate re-checks keep a conclusive result for a while."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.dns = FakeResolver()
        self.evaluator = DaneEvaluator(self.clock, self.dns, grace=3600)
        self.dns.answers[(D, MX)] = answer(D, MX, "10 mx.example.test.")
        self.dns.answers[("mx.example.test", A)] = answer("mx.example.test", A, "192.0.2.1")
        self.dns.answers[("mx.example.test", AAAA)] = empty("mx.example.test", AAAA)
        self.dns.answers[("_25._tcp.mx.example.test", TLSA)] = answer(
            "_25._tcp.mx.example.test", TLSA, GOOD)
        self.prior = self.successResultOf(self.evaluator.evaluate(D))
        self.dns.fail(D, MX, "timeout")

    def test_kept_within_grace(self) -> None:
        """A timeout on re-check keeps the prior dane-only, re-checked after the floor."""
        self.clock.advance(3599)
        state = self.successResultOf(self.evaluator.evaluate(D, self.prior))
        self.assertEqual(state.status, DaneStatus.DANE_ONLY)
        self.assertEqual(state.checked_at, self.prior.checked_at)
        self.assertEqual(state.due_at, self.clock.seconds() + 60)

    def test_temp_after_grace(self) -> None:
        """Past the grace period the indeterminate result stands: TEMP."""
        self.clock.advance(3600)
        state = self.successResultOf(self.evaluator.evaluate(D, self.prior))
        self.assertEqual(state.status, DaneStatus.TEMP)

    def test_no_prior(self) -> None:
        """With nothing known before, an indeterminate check is TEMP."""
        self.assertEqual(self.successResultOf(self.evaluator.evaluate(D)).status, DaneStatus.TEMP)


class DaneLogTests(SynchronousTestCase):
    """What a failed DANE evaluation logs: the action taken, once per resolver outage."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.dns = FakeResolver()
        self.evaluator = DaneEvaluator(self.clock, self.dns, grace=3600)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def secure(self, domain: str) -> DaneState:
        """A dane-only domain, evaluated and cached now."""
        mx = "mx." + domain
        self.dns.answers[(domain, MX)] = answer(domain, MX, "10 %s." % mx)
        self.dns.answers[(mx, A)] = answer(mx, A, "192.0.2.1")
        self.dns.answers[(mx, AAAA)] = empty(mx, AAAA)
        self.dns.answers[("_25._tcp." + mx, TLSA)] = answer("_25._tcp." + mx, TLSA, GOOD)
        return self.successResultOf(self.evaluator.evaluate(domain))

    def lines(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events
                if e.get("log_level") == level
                and str(e.get("log_namespace", "")).startswith("mxpolicyd.evidence.dane")]

    def test_kept_result_logged_as_kept(self) -> None:
        """An indeterminate re-check within the grace says it keeps the old result, and until when."""
        prior = self.secure(D)
        self.dns.fail(D, MX, "timeout")
        self.clock.advance(100)
        state = self.successResultOf(self.evaluator.evaluate(D, prior))
        self.assertEqual(state.status, DaneStatus.DANE_ONLY)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("DANE evaluation of example.test failed: MX lookup failed", warning)
        self.assertIn("keeping the dane-only result of 1970-01-01 00:16:40 UTC "
                      "until 1970-01-01 01:16:40 UTC at the latest", warning)
        self.assertNotIn("TEMP", warning)

    def test_temp_logged_as_temp(self) -> None:
        """Past the grace the same failure says it answers TEMP, and keeps nothing."""
        prior = self.secure(D)
        self.dns.fail(D, MX, "timeout")
        self.clock.advance(3600)
        state = self.successResultOf(self.evaluator.evaluate(D, prior))
        self.assertEqual(state.status, DaneStatus.TEMP)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("answering TEMP", warning)
        self.assertNotIn("keeping", warning.split("; further DNS")[0])

    def test_outage_warns_once(self) -> None:
        """A dead resolver: one warning for 50 failed re-checks, the rest at debug, one info line when DNS answers."""
        domains = ["d%d.test" % i for i in range(50)]
        priors = {d: self.secure(d) for d in domains}
        del self.events[:]
        for d in domains:
            self.dns.fail(d, MX, "timeout")
        self.clock.advance(60)
        for d in domains:
            self.assertEqual(self.successResultOf(
                self.evaluator.evaluate(d, priors[d])).status, DaneStatus.DANE_ONLY)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("d0.test", warning)
        self.assertIn("further DNS timeout failures that keep a cached result "
                      "are logged at debug", warning)
        debug = self.lines(LogLevel.debug)
        self.assertEqual(len(debug), 49)
        self.assertIn("DANE evaluation of d49.test failed", debug[-1])
        self.assertIn("keeping the dane-only result", debug[-1])
        self.assertEqual(self.lines(LogLevel.info), [])

        self.secure("back.test")
        [recovered] = self.lines(LogLevel.info)
        self.assertIn("DNS answers again (back.test resolved) after 50 failed DANE "
                      "evaluations since 1970-01-01 00:17:40 UTC (DNS timeout)", recovered)
        # The outage is over: the next failure is news again.
        self.successResultOf(self.evaluator.evaluate("d0.test", priors["d0.test"]))
        self.assertEqual(len(self.lines(LogLevel.warn)), 2)

    def test_first_temp_of_outage_warns(self) -> None:
        """During an outage the first domain answered TEMP gets its own warning; later ones debug."""
        prior = self.secure(D)
        for d in (D, "new1.test", "new2.test"):
            self.dns.fail(d, MX, "servfail")
        self.successResultOf(self.evaluator.evaluate(D, prior))
        self.successResultOf(self.evaluator.evaluate("new1.test"))
        self.successResultOf(self.evaluator.evaluate("new2.test"))
        warnings = self.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 2)
        self.assertIn("keeping the dane-only result", warnings[0])
        self.assertIn("DANE evaluation of new1.test failed", warnings[1])
        self.assertIn("answering TEMP", warnings[1])
        self.assertIn("SERVFAIL failures that answer TEMP", warnings[1])
        [debug] = self.lines(LogLevel.debug)
        self.assertIn("new2.test", debug)

    def test_lone_failure_no_recovery_line(self) -> None:
        """One failure, then answers: the warning alone, no recovery line."""
        self.dns.fail("bogus.test", MX, "servfail")
        self.successResultOf(self.evaluator.evaluate("bogus.test"))
        self.secure(D)
        self.successResultOf(self.evaluator.evaluate("bogus.test"))
        self.assertEqual(len(self.lines(LogLevel.warn)), 2)
        self.assertEqual(self.lines(LogLevel.info), [])

    def test_domain_failures_warn_each_time(self) -> None:
        """Failures about the domain (CNAME loop, too many MX hosts) warn every time."""
        evaluator = DaneEvaluator(self.clock, self.dns, max_hosts=1)
        self.dns.fail("loop.test", MX, "cname-loop")
        self.dns.answers[("many.test", MX)] = answer(
            "many.test", MX, "10 mx1.many.test.", "20 mx2.many.test.")
        for _ in range(3):
            for d in ("loop.test", "many.test"):
                self.assertEqual(self.successResultOf(evaluator.evaluate(d)).status, DaneStatus.TEMP)
        warnings = self.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 6)
        self.assertIn("CNAME loop", warnings[0])
        self.assertIn("2 MX hosts, more than the 1 evaluated", warnings[1])
        self.assertEqual(self.lines(LogLevel.debug), [])

    def test_host_failure_counts_as_outage(self) -> None:
        """A host's address timeout with the MX answered joins the outage like an MX timeout."""
        for d in ("h1.test", "h2.test"):
            self.dns.answers[(d, MX)] = answer(d, MX, "10 mx.%s." % d)
            self.dns.fail("mx." + d, A, "timeout")
            self.assertEqual(self.successResultOf(self.evaluator.evaluate(d)).status, DaneStatus.TEMP)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("DNSSEC lookup for MX host mx.h1.test failed", warning)
        self.assertEqual(len(self.lines(LogLevel.debug)), 1)
