"""
The administrator's policy (overrides, exemptions, minimums) as Postfix's
postmap reads it from a real daemon evaluating the real test world, and as
`mxpolicyd explain` shows it.
"""

from __future__ import annotations

import datetime
import json

import pytest

from .case import NOT_FOUND, IntegrationTestCase
from .scenarios import ENFORCE

pytestmark = pytest.mark.integration

FORCED = "encrypt protocols=>=TLSv1.2"

ADMIN = {
    "policy": {"min_tls_level": "none"},
    # The evidence says enforce: the exemption answers NOTFOUND all the same.
    'domain."enforce.test"': {"exempt": True, "expires": datetime.date(2999, 12, 31)},
    # No record at all: the forced policy is answered.
    'domain."norecord.test"': {"postfix": FORCED},
    # A mode none policy is below this domain's minimum: the mail waits.
    'domain."none.test"': {"min_tls_level": "authenticated"},
    # dane-only evidence meets the minimum.
    'domain."daneonly.test"': {"min_tls_level": "authenticated", "min_mx_level": "dnssec"},
}


class AdminPolicyTests(IntegrationTestCase):
    """One daemon with [policy] and [domain."..."] entries."""

    def setUp(self) -> None:
        self.daemon = self.start_daemon(None, ADMIN)

    def test_exempt(self) -> None:
        """An exempt domain is NOTFOUND although its evidence is an enforce policy."""
        self.assertAnswer("enforce.test", NOT_FOUND)
        r = self.daemon.cli("explain", "enforce.test", "--json")
        result = json.loads(r.stdout)
        self.assertEqual(result["mta_sts"]["policy"]["mode"], "enforce")
        self.assertEqual(result["postfix"], "NOTFOUND")
        self.assertEqual(result["admin"]["evidence"], "sts-enforce")
        self.assertTrue(result["admin"]["override"]["exempt"])

    def test_exemption_applies_only_to_its_domain(self) -> None:
        """A subdomain of an exempt domain (no subdomains = true) is answered from its evidence."""
        self.assertAnswer("ENFORCE.TEST", NOT_FOUND)
        self.assertNotEqual(self.answer("sub.enforce.test"), ENFORCE)

    def test_forced_policy(self) -> None:
        """A forced Postfix policy is answered verbatim for a domain without any policy."""
        self.assertAnswer("norecord.test", FORCED)

    def test_minimum_not_reached(self) -> None:
        """Evidence below the domain's minimum TLS level answers TEMP, naming the minimum."""
        result = self.daemon.postmap("none.test")
        self.assertEqual(result.code, 1)
        self.assertIn("minimum TLS level authenticated", result.stderr)
        r = self.daemon.cli("explain", "none.test", "--json")
        admin = json.loads(r.stdout)["admin"]
        # test. is DNSSEC-signed, so the MX set is secure; no TLSA, no enforce.
        self.assertEqual((admin["mx_level"], admin["tls_level"]), ("dnssec", "none"))
        self.assertEqual(admin["minimum"]["tls"], "authenticated")

    def test_minimum_reached(self) -> None:
        """dane-only evidence reaches MX level dnssec and TLS level authenticated."""
        self.assertAnswer("daneonly.test", "dane-only")
        r = self.daemon.cli("explain", "daneonly.test", "--json")
        admin = json.loads(r.stdout)["admin"]
        self.assertEqual((admin["mx_level"], admin["tls_level"]), ("dnssec", "authenticated"))
