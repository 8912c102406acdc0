"""
Tests for mxpolicyd.net.https: HTTP semantics through treq's in-memory agent, and
the real path (our DNS answers, TCP by IP, TLS with SNI and name checks)
through a MemoryReactorClock wired to an in-memory TLS server.
"""

from __future__ import annotations

import datetime
import gzip
import inspect
from dataclasses import dataclass, field
from typing import Any

import dns.rdata
import dns.rdataclass
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509Store
from service_identity import VerificationError
from treq.testing import RequestTraversalAgent
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import PrivateCertificate
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from mxpolicyd.net import https as fetch
from mxpolicyd.net.dns import Answer, DNSError
from mxpolicyd.net.https import (
    FetchError,
    PolicyFetcher,
    is_public_address,
    load_trust_root,
)

A = 1
AAAA = 28
IN = dns.rdataclass.IN
DOMAIN = "example.test"
HOST = "mta-sts.example.test"
POLICY_PATH = b"/.well-known/mta-sts.txt"
POLICY = b"version: STSv1\nmode: enforce\nmx: mail.example.test\nmax_age: 86400\n"


# -- fakes -------------------------------------------------------------------


@dataclass
class FakeResolver:
    """Answers from a table; an Exception entry fails, a Deferred is returned as is."""

    table: dict[tuple[str, int], Any] = field(default_factory=dict)
    queries: list[tuple[str, int]] = field(default_factory=list)

    def query(self, name: str, rdtype: int) -> Deferred[Any]:
        self.queries.append((name, rdtype))
        entry = self.table.get((name, rdtype), [])
        if isinstance(entry, Deferred):
            return entry
        if isinstance(entry, Exception):
            return fail(entry)
        records = tuple(dns.rdata.from_text(IN, rdtype, a) for a in entry)
        return succeed(Answer(name, rdtype, 0, records, 300, False, name, ()))


def resolver_for(a: Any = (), aaaa: Any = ()) -> FakeResolver:
    return FakeResolver({(HOST, A): a, (HOST, AAAA): aaaa})


def servfail(rdtype: int) -> DNSError:
    return DNSError(HOST, rdtype, "servfail", "SERVFAIL from 127.0.0.1")


class PolicyResource(Resource):
    """A policy host: fixed status, headers and body; remembers every request."""

    isLeaf = True

    def __init__(
        self,
        body: bytes = POLICY,
        code: int = 200,
        headers: dict[str, str] | None = None,
        content_type: str | None = "text/plain",
        finish: bool = True,
        chunks: int = 1,
    ) -> None:
        super().__init__()
        self.body = body
        self.code = code
        self.headers = headers or {}
        self.content_type = content_type
        self.finish = finish
        self.chunks = chunks
        self.requests: list[Any] = []
        self.lost: list[Failure] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        request.notifyFinish().addErrback(self.lost.append)
        request.setResponseCode(self.code)
        if self.content_type is None:
            request.defaultContentType = None
        else:
            request.setHeader("content-type", self.content_type)
        for name, value in self.headers.items():
            request.setHeader(name, value)
        if self.finish and self.chunks == 1:
            return self.body
        step = max(1, -(-len(self.body) // self.chunks))
        for start in range(0, len(self.body), step):
            request.write(self.body[start : start + step])
        if self.finish:
            request.finish()
        return NOT_DONE_YET


# -- certificates --------------------------------------------------------------

_NOW = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
_DAY = datetime.timedelta(days=1)


@dataclass
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def server_options(self) -> Any:
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return PrivateCertificate.loadPEM(self.cert_pem() + key_pem).options()


def _issue(
    subject: str,
    issuer: Issued | None,
    names: tuple[str, ...] = (),
    not_before: datetime.datetime = _NOW - _DAY,
    not_after: datetime.datetime = _NOW + _DAY,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True
        )
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
            critical=False,
        )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


CA = _issue("mxpolicyd test CA", None)
OTHER_CA = _issue("mxpolicyd other CA", None)
GOOD = _issue(HOST, CA, (HOST,))
WRONG_NAME = _issue("mta-sts.other.test", CA, ("mta-sts.other.test",))
EXPIRED = _issue(HOST, CA, (HOST,), _NOW - 10 * _DAY, _NOW - 2 * _DAY)
UNTRUSTED = _issue(HOST, OTHER_CA, (HOST,))


def write_pem(case: SynchronousTestCase, *issued: Issued) -> str:
    path = case.mktemp()
    with open(path, "wb") as f:
        f.write(b"".join(i.cert_pem() for i in issued))
    return path


# -- address filter ------------------------------------------------------------


class AddressFilterTests(SynchronousTestCase):
    BLOCKED = [
        "127.0.0.1",
        "127.1.2.3",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::1",
        "not an address",
    ]
    ALLOWED = [
        "1.1.1.1",
        "93.184.216.34",
        "100.128.0.1",
        "2606:4700::1111",
        "64:ff9b::808:808",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
    ]

    def test_blocked(self) -> None:
        """Loopback, private, link-local, CGNAT, multicast, reserved and documentation addresses are refused."""
        wrong = [a for a in self.BLOCKED if is_public_address(a)]
        self.assertEqual(wrong, [])

    def test_allowed(self) -> None:
        """Public addresses pass, including IPv6 forms that embed a public IPv4 address."""
        wrong = [a for a in self.ALLOWED if not is_public_address(a)]
        self.assertEqual(wrong, [])


class FetchErrorTests(SynchronousTestCase):
    def test_fields_and_str(self) -> None:
        """A FetchError keeps domain, kind and message; str() is the message alone."""
        e = FetchError(DOMAIN, "status", f"{HOST}: HTTP status 404, not 200")
        message = f"{HOST}: HTTP status 404, not 200"
        self.assertEqual((e.domain, e.kind, e.message), (DOMAIN, "status", message))
        self.assertEqual(str(e), f"{HOST}: HTTP status 404, not 200")

    def test_message_one_ascii_line(self) -> None:
        """Server-supplied text in a message is folded to one short printable ASCII line."""
        hostile = "x: to https://\u00e9vil.test/\r\nInjected: yes" + "a" * 1000
        e = FetchError(DOMAIN, "redirect", hostile)
        self.assertTrue(str(e).isascii())
        self.assertNotIn("\n", str(e))
        self.assertNotIn("\r", str(e))
        self.assertLessEqual(len(str(e)), 300)


# -- HTTP semantics through treq's in-memory agent -------------------------------


class StubbedFetch:
    """A fetcher whose HTTP goes to an in-memory resource; remembers the addresses it was given."""

    def __init__(
        self,
        resource: Resource,
        resolver: FakeResolver | None = None,
        **options: Any,
    ) -> None:
        self.clock = Clock()
        self.agent = RequestTraversalAgent(resource)
        self.addresses: list[list[str]] = []

        def agent_factory(addresses: Any) -> Any:
            self.addresses.append(list(addresses))
            return self.agent

        self.fetcher = PolicyFetcher(
            self.clock,
            resolver if resolver is not None else resolver_for(a=["192.0.2.10"]),
            agent_factory=agent_factory,
            **options,
        )


class HTTPTests(SynchronousTestCase):
    def fetch(
        self, resource: Resource, **options: Any
    ) -> tuple[Deferred[bytes], StubbedFetch]:
        stub = StubbedFetch(resource, **options)
        return stub.fetcher.fetch(DOMAIN), stub

    def assertKind(self, d: Deferred[bytes], kind: str) -> FetchError:
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, kind, str(error))
        self.assertEqual(error.domain, DOMAIN)
        return error

    def test_ok(self) -> None:
        """A 200 text/plain response yields the body, fetched with GET from the well-known path on the policy host."""
        resource = PolicyResource()
        d, _ = self.fetch(resource)
        self.assertEqual(self.successResultOf(d), POLICY)
        [request] = resource.requests
        self.assertEqual(request.method, b"GET")
        self.assertEqual(request.path, b"/.well-known/mta-sts.txt")
        self.assertEqual(request.getHeader("host"), HOST)

    def test_charset_parameter(self) -> None:
        """text/plain with a charset parameter, in any case, is accepted."""
        d, _ = self.fetch(PolicyResource(content_type="Text/Plain; charset=utf-8"))
        self.assertEqual(self.successResultOf(d), POLICY)

    def test_not_found(self) -> None:
        """A 404 fails as 'status' and the message carries the code."""
        d, _ = self.fetch(PolicyResource(code=404, body=b"nope"))
        self.assertIn("404", str(self.assertKind(d, "status")))

    def test_server_error(self) -> None:
        """A 500 fails as 'status'."""
        d, _ = self.fetch(PolicyResource(code=500, body=b"oops"))
        self.assertKind(d, "status")

    def test_redirects_not_followed(self) -> None:
        """301, 302, 307 and 308 fail as 'redirect' after exactly one request."""
        for code in (301, 302, 307, 308):
            resource = PolicyResource(
                code=code, headers={"location": "https://mta-sts.example.test/other"}
            )
            d, _ = self.fetch(resource)
            error = self.assertKind(d, "redirect")
            self.assertIn(str(code), str(error))
            self.assertEqual(len(resource.requests), 1)

    def test_html(self) -> None:
        """A text/html body fails as 'content-type'."""
        d, _ = self.fetch(PolicyResource(content_type="text/html"))
        self.assertKind(d, "content-type")

    def test_plain_lookalike(self) -> None:
        """A media type that merely starts with text/plain is refused."""
        d, _ = self.fetch(PolicyResource(content_type="text/plainx"))
        self.assertKind(d, "content-type")

    def test_missing_content_type(self) -> None:
        """A response without Content-Type fails as 'content-type'."""
        d, _ = self.fetch(PolicyResource(content_type=None))
        self.assertKind(d, "content-type")

    def test_exactly_max_size(self) -> None:
        """A body of exactly max_size bytes is accepted."""
        body = b"x" * 100
        d, _ = self.fetch(PolicyResource(body=body), max_size=100)
        self.assertEqual(self.successResultOf(d), body)

    def test_content_length_over_max_size(self) -> None:
        """A declared Content-Length of max_size + 1 fails as 'too-large'."""
        d, _ = self.fetch(PolicyResource(body=b"x" * 101), max_size=100)
        self.assertKind(d, "too-large")

    def test_streamed_over_max_size(self) -> None:
        """A chunked body growing past max_size fails as 'too-large' and the connection is closed."""
        resource = PolicyResource(body=b"x" * 101, chunks=4, finish=False)
        d, stub = self.fetch(resource, max_size=100)
        self.assertKind(d, "too-large")
        stub.agent.flush()
        self.assertEqual(len(resource.lost), 1)

    def test_streamed_max_size(self) -> None:
        """A chunked body of exactly max_size bytes is accepted."""
        d, _ = self.fetch(PolicyResource(body=b"y" * 100, chunks=3), max_size=100)
        self.assertEqual(self.successResultOf(d), b"y" * 100)

    def test_gzip_decoded(self) -> None:
        """A gzip-encoded body is returned decoded."""
        resource = PolicyResource(
            body=gzip.compress(POLICY), headers={"content-encoding": "gzip"}
        )
        d, _ = self.fetch(resource)
        self.assertEqual(self.successResultOf(d), POLICY)
        self.assertIn(b"gzip", resource.requests[0].getHeader("accept-encoding").encode())

    def test_gzip_counts_decoded_bytes(self) -> None:
        """The size cap counts decoded bytes: a small gzip body that inflates past max_size fails."""
        resource = PolicyResource(
            body=gzip.compress(b"z" * 10000), headers={"content-encoding": "gzip"}
        )
        d, _ = self.fetch(resource, max_size=1000)
        self.assertKind(d, "too-large")

    def test_body_never_ends(self) -> None:
        """A body that never ends fails as 'timeout' at the deadline, and the connection is closed."""
        resource = PolicyResource(finish=False)
        d, stub = self.fetch(resource, timeout=60.0)
        stub.clock.advance(59.9)
        self.assertNoResult(d)
        stub.clock.advance(0.1)
        error = self.assertKind(d, "timeout")
        self.assertIn(HOST, str(error))
        stub.agent.flush()
        self.assertEqual(len(resource.lost), 1)
        self.assertEqual(stub.clock.getDelayedCalls(), [])

    def test_no_result_before_deadline_when_dns_hangs(self) -> None:
        """A DNS query that never answers ends as 'timeout' and the query is cancelled."""
        cancelled: list[Deferred[Any]] = []
        pending: Deferred[Any] = Deferred(cancelled.append)
        resolver = FakeResolver({(HOST, A): pending, (HOST, AAAA): []})
        d, stub = self.fetch(PolicyResource(), resolver=resolver, timeout=5.0)
        self.assertNoResult(d)
        stub.clock.advance(5.0)
        self.assertKind(d, "timeout")
        self.assertEqual(cancelled, [pending])
        self.assertEqual(stub.addresses, [])


class ResolutionTests(SynchronousTestCase):
    def run_fetch(
        self, resolver: FakeResolver, **options: Any
    ) -> tuple[Deferred[bytes], StubbedFetch]:
        stub = StubbedFetch(PolicyResource(), resolver, **options)
        return stub.fetcher.fetch(DOMAIN), stub

    def test_queries_our_resolver(self) -> None:
        """AAAA and A for mta-sts.<domain> are asked of the injected resolver."""
        resolver = resolver_for(a=["192.0.2.10"])
        d, _ = self.run_fetch(resolver)
        self.successResultOf(d)
        self.assertEqual(sorted(resolver.queries), [(HOST, A), (HOST, AAAA)])

    def test_order_ipv6_then_ipv4(self) -> None:
        """Addresses are tried IPv6 first, each family in answer order, duplicates dropped."""
        resolver = resolver_for(
            a=["192.0.2.2", "192.0.2.1", "192.0.2.2"], aaaa=["2001:db8::2", "2001:db8::1"]
        )
        d, stub = self.run_fetch(resolver)
        self.successResultOf(d)
        self.assertEqual(
            stub.addresses,
            [["2001:db8::2", "2001:db8::1", "192.0.2.2", "192.0.2.1"]],
        )

    def test_a_fails_aaaa_answers(self) -> None:
        """A failed A query does not matter when AAAA has addresses."""
        d, stub = self.run_fetch(resolver_for(a=servfail(A), aaaa=["2001:db8::5"]))
        self.assertEqual(self.successResultOf(d), POLICY)
        self.assertEqual(stub.addresses, [["2001:db8::5"]])

    def test_aaaa_fails_a_answers(self) -> None:
        """A failed AAAA query does not matter when A has addresses."""
        d, stub = self.run_fetch(resolver_for(a=["192.0.2.7"], aaaa=servfail(AAAA)))
        self.successResultOf(d)
        self.assertEqual(stub.addresses, [["192.0.2.7"]])

    def test_both_fail(self) -> None:
        """Both queries failing is a 'dns' failure naming the host; no HTTP happens."""
        d, stub = self.run_fetch(resolver_for(a=servfail(A), aaaa=servfail(AAAA)))
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "dns")
        self.assertIn(HOST, str(error))
        self.assertIn("servfail", str(error))
        self.assertEqual(stub.addresses, [])

    def test_no_addresses(self) -> None:
        """Empty answers for both families are a 'dns' failure."""
        d, stub = self.run_fetch(resolver_for())
        self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "dns")
        self.assertEqual(stub.addresses, [])

    def test_resolver_raises(self) -> None:
        """A resolver that raises instead of returning a Deferred is a 'dns' failure, not a crash."""

        class Broken:
            def query(self, name: str, rdtype: int) -> Deferred[Any]:
                raise RuntimeError("boom")

        d, _ = self.run_fetch(Broken())  # type: ignore[arg-type]
        self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "dns")

    def test_invalid_domain(self) -> None:
        """A domain that cannot form a host name fails as 'dns' without any query."""
        resolver = resolver_for(a=["192.0.2.10"])
        stub = StubbedFetch(PolicyResource(), resolver)
        for bad in ("", "exa mple.test", "a..test", "-bad.test", "\u00e9.test"):
            d = stub.fetcher.fetch(bad)
            self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "dns")
        self.assertEqual(resolver.queries, [])

    def test_block_private_only_private(self) -> None:
        """With block_private, a host with only loopback/private addresses fails as 'blocked'."""
        resolver = resolver_for(a=["127.0.0.1", "10.0.0.1"], aaaa=["::1", "fe80::1"])
        d, stub = self.run_fetch(resolver, block_private=True)
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "blocked")
        self.assertEqual(stub.addresses, [])

    def test_block_private_keeps_public(self) -> None:
        """With block_private, non-public addresses are dropped and public ones kept in order."""
        resolver = resolver_for(
            a=["192.168.1.1", "1.1.1.1", "100.64.0.1"], aaaa=["fd00::1", "2606:4700::1111"]
        )
        d, stub = self.run_fetch(resolver, block_private=True)
        self.successResultOf(d)
        self.assertEqual(stub.addresses, [["2606:4700::1111", "1.1.1.1"]])

    def test_private_allowed_by_default(self) -> None:
        """Without block_private, loopback addresses are used (tests and local servers)."""
        d, stub = self.run_fetch(resolver_for(a=["127.0.0.1"]))
        self.successResultOf(d)
        self.assertEqual(stub.addresses, [["127.0.0.1"]])


# -- the real path: TCP by IP, TLS, in memory ------------------------------------

_TLS_TAKES_CLOCK = "clock" in inspect.signature(TLSMemoryBIOFactory).parameters


class ClientTransport(iosim.FakeTransport):
    """An in-memory client transport that tells an abort from a graceful close."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class RawResponder(Protocol):
    """
    A hand-made HTTP server: answers the first request with fixed bytes,
    then ends TLS with close_notify, ends TCP without it, or leaves the
    connection open.
    """

    def __init__(self, response: bytes, end: str, clock: Clock) -> None:
        self.response = response
        self.end = end
        self.clock = clock
        self.request = b""

    def dataReceived(self, data: bytes) -> None:
        done = b"\r\n\r\n" in self.request
        self.request += data
        if done or b"\r\n\r\n" not in self.request:
            return
        assert self.transport is not None
        self.transport.write(self.response)
        if self.end == "close_notify":
            self.transport.loseConnection()
        elif self.end == "fin":
            # Under TLS: the TCP connection itself, with no close_notify;
            # once newer Twisteds' TLS has flushed the writes it batches.
            tcp = self.transport.transport  # type: ignore[attr-defined]
            self.clock.callLater(0, tcp.loseConnection)
        else:
            assert self.end == "open", self.end


class RawFactory(Factory):
    """Builds L{RawResponder}s on the clock of the L{TLSServer} that takes it."""

    clock = Clock()

    def __init__(self, response: bytes, end: str) -> None:
        self.response = response
        self.end = end

    def buildProtocol(self, addr: Any) -> RawResponder:
        return RawResponder(self.response, self.end, self.clock)


def raw_responder(response: bytes, end: str) -> RawFactory:
    return RawFactory(response, end)


def no_length_response(body: bytes) -> bytes:
    """A 200 whose body has neither Content-Length nor chunking: it ends with the connection."""
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + body


class TLSServer:
    """An HTTPS policy server on an in-memory connection, recording the SNI it saw."""

    def __init__(
        self, issued: Issued, resource: Resource | None = None, http: Factory | None = None
    ) -> None:
        self.clock = Clock()
        self.server_names: list[bytes | None] = []
        options = issued.server_options()
        options.getContext().set_tlsext_servername_callback(
            lambda conn: self.server_names.append(conn.get_servername())
        )
        if http is None:
            http = Site(resource, reactor=self.clock)
        elif isinstance(http, RawFactory):
            http.clock = self.clock
        kw = {"clock": self.clock} if _TLS_TAKES_CLOCK else {}
        self.factory = TLSMemoryBIOFactory(options, False, http, **kw)

    def accept(self, reactor: MemoryReactorClock, index: int = -1) -> iosim.IOPump:
        host, port, client_factory, _, _ = reactor.tcpClients[index]
        address = IPv4Address("TCP", "192.0.2.10", port)
        server = self.factory.buildProtocol(address)
        client = client_factory.buildProtocol(address)
        return iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True),
            client,
            ClientTransport(client, isServer=False),
            greet=False,
        )

    def run(self, reactor: MemoryReactorClock, pump: iosim.IOPump, rounds: int = 30) -> None:
        for _ in range(rounds):
            reactor.advance(0)
            self.clock.advance(0)
            pump.flush()

    def run_until(self, reactor: MemoryReactorClock, pump: iosim.IOPump, d: Deferred[Any]) -> None:
        """Move bytes one step at a time and stop as soon as C{d} has a result."""
        for _ in range(200):
            if d.called:
                return
            reactor.advance(0)
            self.clock.advance(0)
            pump.pump()


class RealPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.ca_file = write_pem(self, CA)

    def fetcher(self, resolver: FakeResolver | None = None, **options: Any) -> PolicyFetcher:
        options.setdefault("trust_root", self.ca_file)
        return PolicyFetcher(
            self.reactor, resolver or resolver_for(a=["192.0.2.10"]), **options
        )

    def serve(
        self,
        issued: Issued,
        resource: Resource | None = None,
        http: Factory | None = None,
        **options: Any,
    ) -> tuple[Deferred[bytes], TLSServer, iosim.IOPump]:
        """Fetch from an in-memory HTTPS server presenting C{issued} and run the exchange."""
        d = self.fetcher(**options).fetch(DOMAIN)
        if http is None:
            server = TLSServer(issued, resource or PolicyResource())
        else:
            server = TLSServer(issued, http=http)
        pump = server.accept(self.reactor)
        server.run(self.reactor, pump)
        return d, server, pump

    def test_https_ok(self) -> None:
        """The real path connects to the resolved IP and port, sends SNI, verifies the chain to the given CA and returns the body."""
        resource = PolicyResource()
        d, server, _ = self.serve(GOOD, resource, port=8443)
        self.assertEqual(self.successResultOf(d), POLICY)
        host, port = self.reactor.tcpClients[0][:2]
        self.assertEqual((host, port), ("192.0.2.10", 8443))
        self.assertEqual(server.server_names, [HOST.encode()])
        self.assertEqual(resource.requests[0].getHeader("host"), HOST)

    def test_graceful_close_after_success(self) -> None:
        """After a good fetch the connection is closed gracefully, not aborted, and nothing stays scheduled."""
        d, _, pump = self.serve(GOOD)
        self.successResultOf(d)
        self.assertTrue(pump.clientIO.disconnected)
        self.reactor.advance(fetch._CLOSE_GRACE)
        self.assertFalse(pump.clientIO.aborted)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stuck_close_aborted(self) -> None:
        """A server that never completes the TLS close after the response is cut off after the grace period."""
        d = self.fetcher().fetch(DOMAIN)
        server = TLSServer(GOOD, PolicyResource())
        pump = server.accept(self.reactor)
        server.run_until(self.reactor, pump, d)
        self.assertEqual(self.successResultOf(d), POLICY)
        self.assertFalse(pump.clientIO.disconnected)
        self.reactor.advance(fetch._CLOSE_GRACE - 0.1)
        self.assertFalse(pump.clientIO.aborted)
        self.reactor.advance(0.1)
        self.assertTrue(pump.clientIO.aborted)

    def test_wrong_name(self) -> None:
        """A certificate for another name fails as 'tls' and says so; no request reaches the server."""
        resource = PolicyResource()
        d, _, _ = self.serve(WRONG_NAME, resource)
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "tls")
        self.assertEqual(str(error), f"{HOST}: certificate not valid for this name")
        self.assertEqual(resource.requests, [])

    def test_expired(self) -> None:
        """An expired certificate fails as 'tls'; no request reaches the server."""
        resource = PolicyResource()
        d, _, _ = self.serve(EXPIRED, resource)
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "tls")
        self.assertIn(HOST, str(error))
        self.assertIn("certificate verify failed", str(error))
        self.assertEqual(resource.requests, [])

    def test_untrusted_ca(self) -> None:
        """A certificate from a CA outside the trust root fails as 'tls'; no request reaches the server."""
        resource = PolicyResource()
        d, _, _ = self.serve(UNTRUSTED, resource)
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "tls")
        self.assertIn("certificate verify failed", str(error))
        self.assertEqual(resource.requests, [])

    def test_trust_root_file_with_several_certificates(self) -> None:
        """Every certificate of the trust_root PEM file is trusted, not only the first."""
        d, _, _ = self.serve(UNTRUSTED, trust_root=write_pem(self, CA, OTHER_CA))
        self.assertEqual(self.successResultOf(d), POLICY)

    def test_http_errors_on_real_path(self) -> None:
        """A 302 over real TLS fails as 'redirect' with one request and the connection aborted."""
        resource = PolicyResource(code=302, headers={"location": "/elsewhere"})
        d, _, pump = self.serve(GOOD, resource)
        self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "redirect")
        self.assertEqual(len(resource.requests), 1)
        self.assertTrue(pump.clientIO.aborted)

    def test_body_never_ends(self) -> None:
        """A body that never ends fails as 'timeout' at the deadline; the TCP connection is aborted and nothing stays scheduled."""
        resource = PolicyResource(finish=False)
        d, server, pump = self.serve(GOOD, resource, timeout=30.0)
        self.assertEqual(len(resource.requests), 1)
        self.assertNoResult(d)
        self.reactor.advance(30.0)
        self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "timeout")
        self.assertTrue(pump.clientIO.aborted)
        server.run(self.reactor, pump)
        self.assertEqual(len(resource.lost), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_endless_headers_cut_at_total_limit(self) -> None:
        """Headers that never end fail as 'too-large' once all bytes received pass max_size + 32 KiB, long before the deadline, and the connection is aborted."""
        line = b"X-Padding: " + b"a" * 2000 + b"\r\n"
        headers = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + line * 200
        d, _, pump = self.serve(GOOD, http=raw_responder(headers, "open"), max_size=1000)
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "too-large", str(error))
        self.assertIn(f"{1000 + fetch.HEADER_ALLOWANCE} byte limit", str(error))
        self.assertTrue(pump.clientIO.aborted)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def exact_response(self, size: int, body: bytes = POLICY) -> bytes:
        """A complete response of exactly C{size} bytes, padded with a header."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
        padding = size - len(head) - len(b"X-Padding: \r\n\r\n") - len(body)
        response = head + b"X-Padding: " + b"p" * padding + b"\r\n\r\n" + body
        assert len(response) == size
        return response

    def test_total_limit_counts_every_byte(self) -> None:
        """A response of exactly max_size + 32 KiB bytes (status line, headers and body) is accepted; one byte more fails as 'too-large'."""
        limit = len(POLICY) + fetch.HEADER_ALLOWANCE
        # One header line may not pass Twisted's 16 KiB line limit.
        extra = b"X-Filler: " + b"f" * 15000 + b"\r\n"
        for size, ok in ((limit, True), (limit + 1, False)):
            response = self.exact_response(size - 2 * len(extra))
            response = response.replace(b"X-Padding", extra * 2 + b"X-Padding", 1)
            self.assertEqual(len(response), size)
            self.reactor = MemoryReactorClock()
            d, _, _ = self.serve(
                GOOD, http=raw_responder(response, "close_notify"), max_size=len(POLICY)
            )
            if ok:
                self.assertEqual(self.successResultOf(d), POLICY)
            else:
                self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "too-large")

    def test_body_without_length_ended_by_close_notify(self) -> None:
        """A body without Content-Length ended by the server's TLS close_notify is the policy."""
        d, _, _ = self.serve(GOOD, http=raw_responder(no_length_response(POLICY), "close_notify"))
        self.assertEqual(self.successResultOf(d), POLICY)

    def test_body_without_length_cut_by_tcp_fin(self) -> None:
        """A body without Content-Length ended by a TCP FIN with no close_notify fails as 'truncated', though it parses as a policy."""
        d, _, _ = self.serve(GOOD, http=raw_responder(no_length_response(POLICY), "fin"))
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "truncated", str(error))
        self.assertIn("close_notify", str(error))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_content_length_body_then_tcp_fin(self) -> None:
        """A body whose Content-Length is reached counts even if the server then drops TCP without close_notify."""
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(POLICY), POLICY)
        )
        d, _, _ = self.serve(GOOD, http=raw_responder(response, "fin"))
        self.assertEqual(self.successResultOf(d), POLICY)

    def test_content_length_body_cut_by_tcp_fin(self) -> None:
        """A body that stops short of its Content-Length fails, whatever it parses as."""
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(POLICY) + 10, POLICY)
        )
        for end in ("fin", "close_notify"):
            self.reactor = MemoryReactorClock()
            d, _, _ = self.serve(GOOD, http=raw_responder(response, end))
            self.failureResultOf(d, FetchError)

    def test_chunked_body_without_final_chunk(self) -> None:
        """A chunked body with no final chunk fails even when TLS closes cleanly."""
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%s\r\n" % (len(POLICY), POLICY)
        )
        d, _, _ = self.serve(GOOD, http=raw_responder(response, "close_notify"))
        self.failureResultOf(d, FetchError)
        self.reactor = MemoryReactorClock()
        d, _, _ = self.serve(GOOD, http=raw_responder(response + b"0\r\n\r\n", "fin"))
        self.assertEqual(self.successResultOf(d), POLICY)

    def test_connect_timeout(self) -> None:
        """A connection attempt that never completes fails as 'timeout' and the attempt is stopped."""
        d = self.fetcher(timeout=10.0).fetch(DOMAIN)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(10.0)
        self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "timeout")
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_next_address_after_refusal(self) -> None:
        """A refused connection moves on to the next address, IPv6 ones first, each attempt with its own timeout."""
        resolver = resolver_for(a=["192.0.2.10"], aaaa=["2001:db8::10"])
        d = self.fetcher(resolver, connect_timeout=7.0).fetch(DOMAIN)
        host, port, factory, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("2001:db8::10", 443, 7.0))
        factory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(ConnectionRefusedError())
        )
        self.assertEqual(self.reactor.tcpClients[1][:2], ("192.0.2.10", 443))
        server = TLSServer(GOOD, PolicyResource())
        pump = server.accept(self.reactor)
        server.run(self.reactor, pump)
        self.assertEqual(self.successResultOf(d), POLICY)

    def test_all_refused(self) -> None:
        """Every address refusing is a 'connect' failure that names the addresses."""
        resolver = resolver_for(a=["192.0.2.10", "192.0.2.11"])
        d = self.fetcher(resolver).fetch(DOMAIN)
        for index in range(2):
            factory = self.reactor.tcpClients[index][2]
            factory.clientConnectionFailed(
                self.reactor.connectors[index], Failure(ConnectionRefusedError())
            )
        error = self.failureResultOf(d, FetchError).value
        self.assertEqual(error.kind, "connect")
        self.assertIn("192.0.2.10", str(error))
        self.assertIn("192.0.2.11", str(error))

    def test_blocked_never_connects(self) -> None:
        """With block_private, loopback-only answers fail as 'blocked' before any connection."""
        d = self.fetcher(resolver_for(a=["127.0.0.1"]), block_private=True).fetch(DOMAIN)
        self.assertEqual(self.failureResultOf(d, FetchError).value.kind, "blocked")
        self.assertEqual(self.reactor.tcpClients, [])


# -- one TLS context for every fetch -------------------------------------------

OTHER_DOMAIN = "other.test"
OTHER_HOST = "mta-sts.other.test"


def client_connection(creator: Any) -> SSL.Connection:
    """The OpenSSL connection C{creator} makes for a TLS client protocol."""
    factory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(Protocol))
    return creator.clientConnectionForTLS(factory.buildProtocol(None))


class _Talker(Protocol):
    """Sends a line once connected; records what comes back and how it ended."""

    def __init__(self) -> None:
        self.received = b""
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"hello\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason


class _Just(Factory):
    """Builds one given protocol."""

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def handshake(creator: Any, issued: Issued) -> tuple[bytes, Failure | None]:
    """
    A TLS client made by C{creator} against an in-memory echo server that
    presents C{issued}: what the client got back, and why its connection
    ended (None while it is open, as after a good handshake).
    """
    clock = Clock()
    kw = {"clock": clock} if _TLS_TAKES_CLOCK else {}
    talker = _Talker()
    client_factory = TLSMemoryBIOFactory(creator, True, _Just(talker), **kw)
    server_factory = TLSMemoryBIOFactory(
        issued.server_options(), False, Factory.forProtocol(_Echo), **kw
    )
    address = IPv4Address("TCP", "192.0.2.10", 443)
    client = client_factory.buildProtocol(address)
    server = server_factory.buildProtocol(address)
    pump = iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True),
        client,
        iosim.FakeTransport(client, isServer=False),
        greet=False,
    )
    for _ in range(30):
        clock.advance(0)
        pump.flush()
    return talker.received, talker.reason


class SharedContextTests(SynchronousTestCase):
    """
    The trust root is loaded into one OpenSSL context when the fetcher is
    built; every fetch's connection uses that context, with its own SNI and
    its own name check.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def fetcher(self, resolver: FakeResolver | None = None, **options: Any) -> PolicyFetcher:
        options.setdefault("trust_root", write_pem(self, CA))
        return PolicyFetcher(
            self.reactor, resolver or resolver_for(a=["192.0.2.10"]), **options
        )

    def count_calls(self, owner: Any, name: str) -> list[Any]:
        """Record every call of method C{name} of class C{owner}, still calling it."""
        calls: list[Any] = []
        original = getattr(owner, name)

        def counted(this: Any, *args: Any) -> Any:
            calls.append(args)
            return original(this, *args)

        self.patch(owner, name, counted)
        return calls

    def fetch_many(self, fetcher: PolicyFetcher, issued: Issued, count: int) -> list[Failure | bytes]:
        """C{count} fetches in turn from servers presenting C{issued}, each to its end."""
        results: list[Failure | bytes] = []
        for index in range(count):
            d = fetcher.fetch(DOMAIN)
            d.addBoth(results.append)
            server = TLSServer(issued, PolicyResource())
            pump = server.accept(self.reactor, index)
            server.run(self.reactor, pump)
        return results

    def test_system_store_loaded_once(self) -> None:
        """With the system trust store, it is loaded when the fetcher is built and not again for each fetch; each fetch still verifies against it."""
        loads = self.count_calls(SSL.Context, "set_default_verify_paths")
        fetcher = PolicyFetcher(self.reactor, resolver_for(a=["192.0.2.10"]))
        self.assertEqual(len(loads), 1)
        results = self.fetch_many(fetcher, GOOD, 5)
        self.assertEqual(len(results), 5)
        for result in results:
            # Our test CA is not in the system store.
            assert isinstance(result, Failure)
            self.assertEqual(result.value.kind, "tls")
            self.assertIn("certificate verify failed", str(result.value))
        self.assertEqual(len(loads), 1)

    def test_trust_root_file_loaded_once(self) -> None:
        """A trust_root file's certificates go into the trust store once, however many fetches follow."""
        added = self.count_calls(X509Store, "add_cert")
        fetcher = self.fetcher(trust_root=write_pem(self, CA, OTHER_CA))
        self.assertEqual(len(added), 2)
        self.assertEqual(self.fetch_many(fetcher, GOOD, 3), [POLICY] * 3)
        self.assertEqual(len(added), 2)

    def test_every_connection_on_the_one_context(self) -> None:
        """Connections for different hosts come from the same context, each with its own SNI."""
        fetcher = self.fetcher()
        first = client_connection(fetcher.tls_options(HOST))
        second = client_connection(fetcher.tls_options(OTHER_HOST))
        self.assertIs(first.get_context(), fetcher._tls.context)
        self.assertIs(second.get_context(), fetcher._tls.context)
        self.assertEqual(first.get_servername(), HOST.encode())
        self.assertEqual(second.get_servername(), OTHER_HOST.encode())

    def test_context_settings(self) -> None:
        """The shared context verifies the peer, requires its certificate and refuses anything older than TLS 1.2."""
        context = self.fetcher()._tls.context
        required = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        self.assertEqual(context.get_verify_mode() & required, required)
        old = SSL.OP_NO_SSLv3 | SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1
        self.assertEqual(context.set_options(0) & old, old)

    def test_host_must_be_an_a_label(self) -> None:
        """A host that is not an ASCII host name gets no connection (the SNI and name check need its A-label)."""
        fetcher = self.fetcher()
        for host in ("mta-sts.b\u00fccher.test", "mta-sts..test", ""):
            self.assertRaises(ValueError, client_connection, fetcher.tls_options(host))

    def test_name_checked_per_connection(self) -> None:
        """One context, sequential handshakes: each certificate is checked against its own connection's host."""
        fetcher = self.fetcher()
        received, reason = handshake(fetcher.tls_options(HOST), GOOD)
        self.assertEqual((received, reason), (b"hello\n", None))
        received, reason = handshake(fetcher.tls_options(OTHER_HOST), GOOD)
        self.assertEqual(received, b"")
        assert reason is not None
        reason.trap(VerificationError)
        received, reason = handshake(fetcher.tls_options(HOST), GOOD)
        self.assertEqual((received, reason), (b"hello\n", None))

    def test_no_weakening(self) -> None:
        """On the shared context a wrong name, an expired and an untrusted certificate each fail the handshake, and the client sends nothing."""
        fetcher = self.fetcher()
        for issued, error in (
            (WRONG_NAME, VerificationError),
            (EXPIRED, SSL.Error),
            (UNTRUSTED, SSL.Error),
        ):
            received, reason = handshake(fetcher.tls_options(HOST), issued)
            self.assertEqual(received, b"")
            assert reason is not None
            reason.trap(error)

    def test_concurrent_fetches_checked_each_for_its_host(self) -> None:
        """
        Two fetches for different hosts in flight at once on the one context,
        both servers presenting the certificate for the first host: exactly
        the fetch for the other host fails, whichever started first.
        """
        for bad_first in (False, True):
            self.reactor = MemoryReactorClock()
            resolver = FakeResolver(
                {(HOST, A): ["192.0.2.10"], (OTHER_HOST, A): ["192.0.2.20"]}
            )
            fetcher = self.fetcher(resolver)
            added = self.count_calls(X509Store, "add_cert")
            order = [OTHER_DOMAIN, DOMAIN] if bad_first else [DOMAIN, OTHER_DOMAIN]
            results = {domain: fetcher.fetch(domain) for domain in order}
            self.assertEqual(len(self.reactor.tcpClients), 2)
            servers = {}
            pumps = []
            for index, domain in enumerate(order):
                address = "192.0.2.20" if domain == OTHER_DOMAIN else "192.0.2.10"
                self.assertEqual(self.reactor.tcpClients[index][0], address)
                servers[domain] = TLSServer(GOOD, PolicyResource())
                pumps.append((servers[domain], servers[domain].accept(self.reactor, index)))
            # One step on each connection in turn, so both handshakes overlap.
            for _ in range(200):
                self.reactor.advance(0)
                for server, pump in pumps:
                    server.clock.advance(0)
                    pump.pump()
            self.assertEqual(self.successResultOf(results[DOMAIN]), POLICY)
            error = self.failureResultOf(results[OTHER_DOMAIN], FetchError).value
            self.assertEqual(error.kind, "tls")
            self.assertEqual(str(error), f"{OTHER_HOST}: certificate not valid for this name")
            self.assertEqual(servers[DOMAIN].server_names, [HOST.encode()])
            self.assertEqual(servers[OTHER_DOMAIN].server_names, [OTHER_HOST.encode()])
            self.assertEqual(len(servers[DOMAIN].factory.wrappedFactory.resource.requests), 1)
            self.assertEqual(servers[OTHER_DOMAIN].factory.wrappedFactory.resource.requests, [])
            # Both ran on the fetcher's one context: no trust root loaded for them.
            self.assertEqual(added, [])


class TLSSettingsTests(SynchronousTestCase):

    def test_endpoint_factory_only_policy_host(self) -> None:
        """The endpoint factory refuses any URL but https://<policy host>/."""
        from twisted.web.client import URI

        fetcher = PolicyFetcher(
            MemoryReactorClock(), FakeResolver(), trust_root=write_pem(self, CA)
        )
        factory = fetcher.endpoint_factory(HOST, ["192.0.2.10"])
        factory.endpointForURI(URI.fromBytes(b"https://" + HOST.encode() + POLICY_PATH))
        for url in (b"https://evil.test/", b"http://mta-sts.example.test/"):
            self.assertRaises(ValueError, factory.endpointForURI, URI.fromBytes(url))

    def test_system_trust_by_default(self) -> None:
        """Without trust_root the platform's trust store is used."""
        from twisted.internet.ssl import platformTrust

        fetcher = PolicyFetcher(MemoryReactorClock(), FakeResolver())
        self.assertIsInstance(fetcher._trust, type(platformTrust()))

    def test_trust_root_without_certificates(self) -> None:
        """A trust_root file with no PEM certificate is refused at construction, naming the file."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"not a certificate\n")
        error = self.assertRaises(ValueError, load_trust_root, path)
        self.assertIn(path, str(error))

    def test_trust_root_missing_file(self) -> None:
        """A missing trust_root file fails at construction."""
        self.assertRaises(
            OSError,
            PolicyFetcher,
            MemoryReactorClock(),
            FakeResolver(),
            trust_root=self.mktemp(),
        )


class QuietPoolTests(SynchronousTestCase):
    def test_pool_factory_not_noisy(self) -> None:
        """Policy fetches log no 'Starting factory' lines: the pool's factory is quiet."""
        from twisted.internet.testing import MemoryReactorClock

        from mxpolicyd.net.https import _quiet_pool

        pool = _quiet_pool(MemoryReactorClock())
        self.assertFalse(pool._factory.noisy)
        self.assertFalse(pool.persistent)
