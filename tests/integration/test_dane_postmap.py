"""
DANE answers as Postfix's postmap reads them over socketmap, from a real
mxpolicyd asking a real validating resolver (unbound) about DNSSEC-signed,
insecure, bogus and unreachable zones served by nsd.
"""

from __future__ import annotations

import json
import time

import pytest

from .case import NOT_FOUND, IntegrationTestCase
from .daemon import Daemon, PostmapResult
from .scenarios import DANE, DANE_ONLY, enforce_answer, mx_of

pytestmark = pytest.mark.integration


class DaneTestCase(IntegrationTestCase):
    def assertTemp(self, domain: str, daemon: Daemon | None = None) -> PostmapResult:
        """postmap fails the lookup (exit 1, nothing on stdout) for a TEMP answer."""
        result = (daemon or self.daemon).postmap(domain)
        self.assertEqual((result.code, result.stdout), (1, ""), f"postmap -q {domain}: {result}")
        self.assertIn("temporary", result.stderr, result)
        self.assertIn("query error", result.stderr, result)
        return result

    def assertSettled(self, domain: str, expected: str) -> None:
        """The answer is ``expected``, and still is once the evaluation is cached."""
        self.assertAnswer(domain, expected)
        time.sleep(0.3)
        self.assertAnswer(domain, expected)


class DaneAnswerTests(DaneTestCase):
    """One daemon evaluates every static DANE scenario of the test world."""

    shared = True

    def test_usable_tlsa_on_every_mx(self) -> None:
        """Secure usable TLSA (DANE-EE on one host, DANE-TA on the other) on both MX hosts: dane-only."""
        self.assertSettled("daneonly.test", DANE_ONLY)

    def test_key_folded(self) -> None:
        """The DANE verdict is found for the key in upper case with a trailing dot."""
        self.assertAnswer("DANEONLY.TEST.", DANE_ONLY)

    def test_tlsa_matching_no_certificate(self) -> None:
        """Usable TLSA that matches no certificate is still dane-only: Postfix checks certificates."""
        self.assertAnswer("mismatch.test", DANE_ONLY)

    def test_usable_tlsa_on_some_mx(self) -> None:
        """One MX host with usable TLSA and one with none: dane."""
        self.assertSettled("danesome.test", DANE)

    def test_only_unusable_tlsa(self) -> None:
        """Only PKIX-TA/PKIX-EE usages and a 20-byte SHA-256 digest: dane, never dane-only."""
        self.assertSettled("unusable.test", DANE)

    def test_secure_mx_without_tlsa(self) -> None:
        """A signed MX set whose host has no TLSA is no DANE: not found."""
        self.assertSettled("notlsa.test", NOT_FOUND)

    def test_secure_mx_without_tlsa_falls_back_to_mta_sts(self) -> None:
        """A signed MX set without TLSA and an enforce policy: the MTA-STS answer."""
        self.assertSettled("notlsasts.test", enforce_answer(mx_of("notlsasts.test")))

    def test_dane_wins_over_mta_sts(self) -> None:
        """Usable TLSA on every MX and an MTA-STS enforce policy: dane-only."""
        self.assertSettled("danests.test", DANE_ONLY)

    def test_chain_of_trust_through_ds(self) -> None:
        """A domain in a signed child zone (DS in test.) with usable TLSA: dane-only."""
        self.assertSettled("dane.signed.test", DANE_ONLY)

    def test_insecure_delegation(self) -> None:
        """TLSA records in an unsigned child zone are ignored: not found."""
        self.assertSettled("dane.insecure.test", NOT_FOUND)

    def test_bogus_zone(self) -> None:
        """A domain in a zone that fails validation: TEMP, asked again too."""
        self.assertTemp("dane.bogus.test")
        time.sleep(0.3)
        self.assertTemp("dane.bogus.test")

    def test_bogus_mx_host(self) -> None:
        """A signed MX set one of whose hosts is in the bogus zone: TEMP."""
        self.assertTemp("bogushost.test")

    def test_servfail_zone(self) -> None:
        """A domain whose zone's nameserver never answers (SERVFAIL from unbound): TEMP."""
        self.assertTemp("dane.servfail.test")

    def test_servfail_mx_host(self) -> None:
        """A signed MX set one of whose hosts cannot be resolved (SERVFAIL): TEMP."""
        self.assertTemp("servfailhost.test")

    def test_mx_host_cname(self) -> None:
        """An MX host that is a CNAME, TLSA only at the CNAME's target: dane-only."""
        self.assertSettled("danecname.test", DANE_ONLY)

    def test_mx_host_cname_tlsa_at_original_name(self) -> None:
        """An MX host that is a CNAME, TLSA only at the original name: dane-only."""
        self.assertSettled("cnameorig.test", DANE_ONLY)

    def test_implicit_mx(self) -> None:
        """No MX record (secure NODATA), A and TLSA at the domain itself: dane-only."""
        self.assertSettled("implicit.test", DANE_ONLY)

    def test_mx_host_with_insecure_address(self) -> None:
        """A host whose address is in the unsigned zone is not DANE, its TLSA notwithstanding: dane."""
        self.assertSettled("insecurehost.test", DANE)

    def test_mx_host_nxdomain(self) -> None:
        """An MX host that does not exist beside one with usable TLSA: dane, not TEMP."""
        self.assertSettled("nxhost.test", DANE)

    def test_many_keys_one_connection(self) -> None:
        """postmap -q - gets each DANE domain's own answer over one connection."""
        keys = ["daneonly.test", "danesome.test", "notlsa.test", "danests.test",
                "dane.insecure.test", "implicit.test"]
        result = self.daemon.postmap_many(keys)
        expected = (
            f"daneonly.test\t{DANE_ONLY}\ndanesome.test\t{DANE}\n"
            f"danests.test\t{DANE_ONLY}\nimplicit.test\t{DANE_ONLY}\n"
        )
        self.assertEqual((result.code, result.stdout, result.stderr), (0, expected, ""))

    def test_explain_json(self) -> None:
        """`mxpolicyd explain --json` shows the secure MX set, each host's address security and TLSA."""
        r = self.daemon.cli("explain", "daneonly.test", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        result = json.loads(r.stdout)
        self.assertEqual(result["postfix"], "OK dane-only")
        self.assertEqual(result["action"], "dane-only")
        dane = result["dane"]
        self.assertEqual((dane["status"], dane["mx_secure"], dane["implicit_mx"]),
                         ("dane-only", True, False))
        hosts = {h["name"]: h for h in dane["hosts"]}
        self.assertEqual(sorted(hosts), ["mx1.daneonly.test", "mx2.daneonly.test"])
        expected_tlsa = {
            "mx1.daneonly.test": self.world.certificates["mx"].tlsa(),
            "mx2.daneonly.test": self.world.ca.tlsa(),
        }
        for name, host in hosts.items():
            self.assertEqual((host["address_secure"], host["state"]), (True, "usable"), host)
            self.assertEqual(
                [(t["usage"], t["selector"], t["mtype"], t["data"], t["usable"])
                 for t in host["tlsa"]],
                [tuple(int(f) for f in expected_tlsa[name].split()[:3])
                 + (expected_tlsa[name].split()[3], True)],
            )

    def test_explain_json_unusable(self) -> None:
        """`mxpolicyd explain --json` marks PKIX usages and a short digest unusable."""
        r = self.daemon.cli("explain", "unusable.test", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        result = json.loads(r.stdout)
        self.assertEqual(result["postfix"], "OK dane")
        hosts = {h["name"]: h for h in result["dane"]["hosts"]}
        self.assertEqual({n: h["state"] for n, h in hosts.items()},
                         {"mx1.unusable.test": "unusable", "mx2.unusable.test": "unusable"})

        def tlsa(host: str) -> list[tuple[int, int, int, int, bool]]:
            return [(t["usage"], t["selector"], t["mtype"], len(t["data"]) // 2, t["usable"])
                    for t in hosts[host]["tlsa"]]

        self.assertEqual(sorted(tlsa("mx1.unusable.test")),
                         [(0, 0, 1, 32, False), (1, 1, 1, 32, False)])
        # Newer dnspython (2.9) refuses to parse a digest of the wrong length: the
        # record is then reported as malformed rather than listed.
        short = hosts["mx2.unusable.test"]
        if short["tlsa"]:
            self.assertEqual(tlsa("mx2.unusable.test"), [(3, 1, 1, 20, False)])
        else:
            self.assertIn("malformed", short["error"])


class DaneChangeTests(DaneTestCase):
    """Daemons of their own, for dead DNS, deadlines and zone changes."""

    def test_dns_timeout_is_temp(self) -> None:
        """With DNS dead and nothing cached, the DANE state is unknown: TEMP, not a fallback."""
        daemon = self.start_daemon(None, self.world.dead_dns_config())
        started = time.monotonic()
        self.assertTemp("daneonly.test", daemon)
        self.assertTemp("notlsa.test", daemon)
        self.assertLess(time.monotonic() - started, 10.0)

    def test_deadline_with_dane_pending_is_temp(self) -> None:
        """At the lookup deadline with the DANE lookups still running the answer is TEMP."""
        daemon = self.start_daemon(
            None,
            self.world.dead_dns_config(),
            {"dns": {"timeout": 20.0, "attempts": 1}, "lookup": {"deadline": 1.0}},
        )
        started = time.monotonic()
        self.assertTemp("danesome.test", daemon)
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5.0)

    def test_dane_disabled(self) -> None:
        """With DANE off, TLSA is ignored: MTA-STS answers, and a DANE-only domain is not found."""
        daemon = self.start_daemon(None, self.world.no_dane_config())
        self.assertAnswer("danests.test", enforce_answer(mx_of("danests.test")), daemon=daemon)
        self.assertAnswer("daneonly.test", NOT_FOUND, daemon=daemon)
        self.assertAnswer("dane.bogus.test", NOT_FOUND, daemon=daemon)

    def test_tlsa_published_and_withdrawn(self) -> None:
        """A TLSA record added to the zone makes dane-only; removing it makes not found again."""
        daemon = self.start_daemon()
        owner = "_25._tcp.mx1.tlsachange"
        nsd = self.world.nsd
        self.assertAnswer("tlsachange.test", NOT_FOUND, daemon=daemon)
        try:
            nsd.update({owner: [f"TLSA {self.world.certificates['mx'].tlsa()}"]})
            seen = self.poll_answers("tlsachange.test", DANE_ONLY, 10.0, daemon=daemon)
            self.assertEqual(seen[-1], DANE_ONLY, f"answers after publishing TLSA: {seen}")
            self.assertLessEqual(set(seen), {NOT_FOUND, DANE_ONLY})
        finally:
            nsd.update({owner: []})
        seen = self.poll_answers("tlsachange.test", NOT_FOUND, 10.0, daemon=daemon)
        self.assertEqual(seen[-1], NOT_FOUND, f"answers after withdrawing TLSA: {seen}")
        self.assertLessEqual(set(seen), {NOT_FOUND, DANE_ONLY})

