"""
The test world itself, without the daemon: when a daemon test fails, these
say whether nsd and nginx served what the scenario meant.
"""

from __future__ import annotations

import http.client
import socket
import ssl

import dns.rcode
import pytest

from . import scenarios
from .case import IntegrationTestCase

pytestmark = pytest.mark.integration


class WorldTests(IntegrationTestCase):
    """nsd and nginx checked with dnspython and Python's ssl."""

    def fetch(self, domain: str) -> tuple[int, str, bytes]:
        """GET the policy URL of ``domain`` verified against the test CA: status, type, body."""
        host = "mta-sts." + domain
        context = ssl.create_default_context(cafile=str(self.world.ca.cert_path))
        with socket.create_connection((scenarios.POLICY_ADDRESS, 443), timeout=5) as raw:
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
        """Nsd.update makes a changed record visible at once."""
        nsd = self.world.nsd
        nsd.update({"probe.fixture": ['TXT "one"']})
        try:
            r = nsd.query("probe.fixture.test", "TXT")
            self.assertEqual([rdata.to_text() for rdata in r.answer[0]], ['"one"'])
        finally:
            nsd.update({"probe.fixture": []})
        r = nsd.query("probe.fixture.test", "TXT")
        self.assertEqual(r.rcode(), dns.rcode.NXDOMAIN)

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
