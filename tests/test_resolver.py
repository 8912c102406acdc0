"""
Tests for mxpolicyd.net.dns: the DNS client run against a fake reactor that
records UDP ports and TCP connections, with responses built by dnspython and
fed straight into the protocols. No network, no global reactor.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocol, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mxpolicyd.net.dns import (
    Answer,
    DNSError,
    Resolver,
    kind_text,
    resolver_kind,
    system_nameservers,
)

TLSA = dns.rdatatype.TLSA
A = dns.rdatatype.A
MX = dns.rdatatype.MX
TXT = dns.rdatatype.TXT

SERVER1 = "127.0.0.53"
SERVER2 = "127.0.0.54"


@implementer(IUDPTransport)
class FakeUDPPort:
    """A listening UDP port that records what the resolver sends on it."""

    def __init__(self, protocol: DatagramProtocol, port: int, interface: str) -> None:
        self.protocol = protocol
        self.port = port
        self.interface = interface
        self.connected_to: tuple[str, int] | None = None
        self.sent: list[tuple[bytes, Any]] = []
        self.stopped = False

    def connect(self, host: str, port: int) -> None:
        self.connected_to = (host, port)

    def write(self, datagram: bytes, addr: Any = None) -> None:
        self.sent.append((datagram, addr))

    def stopListening(self) -> None:
        # Like the real port: the protocol hears stopProtocol when it closes.
        assert not self.stopped, "port closed twice"
        self.stopped = True
        self.protocol.doStop()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", "127.0.0.1", 40000)

    def destination(self) -> tuple[str, int]:
        """Where the (only) datagram went: the connected address or the write address."""
        assert len(self.sent) == 1
        datagram, addr = self.sent[0]
        return addr if addr is not None else self.connected_to  # type: ignore[return-value]

    def query(self) -> dns.message.Message:
        return dns.message.from_wire(self.sent[0][0])

    def receive(
        self, data: bytes | dns.message.Message, addr: tuple[str, int] | None = None
    ) -> None:
        if isinstance(data, dns.message.Message):
            data = data.to_wire()
        self.protocol.datagramReceived(data, addr or self.destination())


class FakeReactor(MemoryReactorClock):
    """MemoryReactorClock plus listenUDP, which it lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.udp: list[FakeUDPPort] = []

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = "", maxPacketSize: int = 8192
    ) -> FakeUDPPort:
        listening = FakeUDPPort(protocol, port, interface)
        self.udp.append(listening)
        protocol.makeConnection(listening)
        return listening


def response(
    query: dns.message.Message,
    answers: list[str] = (),  # type: ignore[assignment]
    authority: list[str] = (),  # type: ignore[assignment]
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    ad: bool = True,
) -> dns.message.Message:
    """A response to query; records as 'name ttl IN type rdata' lines."""
    r = dns.message.make_response(query)
    r.set_rcode(rcode)
    if ad:
        r.flags |= dns.flags.AD
    for line in answers:
        r.answer.append(_rrset(line))
    for line in authority:
        r.authority.append(_rrset(line))
    return r


def _rrset(line: str) -> dns.rrset.RRset:
    name, ttl, rdclass, rdtype, rdata = line.split(None, 4)
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata)


SOA = "example.test. 900 IN SOA ns.example.test. hostmaster.example.test. 1 7200 900 1209600 300"


def question(message: dns.message.Message) -> tuple[str, int]:
    q = message.question[0]
    return q.name.to_text(omit_final_dot=True), q.rdtype


def framed(message: dns.message.Message) -> bytes:
    wire = message.to_wire(max_size=65535)
    return len(wire).to_bytes(2, "big") + wire


class ResolverTestCase(SynchronousTestCase):
    """Shared fixtures: a fake reactor and a resolver on two servers."""

    def setUp(self) -> None:
        self.reactor = FakeReactor()

    def resolver(self, nameservers: list[str] | None = None, **kwargs: Any) -> Resolver:
        return Resolver(self.reactor, nameservers or [SERVER1, SERVER2], **kwargs)

    def assertClean(self) -> None:
        """Every port closed, every timer gone."""
        self.assertEqual([p for p in self.reactor.udp if not p.stopped], [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def truncate(self, d: Deferred[Answer]) -> FakeUDPPort:
        port = self.reactor.udp[-1]
        r = response(port.query())
        r.flags |= dns.flags.TC
        port.receive(r)
        self.assertNoResult(d)
        return port

    def connect_tcp(self, index: int = -1) -> tuple[IProtocol, StringTransport]:
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


class QueryMessageTests(ResolverTestCase):
    """What goes out on the wire."""

    def test_query_wire_format(self) -> None:
        """The query asks for recursion, uses EDNS0 with payload 1232 and the DO bit, and the right question."""
        self.resolver().query("Example.TEST", MX)
        port = self.reactor.udp[0]
        query = port.query()
        self.assertEqual(question(query), ("Example.TEST", MX))
        self.assertEqual(query.edns, 0)
        self.assertEqual(query.payload, 1232)
        self.assertTrue(query.ednsflags & dns.flags.DO)
        self.assertTrue(query.flags & dns.flags.RD)
        self.assertEqual(port.destination(), (SERVER1, 53))
        self.assertEqual(port.port, 0)

    def test_fresh_port_and_random_id_per_query(self) -> None:
        """Each query gets its own ephemeral UDP port, and ids vary between queries."""
        resolver = self.resolver()
        for i in range(20):
            resolver.query(f"h{i}.example.test", A)
        self.assertEqual(len(self.reactor.udp), 20)
        ids = {p.query().id for p in self.reactor.udp}
        self.assertGreater(len(ids), 1)

    def test_ipv6_server_binds_ipv6_wildcard(self) -> None:
        """An IPv6 nameserver is queried from a port bound to '::' and its reply is accepted."""
        d = self.resolver(["::1"]).query("example.test", A)
        port = self.reactor.udp[0]
        self.assertEqual(port.interface, "::")
        self.assertEqual(port.destination(), ("::1", 53))
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]), ("::1", 53))
        self.assertTrue(self.successResultOf(d).exists)

    def test_ipv4_server_binds_ipv4(self) -> None:
        """An IPv4 nameserver is queried from a port on the default (IPv4) interface, on the configured port."""
        self.resolver(port=5353).query("example.test", A)
        port = self.reactor.udp[0]
        self.assertEqual(port.interface, "")
        self.assertEqual(port.destination(), (SERVER1, 5353))

    def test_invalid_name_fails_with_value_error(self) -> None:
        """A name that is not a valid A-label domain name fails at once, with no query sent."""
        resolver = self.resolver()
        self.failureResultOf(resolver.query("a..example.test", A), ValueError)
        self.failureResultOf(resolver.query("b\u00fccher.test", A), ValueError)
        self.failureResultOf(resolver.query("x" * 64 + ".test", A), ValueError)
        self.assertEqual(self.reactor.udp, [])

    def test_trailing_dot_accepted(self) -> None:
        """A name with a trailing dot is the same name without it."""
        d = self.resolver().query("example.test.", A)
        port = self.reactor.udp[0]
        self.assertEqual(question(port.query()), ("example.test", A))
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.assertEqual(self.successResultOf(d).name, "example.test")


class AnswerTests(ResolverTestCase):
    """Positive and negative answers."""

    def test_positive_answer_with_ad(self) -> None:
        """A NOERROR response with the RRset and AD gives a secure answer with its records and TTL."""
        d = self.resolver().query("Mail.Example.TEST", A)
        port = self.reactor.udp[0]
        port.receive(
            response(
                port.query(),
                ["mail.example.test. 300 IN A 192.0.2.1", "mail.example.test. 300 IN A 192.0.2.2"],
            )
        )
        answer = self.successResultOf(d)
        self.assertEqual(answer.name, "mail.example.test")
        self.assertEqual(answer.rdtype, A)
        self.assertEqual(answer.rcode, dns.rcode.NOERROR)
        self.assertEqual(sorted(r.address for r in answer.records), ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(answer.ttl, 300)
        self.assertTrue(answer.secure)
        self.assertTrue(answer.exists)
        self.assertEqual(answer.canonical_name, "mail.example.test")
        self.assertEqual(answer.cnames, ())
        self.assertEqual(len(self.reactor.udp), 1)
        self.assertClean()

    def test_positive_answer_without_ad_is_insecure(self) -> None:
        """A response without the AD bit gives secure=False."""
        d = self.resolver().query("example.test", MX)
        port = self.reactor.udp[0]
        port.receive(
            response(port.query(), ["example.test. 60 IN MX 10 mx.example.test."], ad=False)
        )
        answer = self.successResultOf(d)
        self.assertFalse(answer.secure)
        self.assertEqual(answer.records[0].exchange, dns.name.from_text("mx.example.test."))

    def test_nxdomain_negative_ttl_from_soa_minimum(self) -> None:
        """NXDOMAIN is an answer with no records and the RFC 2308 TTL min(SOA TTL, MINIMUM)."""
        d = self.resolver().query("nope.example.test", A)
        port = self.reactor.udp[0]
        port.receive(response(port.query(), authority=[SOA], rcode=dns.rcode.NXDOMAIN))
        answer = self.successResultOf(d)
        self.assertEqual(answer.rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(answer.records, ())
        self.assertFalse(answer.exists)
        self.assertEqual(answer.ttl, 300)
        self.assertTrue(answer.secure)
        self.assertEqual(len(self.reactor.udp), 1)
        self.assertClean()

    def test_negative_ttl_capped_by_soa_ttl(self) -> None:
        """The negative TTL is the SOA record's own TTL when that is below MINIMUM."""
        d = self.resolver().query("nope.example.test", A)
        port = self.reactor.udp[0]
        soa = "example.test. 42 IN SOA ns.example.test. h.example.test. 1 7200 900 1209600 3600"
        port.receive(response(port.query(), authority=[soa], rcode=dns.rcode.NXDOMAIN))
        self.assertEqual(self.successResultOf(d).ttl, 42)

    def test_nodata(self) -> None:
        """NOERROR with no RRset of the type is an empty NOERROR answer with the negative TTL."""
        d = self.resolver().query("example.test", TXT)
        port = self.reactor.udp[0]
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"], authority=[SOA]))
        answer = self.successResultOf(d)
        self.assertEqual(answer.rcode, dns.rcode.NOERROR)
        self.assertEqual(answer.records, ())
        self.assertFalse(answer.exists)
        self.assertEqual(answer.ttl, 300)

    def test_nodata_without_soa_has_zero_ttl(self) -> None:
        """An empty answer without an SOA in the authority section has TTL 0."""
        d = self.resolver().query("example.test", TXT)
        port = self.reactor.udp[0]
        port.receive(response(port.query()))
        answer = self.successResultOf(d)
        self.assertEqual((answer.rcode, answer.records, answer.ttl), (dns.rcode.NOERROR, (), 0))

    def test_records_of_other_names_ignored(self) -> None:
        """Only the RRset owned by the name asked counts as the answer."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        port.receive(response(port.query(), ["other.test. 60 IN A 192.0.2.9"], authority=[SOA]))
        self.assertEqual(self.successResultOf(d).records, ())

    def test_record_newer_dnspython_rejects(self) -> None:
        """A TLSA digest of the wrong length never fails the lookup, on any dnspython."""
        d = self.resolver().query("_25._tcp.mx.example.test", TLSA)
        port = self.reactor.udp[0]
        good = response(port.query(), ["_25._tcp.mx.example.test. 300 IN TLSA 3 1 0 " + "ab" * 20])
        # Matching type 0 takes any length; 1 (SHA-256) must be 32 bytes.
        wire = good.to_wire().replace(b"\x03\x01\x00" + b"\xab" * 20, b"\x03\x01\x01" + b"\xab" * 20)
        port.receive(wire)
        answer = self.successResultOf(d)
        # dnspython < 2.6 parses it (the caller finds it unusable); newer ones
        # skip it and count it.
        self.assertEqual(len(answer.records) + answer.malformed, 1)
        self.assertTrue(answer.secure)
        self.assertClean()

    def test_answer_is_frozen(self) -> None:
        """Answer objects are immutable (they are shared by cached evaluations)."""
        answer = Answer("x.test", A, 0, (), 0, False, "x.test", ())
        with self.assertRaises(AttributeError):
            answer.ttl = 5  # type: ignore[misc]


class CNAMETests(ResolverTestCase):
    """CNAME chains in one response and across responses."""

    def test_chain_within_message(self) -> None:
        """A chain ending in the RRset is followed inside one response; TTL is the minimum over it."""
        d = self.resolver().query("www.example.test", A)
        port = self.reactor.udp[0]
        port.receive(
            response(
                port.query(),
                [
                    "www.example.test. 100 IN CNAME A.example.test.",
                    "a.example.test. 50 IN CNAME b.example.test.",
                    "b.example.test. 300 IN A 192.0.2.7",
                ],
            )
        )
        answer = self.successResultOf(d)
        self.assertEqual([r.address for r in answer.records], ["192.0.2.7"])
        self.assertEqual(answer.cnames, ("a.example.test", "b.example.test"))
        self.assertEqual(answer.canonical_name, "b.example.test")
        self.assertEqual(answer.name, "www.example.test")
        self.assertEqual(answer.ttl, 50)
        self.assertEqual(len(self.reactor.udp), 1)

    def test_chain_to_nxdomain(self) -> None:
        """An NXDOMAIN after a CNAME chain refers to the target: no re-query, negative TTL capped by the CNAME's."""
        d = self.resolver().query("www.example.test", A)
        port = self.reactor.udp[0]
        port.receive(
            response(
                port.query(),
                ["www.example.test. 1000 IN CNAME gone.example.test."],
                authority=[SOA],
                rcode=dns.rcode.NXDOMAIN,
            )
        )
        answer = self.successResultOf(d)
        self.assertEqual(answer.rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(answer.canonical_name, "gone.example.test")
        self.assertEqual(answer.ttl, 300)
        self.assertEqual(len(self.reactor.udp), 1)

    def test_chain_requery(self) -> None:
        """A chain that stops short of the RRset makes the resolver ask for the last target."""
        d = self.resolver().query("_mta-sts.example.test", TXT)
        first = self.reactor.udp[0]
        first.receive(
            response(first.query(), ["_mta-sts.example.test. 600 IN CNAME _mta-sts.provider.test."])
        )
        self.assertNoResult(d)
        self.assertEqual(len(self.reactor.udp), 2)
        second = self.reactor.udp[1]
        self.assertEqual(question(second.query()), ("_mta-sts.provider.test", TXT))
        second.receive(
            response(second.query(), ['_mta-sts.provider.test. 120 IN TXT "v=STSv1; id=1"'])
        )
        answer = self.successResultOf(d)
        self.assertEqual(answer.records[0].strings, (b"v=STSv1; id=1",))
        self.assertEqual(answer.cnames, ("_mta-sts.provider.test",))
        self.assertEqual(answer.canonical_name, "_mta-sts.provider.test")
        self.assertEqual(answer.ttl, 120)
        self.assertTrue(answer.secure)
        self.assertClean()

    def test_requery_nodata_ttl_includes_cname(self) -> None:
        """After a re-query that ends in NODATA, the TTL is the minimum of the CNAME and negative TTLs."""
        d = self.resolver().query("a.example.test", TXT)
        first = self.reactor.udp[0]
        first.receive(response(first.query(), ["a.example.test. 30 IN CNAME b.example.test."]))
        second = self.reactor.udp[1]
        second.receive(response(second.query(), authority=[SOA]))
        answer = self.successResultOf(d)
        self.assertEqual((answer.rcode, answer.records, answer.ttl), (dns.rcode.NOERROR, (), 30))

    def test_ad_false_on_one_response_is_insecure(self) -> None:
        """secure is the AND of the AD bits of every response used."""
        d = self.resolver().query("a.example.test", A)
        first = self.reactor.udp[0]
        first.receive(
            response(first.query(), ["a.example.test. 30 IN CNAME b.example.test."], ad=True)
        )
        second = self.reactor.udp[1]
        second.receive(response(second.query(), ["b.example.test. 30 IN A 192.0.2.1"], ad=False))
        self.assertFalse(self.successResultOf(d).secure)

    def test_ad_false_on_first_response_is_insecure(self) -> None:
        """An insecure CNAME makes the whole answer insecure even if the target's response has AD."""
        d = self.resolver().query("a.example.test", A)
        first = self.reactor.udp[0]
        first.receive(
            response(first.query(), ["a.example.test. 30 IN CNAME b.example.test."], ad=False)
        )
        second = self.reactor.udp[1]
        second.receive(response(second.query(), ["b.example.test. 30 IN A 192.0.2.1"], ad=True))
        self.assertFalse(self.successResultOf(d).secure)

    def test_loop_within_message(self) -> None:
        """A CNAME loop inside one response is a DNSError of kind cname-loop."""
        d = self.resolver().query("a.example.test", A)
        port = self.reactor.udp[0]
        port.receive(
            response(
                port.query(),
                [
                    "a.example.test. 30 IN CNAME b.example.test.",
                    "b.example.test. 30 IN CNAME A.EXAMPLE.TEST.",
                ],
            )
        )
        error = self.failureResultOf(d, DNSError).value
        self.assertEqual(error.kind, "cname-loop")
        self.assertEqual(error.name, "a.example.test")
        self.assertEqual(len(self.reactor.udp), 1)
        self.assertClean()

    def test_loop_across_requeries(self) -> None:
        """A loop that only shows across re-queries is detected too."""
        d = self.resolver().query("a.example.test", A)
        first = self.reactor.udp[0]
        first.receive(response(first.query(), ["a.example.test. 30 IN CNAME b.example.test."]))
        second = self.reactor.udp[1]
        second.receive(response(second.query(), ["b.example.test. 30 IN CNAME a.example.test."]))
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "cname-loop")
        self.assertEqual(len(self.reactor.udp), 2)

    def test_chain_too_long(self) -> None:
        """More CNAMEs than max_cnames in total is a cname-loop DNSError."""
        d = self.resolver(max_cnames=2).query("c0.example.test", A)
        for i in range(2):
            port = self.reactor.udp[i]
            port.receive(
                response(port.query(), [f"c{i}.example.test. 30 IN CNAME c{i + 1}.example.test."])
            )
        port = self.reactor.udp[2]
        port.receive(response(port.query(), ["c2.example.test. 30 IN CNAME c3.example.test."]))
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "cname-loop")
        self.assertEqual(len(self.reactor.udp), 3)

    def test_chain_of_max_length_allowed(self) -> None:
        """Exactly max_cnames CNAMEs are followed."""
        d = self.resolver(max_cnames=2).query("c0.example.test", A)
        port = self.reactor.udp[0]
        port.receive(
            response(
                port.query(),
                [
                    "c0.example.test. 30 IN CNAME c1.example.test.",
                    "c1.example.test. 30 IN CNAME c2.example.test.",
                    "c2.example.test. 30 IN A 192.0.2.1",
                ],
            )
        )
        self.assertEqual(self.successResultOf(d).canonical_name, "c2.example.test")

    def test_cname_query_not_followed(self) -> None:
        """Asking for the CNAME type itself returns the CNAME record without following it."""
        d = self.resolver().query("a.example.test", dns.rdatatype.CNAME)
        port = self.reactor.udp[0]
        port.receive(response(port.query(), ["a.example.test. 30 IN CNAME b.example.test."]))
        answer = self.successResultOf(d)
        self.assertEqual(answer.cnames, ())
        self.assertEqual(answer.records[0].target, dns.name.from_text("b.example.test."))


class RetryTests(ResolverTestCase):
    """Failover across servers, attempts and timeouts."""

    def test_servfail_then_success_on_second_server(self) -> None:
        """SERVFAIL from the first server moves on to the second, whose answer is used."""
        d = self.resolver().query("example.test", A)
        first = self.reactor.udp[0]
        first.receive(response(first.query(), rcode=dns.rcode.SERVFAIL))
        self.assertTrue(first.stopped)
        second = self.reactor.udp[1]
        self.assertEqual(second.destination(), (SERVER2, 53))
        second.receive(response(second.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.assertTrue(self.successResultOf(d).exists)
        self.assertClean()

    def test_all_servers_time_out(self) -> None:
        """With every server silent, the lookup fails with kind timeout after attempts * servers tries."""
        d = self.resolver(timeout=1.5, attempts=3).query("example.test", A)
        for i in range(6):
            self.assertEqual(len(self.reactor.udp), i + 1)
            self.assertNoResult(d)
            self.reactor.advance(1.5)
            self.assertTrue(self.reactor.udp[i].stopped)
        error = self.failureResultOf(d, DNSError).value
        self.assertEqual(error.kind, "timeout")
        self.assertEqual(len(self.reactor.udp), 6)
        self.assertEqual(self.reactor.seconds(), 9.0)
        self.assertEqual(
            [p.destination()[0] for p in self.reactor.udp],
            [SERVER1, SERVER2, SERVER1, SERVER2, SERVER1, SERVER2],
        )
        self.assertIn(SERVER1, error.message)
        self.assertIn(SERVER2, error.message)
        self.assertClean()

    def test_no_early_timeout(self) -> None:
        """A try is not abandoned before its full timeout."""
        d = self.resolver(timeout=2.0).query("example.test", A)
        self.reactor.advance(1.999)
        self.assertEqual(len(self.reactor.udp), 1)
        port = self.reactor.udp[0]
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.assertTrue(self.successResultOf(d).exists)

    def test_last_failure_kind_wins(self) -> None:
        """The DNSError kind is that of the last failure: timeout then SERVFAIL gives servfail."""
        d = self.resolver(attempts=1).query("example.test", A)
        self.reactor.advance(2.0)
        second = self.reactor.udp[1]
        second.receive(response(second.query(), rcode=dns.rcode.SERVFAIL))
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "servfail")

    def test_servfail_then_timeout_gives_timeout(self) -> None:
        """SERVFAIL then a timeout on the last try gives kind timeout."""
        d = self.resolver(attempts=1).query("example.test", A)
        first = self.reactor.udp[0]
        first.receive(response(first.query(), rcode=dns.rcode.SERVFAIL))
        self.reactor.advance(2.0)
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "timeout")

    def test_servfail_everywhere(self) -> None:
        """SERVFAIL (how a validating resolver reports bogus) from every try gives kind servfail."""
        d = self.resolver(attempts=2).query("example.test", A)
        for i in range(4):
            port = self.reactor.udp[i]
            port.receive(response(port.query(), rcode=dns.rcode.SERVFAIL))
        error = self.failureResultOf(d, DNSError).value
        self.assertEqual(error.kind, "servfail")
        self.assertEqual(len(self.reactor.udp), 4)
        self.assertClean()

    def test_error_rcodes_map_to_kinds(self) -> None:
        """REFUSED, FORMERR, NOTIMP and other rcodes fail over and map to their kinds."""
        cases = {
            dns.rcode.REFUSED: "refused",
            dns.rcode.FORMERR: "formerr",
            dns.rcode.NOTIMP: "notimp",
            dns.rcode.YXDOMAIN: "rcode",
        }
        for rcode, kind in cases.items():
            reactor = self.reactor = FakeReactor()
            d = self.resolver(attempts=1).query("example.test", A)
            for port in reactor.udp[:1]:
                port.receive(response(port.query(), rcode=rcode))
            self.assertEqual(len(reactor.udp), 2, kind)
            port = reactor.udp[1]
            port.receive(response(port.query(), rcode=rcode))
            self.assertEqual(self.failureResultOf(d, DNSError).value.kind, kind)

    def test_error_response_without_question_accepted(self) -> None:
        """A SERVFAIL that carries no question section still counts as the server's response."""
        d = self.resolver(attempts=1, nameservers=[SERVER1]).query("example.test", A)
        port = self.reactor.udp[0]
        r = response(port.query(), rcode=dns.rcode.SERVFAIL)
        r.question = []
        port.receive(r)
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "servfail")

    def test_nxdomain_not_retried(self) -> None:
        """NXDOMAIN is an answer: the next server is not asked."""
        d = self.resolver().query("nope.example.test", A)
        port = self.reactor.udp[0]
        port.receive(response(port.query(), rcode=dns.rcode.NXDOMAIN))
        self.assertEqual(self.successResultOf(d).rcode, dns.rcode.NXDOMAIN)
        self.assertEqual(len(self.reactor.udp), 1)

    def test_connection_refused_fails_over(self) -> None:
        """An ICMP port unreachable (connectionRefused) is a network failure that moves on at once."""
        d = self.resolver(attempts=1).query("example.test", A)
        self.reactor.udp[0].protocol.connectionRefused()
        self.assertEqual(len(self.reactor.udp), 2)
        self.reactor.udp[1].protocol.connectionRefused()
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "network")
        self.assertEqual(self.reactor.seconds(), 0)
        self.assertClean()

    def test_socket_error_closing_port_fails_over(self) -> None:
        """A port the reactor closes on a socket error (ICMP unreachable under epoll) is a network failure at once."""
        d = self.resolver(attempts=1).query("example.test", A)
        self.reactor.udp[0].protocol.doStop()
        self.assertEqual(len(self.reactor.udp), 2)
        self.assertEqual(self.reactor.udp[1].destination(), (SERVER2, 53))
        self.reactor.udp[1].protocol.doStop()
        error = self.failureResultOf(d, DNSError).value
        self.assertEqual(error.kind, "network")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_listen_failure_is_network_error(self) -> None:
        """A UDP port that cannot be opened is a network failure, not an exception from query()."""

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise OSError("no ports")

        self.reactor.listenUDP = broken  # type: ignore[method-assign]
        d = self.resolver(attempts=1).query("example.test", A)
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "network")
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class SpoofingTests(ResolverTestCase):
    """Responses that are not the answer to our query are ignored."""

    def test_wrong_id_ignored(self) -> None:
        """A response with another message id is ignored and the try keeps waiting."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        forged = response(port.query(), ["example.test. 60 IN A 203.0.113.66"])
        forged.id = (port.query().id + 1) % 0x10000
        port.receive(forged)
        self.assertNoResult(d)
        self.assertFalse(port.stopped)
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.assertEqual(self.successResultOf(d).records[0].address, "192.0.2.1")

    def test_wrong_source_ignored(self) -> None:
        """A response from another address or port than the server queried is ignored."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        forged = response(port.query(), ["example.test. 60 IN A 203.0.113.66"])
        port.receive(forged, ("127.0.0.99", 53))
        port.receive(forged, (SERVER1, 5300))
        self.assertNoResult(d)
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.assertEqual(self.successResultOf(d).records[0].address, "192.0.2.1")

    def test_wrong_question_ignored(self) -> None:
        """A response with the right id but another question is ignored."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        other = dns.message.make_query("evil.test", A)
        other.id = port.query().id
        port.receive(response(other, ["evil.test. 60 IN A 203.0.113.66"]))
        wrong_type = dns.message.make_query("example.test", MX)
        wrong_type.id = port.query().id
        port.receive(response(wrong_type, ["example.test. 60 IN MX 0 evil.test."]))
        self.assertNoResult(d)
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.assertEqual(self.successResultOf(d).records[0].address, "192.0.2.1")

    def test_query_echo_ignored(self) -> None:
        """A datagram without the QR bit (our own query reflected) is not a response."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        port.receive(port.sent[0][0])
        self.assertNoResult(d)

    def test_garbage_not_ours_ignored(self) -> None:
        """Unparseable bytes that are not addressed to our query (short, or another id) are ignored."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        port.receive(b"\x01")
        other_id = ((port.query().id + 1) % 0x10000).to_bytes(2, "big")
        port.receive(other_id + b"\x81\x80\xff\xff")
        self.assertNoResult(d)
        self.assertFalse(port.stopped)
        self.assertEqual(len(self.reactor.udp), 1)

    def test_junk_with_our_id_does_not_end_the_try(self) -> None:
        """Unparseable bytes with our id are ignored: the server's answer that follows is used."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        port.receive(port.query().id.to_bytes(2, "big") + b"\x81\x80\x00\x05garbage")
        self.assertNoResult(d)
        self.assertFalse(port.stopped)
        self.assertEqual(self.reactor.tcpClients, [])
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.assertEqual(self.successResultOf(d).records[0].address, "192.0.2.1")
        self.assertClean()

    def test_junk_from_another_source_ignored(self) -> None:
        """Junk with our id from another address or port changes nothing."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        junk = port.query().id.to_bytes(2, "big") + b"\x81\x80\x00\x05garbage"
        port.receive(junk, ("127.0.0.99", 53))
        port.receive(junk, (SERVER1, 5300))
        self.reactor.advance(2.0)
        self.assertEqual(self.reactor.tcpClients, [], "only a junk datagram from the server counts")
        self.assertEqual(self.reactor.udp[1].destination(), (SERVER2, 53))
        self.assertNoResult(d)

    def test_only_junk_then_tcp(self) -> None:
        """A UDP try that got only junk with our id goes on over TCP at its deadline, to the same server."""
        d = self.resolver(attempts=1, timeout=2.0).query("example.test", A)
        port = self.reactor.udp[0]
        port.receive(port.query().id.to_bytes(2, "big") + b"\x81\x80\x00\x05garbage")
        self.reactor.advance(1.9)
        self.assertEqual(self.reactor.tcpClients, [])
        self.reactor.advance(0.1)
        self.assertTrue(port.stopped)
        self.assertEqual(self.reactor.tcpClients[0][:2], (SERVER1, 53))
        protocol, transport = self.connect_tcp()
        query = dns.message.from_wire(transport.value()[2:])
        protocol.dataReceived(framed(response(query, ["example.test. 60 IN A 192.0.2.1"])))
        self.assertEqual(self.successResultOf(d).records[0].address, "192.0.2.1")
        self.assertClean()

    def test_only_junk_everywhere_is_malformed(self) -> None:
        """Junk over UDP and over TCP from every server fails the lookup as malformed."""
        d = self.resolver(attempts=1, timeout=1.0).query("example.test", A)
        for index in range(2):
            port = self.reactor.udp[index]
            port.receive(port.query().id.to_bytes(2, "big") + b"\x81\x80\x00\x05garbage")
            self.reactor.advance(1.0)
            protocol, transport = self.connect_tcp(index)
            protocol.dataReceived(b"\x00\x0b" + transport.value()[2:4] + b"\x81\x80\x00\x05garbage")
        error = self.failureResultOf(d, DNSError).value
        self.assertEqual(error.kind, "malformed")
        self.assertClean()


def big_txt_response(query: dns.message.Message, records: int = 60) -> dns.message.Message:
    """A response of about 12.9 KB: `records` TXT records of 200 bytes each, the last one the real one."""
    name = query.question[0].name.to_text()
    lines = [f'{name} 300 IN TXT "filler{i:02d}={"x" * 190}"' for i in range(records - 1)]
    lines.append(f'{name} 300 IN TXT "v=STSv1; id=last"')
    r = dns.message.make_response(query)
    r.flags |= dns.flags.AD
    # One RRset per record keeps them in order on the wire.
    for line in lines:
        r.answer.append(_rrset(line))
    return r


class WholeAnswerTests(ResolverTestCase):
    """A response parsed only in part is never used: no shorter RRset."""

    def test_over_long_datagram_retried_over_tcp(self) -> None:
        """A 12.9 KB reply without TC, of which the reactor reads 8192 bytes, is asked again over TCP, whose whole RRset is used."""
        d = self.resolver().query("_mta-sts.example.test", TXT)
        port = self.reactor.udp[0]
        wire = big_txt_response(port.query()).to_wire(max_size=65535)
        self.assertGreater(len(wire), 12000)
        port.receive(wire[:8192])
        self.assertTrue(port.stopped)
        self.assertEqual(self.reactor.tcpClients[0][:2], (SERVER1, 53))
        protocol, transport = self.connect_tcp()
        query = dns.message.from_wire(transport.value()[2:])
        protocol.dataReceived(framed(big_txt_response(query)))
        answer = self.successResultOf(d)
        self.assertEqual(len(answer.records), 60)
        self.assertIn(b"v=STSv1; id=last", [b"".join(r.strings) for r in answer.records])
        self.assertClean()

    def test_whole_datagram_over_payload_retried_over_tcp(self) -> None:
        """A whole, parseable reply longer than the 1232 bytes we asked for is not used: TCP is asked."""
        d = self.resolver().query("_mta-sts.example.test", TXT)
        port = self.reactor.udp[0]
        port.receive(big_txt_response(port.query(), records=7).to_wire(max_size=65535))
        self.assertNoResult(d)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_reply_of_exactly_the_payload_used(self) -> None:
        """A reply of exactly 1232 bytes is used as it is."""
        d = self.resolver().query("example.test", TXT)
        port = self.reactor.udp[0]
        r = response(port.query(), ['example.test. 60 IN TXT "" "" "" "" "" "" ""'])
        padding = 1232 - len(r.to_wire())
        strings = " ".join(f'"{"x" * min(255, padding - 255 * i)}"' for i in range(7))
        r = response(port.query(), [f"example.test. 60 IN TXT {strings}"])
        self.assertEqual(len(r.to_wire()), 1232)
        port.receive(r)
        self.assertEqual(len(self.successResultOf(d).records), 1)
        self.assertEqual(self.reactor.tcpClients, [])

    def cut(self, message: dns.message.Message, drop: int) -> bytes:
        """The message's wire form without its last `drop` bytes, its header still counting every record."""
        return message.to_wire(max_size=65535)[:-drop]

    def test_cut_datagram_is_junk(self) -> None:
        """A datagram cut inside its last record (no TC) is ignored, never read as fewer records."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        full = response(port.query(), [f"example.test. 60 IN A 192.0.2.{i}" for i in range(1, 4)])
        port.receive(self.cut(full, 3))
        self.assertNoResult(d)
        self.assertFalse(port.stopped)
        port.receive(full)
        self.assertEqual(len(self.successResultOf(d).records), 3)

    def test_broken_name_is_junk(self) -> None:
        """A record whose owner name points forward (parsing stops there) makes the datagram junk, not a shorter RRset."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        full = response(port.query(), [f"example.test. 60 IN A 192.0.2.{i}" for i in range(1, 4)])
        wire = full.to_wire()
        # Every owner name is a pointer to the question's name at offset 12.
        second = wire.index(b"\xc0\x0c", wire.index(b"\xc0\x0c") + 1)
        broken = wire[:second] + b"\xc0\xff" + wire[second + 2 :]
        port.receive(broken)
        self.assertNoResult(d)
        port.receive(full)
        self.assertEqual(len(self.successResultOf(d).records), 3)

    def test_trailing_junk_is_junk(self) -> None:
        """Bytes after the last record the header counts make the datagram junk."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        full = response(port.query(), ["example.test. 60 IN A 192.0.2.1"])
        port.receive(full.to_wire() + b"\x00\x01")
        self.assertNoResult(d)
        port.receive(full)
        self.assertEqual(len(self.successResultOf(d).records), 1)

    def test_no_prefix_is_a_shorter_rrset(self) -> None:
        """Whatever length a response is cut to, it is ignored, never taken for fewer records."""
        query = dns.message.make_query("example.test", TXT, use_edns=0, payload=1232)
        full = big_txt_response(query, records=5).to_wire()
        for size in range(len(full)):
            d = self.resolver(attempts=1, nameservers=[SERVER1]).query("example.test", TXT)
            port = self.reactor.udp[-1]
            port.receive(port.query().id.to_bytes(2, "big") + full[2:size])
            self.assertNoResult(d)
            d.cancel()
            self.failureResultOf(d, CancelledError)

    def test_cut_tcp_response_fails(self) -> None:
        """Over TCP, a message cut short inside its length frame fails as malformed."""
        d = self.resolver(attempts=1, nameservers=[SERVER1]).query("example.test", A)
        self.truncate(d)
        protocol, transport = self.connect_tcp()
        query = dns.message.from_wire(transport.value()[2:])
        wire = self.cut(
            response(query, [f"example.test. 60 IN A 192.0.2.{i}" for i in range(1, 4)]), 7
        )
        protocol.dataReceived(len(wire).to_bytes(2, "big") + wire)
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "malformed")
        self.assertClean()


class TCPTests(ResolverTestCase):
    """Truncated UDP responses are retried over TCP."""

    def test_tc_retries_same_server_over_tcp(self) -> None:
        """TC makes the resolver ask the same server over TCP, with length framing, accepting a split response."""
        d = self.resolver(timeout=3.0).query("example.test", TXT)
        port = self.truncate(d)
        self.assertTrue(port.stopped)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        host, tcp_port, factory, timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual((host, tcp_port), (SERVER1, 53))
        protocol, transport = self.connect_tcp()
        sent = transport.value()
        length = int.from_bytes(sent[:2], "big")
        self.assertEqual(length, len(sent) - 2)
        query = dns.message.from_wire(sent[2:])
        self.assertEqual(question(query), ("example.test", TXT))
        self.assertEqual(query.id, port.query().id)
        big = " ".join(f'"{"x" * 200}{i}"' for i in range(8))
        data = framed(response(query, [f"example.test. 77 IN TXT {big}"]))
        protocol.dataReceived(data[:1])
        protocol.dataReceived(data[1:10])
        self.assertNoResult(d)
        protocol.dataReceived(data[10:-1])
        self.assertNoResult(d)
        protocol.dataReceived(data[-1:])
        answer = self.successResultOf(d)
        self.assertEqual(len(answer.records[0].strings), 8)
        self.assertEqual(answer.ttl, 77)
        self.assertTrue(answer.secure)
        self.assertTrue(transport.disconnecting)
        self.assertClean()

    def test_partial_truncated_udp_response(self) -> None:
        """A truncated UDP response that does not even parse still triggers the TCP retry."""
        d = self.resolver().query("example.test", TXT)
        port = self.reactor.udp[0]
        r = response(port.query(), ['example.test. 60 IN TXT "abc"'])
        r.flags |= dns.flags.TC
        port.receive(r.to_wire()[:-3])
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertNoResult(d)

    def test_tcp_timeout_moves_to_next_server(self) -> None:
        """A TCP retry that never answers times out after `timeout` and the next server is asked over UDP."""
        d = self.resolver(timeout=2.0).query("example.test", A)
        self.truncate(d)
        protocol, transport = self.connect_tcp()
        self.reactor.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.reactor.udp), 2)
        self.assertEqual(self.reactor.udp[1].destination(), (SERVER2, 53))

    def test_tcp_connect_failure(self) -> None:
        """A refused TCP connection is a network failure and moves on."""
        d = self.resolver(attempts=1, nameservers=[SERVER1]).query("example.test", A)
        self.truncate(d)
        host, port, factory, timeout, bind = self.reactor.tcpClients[0]
        factory.clientConnectionFailed(self.reactor.connectors[0], Failure(Exception("refused")))
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "network")
        self.assertClean()

    def test_tcp_connection_closed_early(self) -> None:
        """A TCP connection closed before a whole response is a network failure."""
        d = self.resolver(attempts=1, nameservers=[SERVER1]).query("example.test", A)
        self.truncate(d)
        protocol, transport = self.connect_tcp()
        protocol.dataReceived(b"\x00\x40abc")
        protocol.connectionLost(Failure(Exception("closed")))
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "network")

    def test_tcp_mismatched_response(self) -> None:
        """A TCP response to another query is a malformed failure."""
        d = self.resolver(attempts=1, nameservers=[SERVER1]).query("example.test", A)
        self.truncate(d)
        protocol, transport = self.connect_tcp()
        protocol.dataReceived(framed(response(dns.message.make_query("other.test", A))))
        self.assertEqual(self.failureResultOf(d, DNSError).value.kind, "malformed")
        self.assertTrue(transport.disconnecting)

    def test_tcp_servfail_fails_over(self) -> None:
        """A SERVFAIL over TCP fails over like one over UDP."""
        d = self.resolver(attempts=1).query("example.test", A)
        self.truncate(d)
        protocol, transport = self.connect_tcp()
        query = dns.message.from_wire(transport.value()[2:])
        protocol.dataReceived(framed(response(query, rcode=dns.rcode.SERVFAIL)))
        self.assertEqual(len(self.reactor.udp), 2)
        self.assertEqual(self.reactor.udp[1].destination(), (SERVER2, 53))


class CancellationTests(ResolverTestCase):
    """Cancelling a lookup releases everything it holds."""

    def test_cancel_during_udp(self) -> None:
        """Cancelling while a UDP try waits closes the port, removes the timer and fails with CancelledError."""
        d = self.resolver().query("example.test", A)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.udp[0].stopped)
        self.assertClean()
        self.assertEqual(len(self.reactor.udp), 1)

    def test_late_response_after_cancel_ignored(self) -> None:
        """A response arriving after cancellation changes nothing."""
        d = self.resolver().query("example.test", A)
        port = self.reactor.udp[0]
        d.cancel()
        port.receive(response(port.query(), ["example.test. 60 IN A 192.0.2.1"]))
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.reactor.udp), 1)

    def test_cancel_during_second_cname_query(self) -> None:
        """Cancelling during a CNAME re-query cancels that query."""
        d = self.resolver().query("a.example.test", A)
        first = self.reactor.udp[0]
        first.receive(response(first.query(), ["a.example.test. 30 IN CNAME b.example.test."]))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.reactor.udp), 2)
        self.assertClean()

    def test_cancel_while_tcp_connecting(self) -> None:
        """Cancelling during a TCP connect stops connecting and leaves no timer."""
        d = self.resolver().query("example.test", A)
        self.truncate(d)
        connector = self.reactor.connectors[0]
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(connector.stoppedConnecting)
        self.assertClean()

    def test_cancel_while_tcp_connected(self) -> None:
        """Cancelling with a TCP connection open aborts it."""
        d = self.resolver().query("example.test", A)
        self.truncate(d)
        protocol, transport = self.connect_tcp()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(transport.disconnected)
        self.assertClean()

    def test_cancel_reported_by_connector_stays_cancelled(self) -> None:
        """A connector that reports failure synchronously on stopConnecting does not turn cancel into a retry."""
        d = self.resolver().query("example.test", A)
        self.truncate(d)
        host, port, factory, timeout, bind = self.reactor.tcpClients[0]
        connector = self.reactor.connectors[0]
        connector.stopConnecting = lambda: factory.clientConnectionFailed(
            connector, Failure(Exception("user"))
        )
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.reactor.udp), 1)
        self.assertClean()


class DNSErrorTests(SynchronousTestCase):
    """The error's text goes into logs and Postfix replies."""

    def test_str_is_short_ascii_line(self) -> None:
        """str(DNSError) is one ASCII line naming the failure, the name and the type."""
        error = DNSError("example.test", MX, "servfail", "long\nmessage")
        text = str(error)
        self.assertEqual(text, "DNS SERVFAIL for example.test MX")
        self.assertEqual(error.kind, "servfail")
        self.assertEqual(error.message, "long\nmessage")

    def test_str_scrubs_unprintable(self) -> None:
        """Control and non-ASCII characters never reach str(DNSError)."""
        text = str(DNSError("a\nb\u00e9.test", A, "timeout", "m"))
        self.assertTrue(text.isascii())
        self.assertNotIn("\n", text)

    def test_message_names_servers_and_reason(self) -> None:
        """The message from a failed lookup names the name/type, the last reason and each server tried."""
        reactor = FakeReactor()
        d = Resolver(reactor, [SERVER1, "::1"], attempts=1).query("example.test", TXT)
        port = reactor.udp[0]
        port.receive(response(port.query(), rcode=dns.rcode.REFUSED))
        port = reactor.udp[1]
        port.receive(response(port.query(), rcode=dns.rcode.REFUSED), ("::1", 53))
        error = self.failureResultOf(d, DNSError).value
        self.assertEqual((error.name, error.rdtype, error.kind), ("example.test", TXT, "refused"))
        self.assertIn("example.test/TXT", error.message)
        self.assertIn(SERVER1, error.message)
        self.assertIn("::1", error.message)
        self.assertIn("REFUSED", error.message)
        self.assertEqual(str(error), "DNS REFUSED for example.test TXT")


class ResolverKindTests(SynchronousTestCase):
    """Which failed lookups are the resolver's (an outage) and which the name's."""

    def error(self, kind: str) -> DNSError:
        return DNSError("example.test", MX, kind, "m")

    def test_resolver_kinds(self) -> None:
        """Timeouts, network errors and error rcodes are the resolver's; the first kind is named."""
        for kind in ("timeout", "network", "refused", "servfail", "formerr", "notimp", "rcode"):
            self.assertEqual(resolver_kind([self.error(kind)]), kind)
        self.assertEqual(resolver_kind([self.error("timeout"), self.error("servfail")]), "timeout")

    def test_name_kinds(self) -> None:
        """A CNAME loop or a malformed answer is about the name, even beside a timeout."""
        for kind in ("cname-loop", "malformed"):
            self.assertIsNone(resolver_kind([self.error(kind)]))
            self.assertIsNone(resolver_kind([self.error("timeout"), self.error(kind)]))

    def test_no_errors_or_other_errors(self) -> None:
        """No errors, or an error that is not a DNSError, is no outage."""
        self.assertIsNone(resolver_kind([]))
        self.assertIsNone(resolver_kind([ValueError("x")]))

    def test_kind_text(self) -> None:
        """Kinds are written as log lines write them; an unknown kind as it is."""
        self.assertEqual(kind_text("servfail"), "SERVFAIL")
        self.assertEqual(kind_text("network"), "network error")
        self.assertEqual(kind_text("new-kind"), "new-kind")


class SystemNameserversTests(SynchronousTestCase):
    """Reading resolv.conf."""

    def setUp(self) -> None:
        # A plain temporary directory: trial's mktemp litters the working
        # directory when pytest runs the test.
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.directory = directory.name

    def test_parses_nameserver_lines(self) -> None:
        """Only valid 'nameserver' addresses are returned, in order, zone ids stripped."""
        path = os.path.join(self.directory, "resolv.conf")
        with open(path, "w") as f:
            f.write(
                "# generated\n"
                "search example.test\n"
                "nameserver 127.0.0.53\n"
                "nameserver ::1  # local\n"
                "nameserver fe80::1%eth0\n"
                "nameserver not-an-address\n"
                ";nameserver 192.0.2.1\n"
                "nameserver\n"
                "options trust-ad edns0\n"
            )
        self.assertEqual(system_nameservers(path), ["127.0.0.53", "::1", "fe80::1"])

    def test_missing_file(self) -> None:
        """A missing resolv.conf gives an empty list."""
        self.assertEqual(system_nameservers(os.path.join(self.directory, "missing")), [])


class ConstructorTests(SynchronousTestCase):
    """Configuration mistakes are caught when the resolver is built."""

    def test_rejects_bad_configuration(self) -> None:
        """No servers, a hostname as server, a non-positive timeout or zero attempts raise ValueError."""
        reactor = FakeReactor()
        with self.assertRaises(ValueError):
            Resolver(reactor, [])
        with self.assertRaisesRegex(ValueError, "resolver.test"):
            Resolver(reactor, ["resolver.test"])
        with self.assertRaises(ValueError):
            Resolver(reactor, [SERVER1], timeout=0)
        with self.assertRaises(ValueError):
            Resolver(reactor, [SERVER1], attempts=0)
        Resolver(reactor, (SERVER1, "::1"))
