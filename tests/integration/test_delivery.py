"""
The daemon's answers proved by real mail: Postfix's chrooted smtp(8) asks
mxpolicyd for each recipient domain's TLS policy, resolves MX, address and
TLSA records through the validating resolver, and delivers (or not) to SMTP
sinks on loopback port 25 that present certificates from the test CA.
"""

from __future__ import annotations

import subprocess
from typing import Iterator

import pytest

from .case import MailTestCase
from .daemon import POSTMAP, Daemon
from .pki import tlsa_mismatch
from .postfix import Delivery, Postfix
from .scenarios import enforce_answer
from .smtpsink import SmtpSink
from .world import World

pytestmark = pytest.mark.integration

PROXY_UNIX = Postfix.PROXY_UNIX
CHROOT_UNIX = Postfix.CHROOT_UNIX


@pytest.fixture(scope="class")
def delivery_daemon(world: World, postfix: Postfix) -> Iterator[Daemon]:
    """A daemon listening where the Postfix instance asks: TCP and the unix socket."""
    daemon = world.new_daemon(listen=postfix.policy_listen()).start()
    try:
        yield daemon
    finally:
        daemon.stop()


class DeliveryTestCase(MailTestCase):
    """Helpers to publish a domain, run its SMTP sinks and deliver to it."""

    postfix: Postfix

    @pytest.fixture(autouse=True)
    def _delivery(self, postfix: Postfix, delivery_daemon: Daemon) -> None:
        self.postfix = postfix
        self.daemon = delivery_daemon

    def deliver(self, domain: str, transport: str | None = None) -> Delivery:
        """Send one message to ``domain`` and return smtp(8)'s first attempt."""
        queue_id = self.postfix.send(f"user@{domain}", transport=transport)
        self.addCleanup(self.postfix.delete, queue_id)
        delivery = self.postfix.wait_for(queue_id, timeout=30.0)
        self.addCleanup(self.assertNeverBounced, queue_id)
        return delivery

    def assertNeverBounced(self, queue_id: str) -> None:
        """A bounce is a failure whatever the test expected: mail must wait, not return."""
        statuses = [d.status for d in self.postfix.deliveries(queue_id)]
        self.assertNotIn("bounced", statuses, self.postfix.log_tail())
        self.assertNotIn("expired", statuses, self.postfix.log_tail())

    def assertSent(self, delivery: Delivery, sink: SmtpSink, mx: str) -> None:
        """Delivered over TLS that Postfix verified, with SNI ``mx``; the sink has the message."""
        log = "\n".join(delivery.log)
        self.assertEqual(delivery.status, "sent", log)
        self.assertIn(f"Verified TLS connection established to {mx}[", log)
        self.assertEqual(len(sink.messages), 1, sink.sessions)
        message = sink.messages[0]
        self.assertEqual(message.rcpt_to, (delivery.recipient,))
        self.assertTrue(message.tls)
        self.assertEqual(message.sni, mx)

    def assertDeferred(
        self, delivery: Delivery, reason: str, logged: str, *sinks: SmtpSink
    ) -> None:
        """
        Deferred with a 4.x.x status and ``reason``, ``logged`` among the
        attempt's log lines, the message still queued, no sink got it.
        """
        log = "\n".join(delivery.log)
        self.assertEqual(delivery.status, "deferred", log)
        self.assertTrue(delivery.dsn.startswith("4."), log)
        self.assertIn(reason, delivery.reason, log)
        self.assertIn(logged, log)
        queued = {m["queue_id"] for m in self.postfix.queue()}
        self.assertIn(delivery.queue_id, queued)
        for sink in sinks:
            self.assertEqual(sink.messages, [], sink.sessions)


class MTASTSDeliveryTests(DeliveryTestCase):
    """MTA-STS enforce answers, as smtp(8) applies them to real MX hosts."""

    def test_valid_certificate_delivers(self) -> None:
        """Enforce policy, MX certificate valid for its name: sent over verified TLS with SNI."""
        domain, mx = "stsgood.deliver.test", "mx.stsgood.deliver.test"
        self.publish_mx(domain, {mx: "127.0.0.61"})
        self.publish_sts(domain, [mx])
        sink = self.sink("127.0.0.61", mx, self.world.ca.issue([mx]))
        delivery = self.deliver(domain)
        self.assertSent(delivery, sink, mx)
        self.assertAnswer(domain, enforce_answer([mx]))

    def test_wrong_certificate_defers(self) -> None:
        """Enforce policy, MX certificate for another name: deferred, the sink gets nothing."""
        domain, mx = "stswrong.deliver.test", "mx.stswrong.deliver.test"
        self.publish_mx(domain, {mx: "127.0.0.62"})
        self.publish_sts(domain, [mx])
        sink = self.sink("127.0.0.62", mx, self.world.ca.issue(["other.deliver.test"]))
        delivery = self.deliver(domain)
        self.assertDeferred(
            delivery, "Server certificate not verified", "hostname mismatch", sink
        )
        self.assertTrue(any(s.tls for s in sink.sessions), sink.sessions)
        self.assertAnswer(domain, enforce_answer([mx]))


class DANEDeliveryTests(DeliveryTestCase):
    """DANE answers: Postfix checks the TLSA records the daemon found usable."""

    def test_matching_tlsa_delivers(self) -> None:
        """Secure MX with TLSA 3 1 1 of the sink's key: dane-only, delivered over verified TLS."""
        domain, mx = "daneok.deliver.test", "mx.daneok.deliver.test"
        pair = self.world.ca.issue([mx])
        self.publish_mx(domain, {mx: "127.0.0.63"}, tlsa={mx: pair.tlsa()})
        sink = self.sink("127.0.0.63", mx, pair)
        delivery = self.deliver(domain)
        self.assertSent(delivery, sink, mx)
        self.assertAnswer(domain, "dane-only")

    def test_mismatching_tlsa_defers(self) -> None:
        """Secure MX with TLSA matching no key: dane-only, deferred, the sink gets nothing."""
        domain, mx = "danebad.deliver.test", "mx.danebad.deliver.test"
        self.publish_mx(domain, {mx: "127.0.0.64"}, tlsa={mx: tlsa_mismatch()})
        sink = self.sink("127.0.0.64", mx, self.world.ca.issue([mx]))
        delivery = self.deliver(domain)
        self.assertDeferred(
            delivery, "Server certificate not verified", "no matching DANE TLSA records", sink
        )
        self.assertTrue(any(s.tls for s in sink.sessions), sink.sessions)
        self.assertAnswer(domain, "dane-only")

    def test_bogus_zone_defers(self) -> None:
        """In the bogus zone: Postfix's own MX lookup fails, mail waits, the daemon says TEMP."""
        domain, mx = "dlv.bogus.test", "mx.dlv.bogus.test"
        pair = self.world.ca.issue([mx])
        self.publish_mx(domain, {mx: "127.0.0.65"}, tlsa={mx: pair.tlsa()})
        sink = self.sink("127.0.0.65", mx, pair)
        delivery = self.deliver(domain)
        # Postfix's own MX lookup fails first: the resolver says SERVFAIL.
        self.assertDeferred(
            delivery, f"Name service error for name={domain} type=MX", "Host not found", sink
        )
        self.assertEqual(sink.sessions, [])
        self.assertTemp(domain)

    def test_bogus_mx_host_defers(self) -> None:
        """A secure domain with an MX host in the bogus zone: the daemon's TEMP defers the mail."""
        domain, mx = "bogushost.deliver.test", "mx.bogushost.deliver.test"
        bogus_mx = "mx.dlvhost.bogus.test"
        pair = self.world.ca.issue([mx])
        self.publish_mx(
            domain, {mx: "127.0.0.66", bogus_mx: "127.0.0.67"}, tlsa={mx: pair.tlsa()}
        )
        sink = self.sink("127.0.0.66", mx, pair)
        delivery = self.deliver(domain)
        self.assertDeferred(
            delivery, "client TLS configuration problem", "policy table lookup error", sink
        )
        self.assertEqual(sink.sessions, [])
        self.assertTemp(domain)

    def assertTemp(self, domain: str) -> None:
        """postmap gets a lookup error (a TEMP answer) for ``domain``."""
        result = self.daemon.postmap(domain)
        self.assertEqual((result.code, result.stdout), (1, ""), result)
        self.assertIn("query error", result.stderr, result)


class SocketFormTests(DeliveryTestCase):
    """The map forms a chrooted smtp(8) can and cannot use to reach the daemon."""

    def deliver_sts(
        self, label: str, address: str, transport: str | None
    ) -> tuple[Delivery, SmtpSink, str]:
        """Deliver through ``transport`` to a new enforce domain whose sink passes the policy."""
        domain, mx = f"{label}.deliver.test", f"mx.{label}.deliver.test"
        self.publish_mx(domain, {mx: address})
        self.publish_sts(domain, [mx])
        sink = self.sink(address, mx, self.world.ca.issue([mx]))
        return self.deliver(domain, transport), sink, mx

    def test_inet_socketmap(self) -> None:
        """socketmap:inet:127.0.0.1:PORT from chrooted smtp(8) reaches the daemon: delivered."""
        delivery, sink, mx = self.deliver_sts("sockinet", "127.0.0.68", None)
        self.assertSent(delivery, sink, mx)

    def test_proxy_unix_socketmap(self) -> None:
        """proxy:socketmap:unix:/abs/path works from chrooted smtp(8): proxymap is not chrooted."""
        delivery, sink, mx = self.deliver_sts("sockproxy", "127.0.0.69", PROXY_UNIX)
        self.assertSent(delivery, sink, mx)

    def test_chrooted_unix_socketmap_fails(self) -> None:
        """socketmap:unix:/abs/path from chrooted smtp(8) resolves inside the chroot: deferred."""
        delivery, sink, mx = self.deliver_sts("sockunix", "127.0.0.70", CHROOT_UNIX)
        self.assertDeferred(
            delivery, "client TLS configuration problem", "policy table lookup error", sink
        )
        log = "\n".join(delivery.log)
        self.assertIn(f"connect to {self.postfix.policy_socket}: No such file", log)
        self.assertEqual(sink.sessions, [])
        # The same map outside the chroot reaches the daemon: postmap passes
        # where smtp(8) fails.
        table = f"socketmap:unix:{self.postfix.policy_socket}:postfix"
        r = subprocess.run(
            [POSTMAP, "-c", str(self.world.postfix_config), "-q", "sockunix.deliver.test", table],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        )
        self.assertEqual((r.returncode, r.stdout), (0, enforce_answer([mx]) + "\n"), r.stderr)
