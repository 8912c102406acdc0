"""
The test world itself, without the daemon: when a daemon test fails, these
say whether nsd, unbound and nginx served what the scenario meant.
"""

from __future__ import annotations

import http.client
import socket
import ssl

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from cryptography import x509

from . import addresses, scenarios
from .case import IntegrationTestCase
from .pki import tlsa_rdata

pytestmark = pytest.mark.integration


class WorldTests(IntegrationTestCase):
    """nsd and nginx checked with dnspython and Python's ssl."""

    def fetch(self, domain: str) -> tuple[int, str, bytes]:
        """GET the policy URL of ``domain`` verified against the test CA: status, type, body."""
        host = "mta-sts." + domain
        context = ssl.create_default_context(cafile=str(self.world.ca.cert_path))
        with socket.create_connection((addresses.POLICY_ADDRESS, addresses.POLICY_PORT), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(
                    f"GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n"
                    "Connection: close\r\n\r\n".encode("ascii")
                )
                response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
                response.begin()
                return response.status, response.getheader("Content-Type", ""), response.read()

    def test_nsd_serves_txt(self) -> None:
        """nsd answers the scenario TXT records with a 1 s TTL."""
        r = self.world.nsd.query("_mta-sts.enforce.test", "TXT")
        self.assertEqual([rrset.ttl for rrset in r.answer], [1])
        self.assertEqual(
            [rdata.to_text() for rdata in r.answer[0]], ['"v=STSv1; id=20240101"']
        )

    def test_nsd_nxdomain(self) -> None:
        """nsd answers NXDOMAIN for a name not in the zone."""
        r = self.world.nsd.query("_mta-sts.norecord.test", "TXT")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)

    def test_nsd_update(self) -> None:
        """Nsd.update makes a changed record visible at once, and validating through unbound."""
        nsd = self.world.nsd
        nsd.update({"probe.fixture": ['TXT "one"']})
        try:
            r = nsd.query("probe.fixture.test", "TXT")
            self.assertEqual([rdata.to_text() for rdata in r.answer[0]], ['"one"'])
            r = self.resolve("probe.fixture.test", "TXT")
            self.assertEqual((r.rcode(), self.ad(r)), (dns.rcode.NOERROR, True))
            self.assertEqual(self.rdata(r, "TXT"), ['"one"'])
        finally:
            nsd.update({"probe.fixture": []})
        r = nsd.query("probe.fixture.test", "TXT")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)

    def test_nsd_update_child_zone(self) -> None:
        """Nsd.update puts an owner under a child's label into that child's (re-signed) zone."""
        nsd = self.world.nsd
        nsd.update({"probe.signed": ["A 127.0.0.7"]})
        try:
            r = nsd.query("probe.signed.test", "A", dnssec=True)
            self.assertTrue(r.flags & dns.flags.AA)
            self.assertEqual(self.rdata(r, "RRSIG")[0].split()[7], "signed.test.")
            r = self.resolve("probe.signed.test")
            self.assertEqual((self.rdata(r, "A"), self.ad(r)), (["127.0.0.7"], True))
        finally:
            nsd.update({"probe.signed": []})

    def test_nsd_signs_test_zone(self) -> None:
        """nsd serves test. with RRSIGs by the trust anchor's key, and NSEC denials."""
        nsd = self.world.nsd
        tag = str(nsd.signing_keys["test."].key_tag)
        r = nsd.query("_mta-sts.enforce.test", "TXT", dnssec=True)
        self.assertEqual([s.split()[6] for s in self.rdata(r, "RRSIG")], [tag])
        r = nsd.query("_mta-sts.norecord.test", "TXT", dnssec=True)
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)
        self.assertIn(dns.rdatatype.NSEC, [rrset.rdtype for rrset in r.authority])
        self.assertIn(f"test. DS {tag} 13 2 ", nsd.trust_anchor)

    def test_nsd_delegations(self) -> None:
        """test. publishes a DS for signed. and bogus. (not matching bogus.'s key) and none for insecure."""
        nsd = self.world.nsd
        ds = {zone: self.rdata(nsd.query(zone, "DS"), "DS") for zone in
              ["signed.test.", "insecure.test.", "bogus.test."]}
        self.assertEqual(ds["signed.test."], [nsd.signing_keys["signed.test."].ds])
        self.assertEqual(ds["insecure.test."], [])
        self.assertEqual(ds["bogus.test."], [nsd.ds_keys["bogus.test."].ds])
        self.assertNotEqual(nsd.ds_keys["bogus.test."].ds, nsd.signing_keys["bogus.test."].ds)

    def test_nginx_serves_policy(self) -> None:
        """nginx serves a policy as text/plain over TLS trusted through the test CA."""
        self.assertEqual(
            self.fetch("enforce.test"),
            (200, "text/plain", scenarios.policy("enforce", scenarios.ENFORCE_MX).encode()),
        )

    def test_nginx_defects(self) -> None:
        """The 404, 301, JSON and oversized hosts serve exactly their one defect."""
        self.assertEqual(self.fetch("notfound.test")[0], 404)
        self.assertEqual(self.fetch("redirect.test")[0], 301)
        self.assertEqual(self.fetch("json.test")[:2], (200, "application/json"))
        status, ctype, body = self.fetch("big.test")
        self.assertEqual((status, ctype, len(body)), (200, "text/plain", 70000))

    def test_nginx_bad_certificates(self) -> None:
        """The wrong-name and expired hosts fail certificate verification."""
        for domain, reason in [("wrongname.test", "Hostname mismatch"),
                               ("expired.test", "certificate has expired")]:
            with self.assertRaises(ssl.SSLCertVerificationError) as caught:
                self.fetch(domain)
            self.assertIn(reason, str(caught.exception))

    def test_nginx_set_policy(self) -> None:
        """Nginx.set_policy changes (and with None removes) what a host serves at once."""
        nginx = self.world.nginx
        try:
            nginx.set_policy("notfound.test", "changed\n")
            self.assertEqual(self.fetch("notfound.test")[::2], (200, b"changed\n"))
        finally:
            nginx.set_policy("notfound.test", None)
        self.assertEqual(self.fetch("notfound.test")[0], 404)


class ResolverTests(IntegrationTestCase):
    """unbound validates the world's zones and answers nothing from outside it."""

    def test_address(self) -> None:
        """The resolver listens where Postfix's resolv.conf can name it: port 53."""
        self.assertEqual(self.world.resolver, (addresses.RESOLVER_ADDRESS, 53))

    def test_signed_name_authenticated(self) -> None:
        """A name in the signed test. zone gets AD=1."""
        r = self.resolve("mx1.daneonly.test")
        self.assertEqual((r.rcode(), self.ad(r), self.rdata(r, "A")),
                         (dns.rcode.NOERROR, True, ["127.0.0.1"]))

    def test_signed_denial_authenticated(self) -> None:
        """A missing name and a missing TLSA RRset in test. are denied with AD=1."""
        r = self.resolve("missing.nxhost.test")
        self.assertEqual((r.rcode(), self.ad(r)), (dns.rcode.NXDOMAIN, True))
        r = self.resolve("_25._tcp.mx1.notlsa.test", "TLSA")
        self.assertEqual((r.rcode(), self.ad(r), r.answer), (dns.rcode.NXDOMAIN, True, []))

    def test_signed_child_authenticated(self) -> None:
        """A name in the signed child zone (a DS in test.) gets AD=1."""
        r = self.resolve("mx1.dane.signed.test")
        self.assertEqual((self.ad(r), self.rdata(r, "A")), (True, ["127.0.0.1"]))

    def test_insecure_child(self) -> None:
        """A name in insecure.test. (no DS) is answered with AD=0."""
        r = self.resolve("_25._tcp.mx1.dane.insecure.test", "TLSA")
        self.assertEqual((r.rcode(), self.ad(r)), (dns.rcode.NOERROR, False))
        self.assertEqual(self.rdata(r, "TLSA"), [self.world.certificates["mx"].tlsa()])

    def test_bogus_child(self) -> None:
        """A name in bogus.test. (DS matching no key) gets SERVFAIL."""
        r = self.resolve("mx1.dane.bogus.test")
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)

    def test_bogus_child_served(self) -> None:
        """nsd does serve bogus.test.'s data: only validation fails."""
        r = self.world.nsd.query("mx1.dane.bogus.test")
        self.assertEqual(self.rdata(r, "A"), ["127.0.0.1"])

    def test_unreachable_zone(self) -> None:
        """A name in servfail.test. (its nameserver never answers) gets SERVFAIL within seconds."""
        r = self.resolve("dane.servfail.test", "MX", timeout=5.0)
        self.assertEqual(r.rcode(), dns.rcode.SERVFAIL)

    def test_outside_names_answered_locally(self) -> None:
        """example.com and the root get a local, authoritative NXDOMAIN: nothing is forwarded."""
        for name in ["example.com", "."]:
            r = self.resolve(name, "NS")
            self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN, name)
            self.assertTrue(r.flags & dns.flags.AA, name)

    def test_tlsa_matches_certificate(self) -> None:
        """The DANE scenarios' TLSA records are the SPKI digests of the MX certificate and the CA."""
        pem = self.world.certificates["mx"].cert.read_bytes()
        end = b"-----END CERTIFICATE-----\n"
        leaf, ca = (x509.load_pem_x509_certificate(p + end) for p in pem.split(end)[:2])
        r = self.resolve("_25._tcp.mx1.daneonly.test", "TLSA")
        self.assertEqual(self.rdata(r, "TLSA"), [tlsa_rdata(3, 1, 1, leaf)])
        r = self.resolve("_25._tcp.mx2.daneonly.test", "TLSA")
        self.assertEqual(self.rdata(r, "TLSA"), [tlsa_rdata(2, 1, 1, ca)])
        self.assertEqual(ca, self.world.ca.certificate)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertEqual(
            sorted(names.value.get_values_for_type(x509.DNSName)), scenarios.DANE_MX_HOSTS
        )
