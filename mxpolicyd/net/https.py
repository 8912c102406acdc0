"""
HTTPS fetch of an MTA-STS policy body (RFC 8461 section 3.3): the MTA-STS
evaluator hands in a domain whose ``_mta-sts`` TXT record asked for a fetch,
and gets back the raw bytes of ``https://mta-sts.<domain>/.well-known/mta-sts.txt``
or a L{FetchError} whose C{kind} says which step failed. The policy host is
resolved through the daemon's own DNS client (never getaddrinfo), connected to
by IP with SNI, PKIX and hostname checks, and the whole exchange runs under one
deadline, with a cap on the decoded body and one on every byte received
(headers included). A body counts only if the server marked its end. Parsing
the body is not done here.
"""

from __future__ import annotations

import inspect
import ipaddress
import re
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dns.rdatatype
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    TLSVersion,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.client import (
    URI,
    Agent,
    HTTPConnectionPool,
    ResponseDone,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IAgentEndpointFactory, IResponse
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from mxpolicyd.net.dns import Answer


__all__ = ["KINDS", "FetchError", "PolicyFetcher", "is_public_address", "load_trust_root"]

POLICY_PATH = "/.well-known/mta-sts.txt"

# Kinds of FetchError, in the order the exchange can fail.
KINDS = (
    "dns",
    "blocked",
    "connect",
    "tls",
    "status",
    "redirect",
    "content-type",
    "too-large",
    "truncated",
    "timeout",
    "http",
)

# A TCP connect to one address may take this long before the next address is
# tried, so a black-holed IPv6 route does not eat the whole deadline.
CONNECT_ATTEMPT_TIMEOUT = 10.0

# Every byte received for one fetch (status line, headers, chunk framing and
# the body as sent) may exceed the body cap by this much. Twisted's HTTP
# parser caps each header line, not their number: without a cap on the
# whole, a policy host streaming headers grows the daemon without bound.
HEADER_ALLOWANCE = 32 * 1024

# After a complete response the HTTP layer closes the connection gracefully;
# a peer that never answers the TLS close_notify is cut off after this long.
_CLOSE_GRACE = 5.0

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)

# Twisted >= 23.8 lets TLS take the reactor used to batch small writes; older
# versions have no such argument (and use the reactor they are given anyway).
_WRAP_TLS_TAKES_CLOCK = "clock" in inspect.signature(wrapClientTLS).parameters


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    # One "Starting factory"/"Stopping factory" pair per fetch is noise.
    noisy = False


def _quiet_pool(reactor: Any) -> HTTPConnectionPool:
    """No persistent connections (RFC 8461 fetches are rare), no log noise."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    pool._factory = _QuietHTTP11ClientFactory
    return pool


class FetchError(Exception):
    """
    A policy fetch that produced no usable body; C{kind} is one of L{KINDS}
    so that callers can count failures and pick a retry strategy by it.
    """

    def __init__(self, domain: str, kind: str, message: str) -> None:
        message = _one_line(message)
        super().__init__(domain, kind, message)
        self.domain = domain
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


def _one_line(text: str, limit: int = 300) -> str:
    """
    Squeeze text that may come from a hostile server into one short line of
    printable ASCII, fit for a log line or an answer to an administrator.
    """
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 3] + "..."
    return cleaned


def is_public_address(address: str) -> bool:
    """
    Whether a policy host address may be connected to when private addresses
    are blocked, so that a hostile domain cannot aim the fetch at services
    inside the network.

    Blocked: loopback, RFC 1918 and ULA, link-local, unspecified, multicast,
    CGNAT (100.64.0.0/10), reserved ranges and everything else Python's
    C{ipaddress} does not call global, which includes the documentation
    ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32):
    they never route on the internet. IPv6 forms that carry an IPv4 address
    (IPv4-mapped, NAT64 64:ff9b::/96, 6to4) are judged by that address.
    """
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            address
        )
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
    )


def load_trust_root(path: str) -> IOpenSSLTrustRoot:
    """
    Trust exactly the CA certificates in one PEM file, so that tests and
    closed deployments can use their own CA. Raises L{ValueError} naming the
    file when it holds no certificate.
    """
    with open(path, "rb") as f:
        pem = f.read()
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks:
        raise ValueError(f"{path}: no PEM certificate found (expected a CA bundle)")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ValueError(f"{path}: unreadable PEM certificate: {e}") from e
    return trustRootFromCertificates(certificates)


class _ClientTLSContext:
    """
    The one OpenSSL context every policy fetch of a L{PolicyFetcher} uses:
    TLS 1.2 or later, the peer's chain verified against the trust root,
    which is loaded once, when this is built (building a context per fetch
    re-reads the system store each time, tens of milliseconds of CPU).

    What differs between fetches is per connection: L{connection} sets the
    SNI of the policy host, and the context's info callback checks the
    certificate's name against that connection's host when its handshake
    is done, failing the connection with the L{VerificationError} as
    Twisted's own client options do.
    """

    _log = Logger()

    def __init__(self, trust: IOpenSSLTrustRoot) -> None:
        """
        @param trust: the CA certificates to verify the peer's chain against.
        """
        options = CertificateOptions(
            trustRoot=trust, raiseMinimumTo=TLSVersion.TLSv1_2
        )
        self.context: SSL.Context = options.getContext()
        self.context.set_info_callback(self._info)
        # The policy host of each live connection; weak, so that an entry
        # goes with its connection.
        self._hosts: weakref.WeakKeyDictionary[SSL.Connection, str] = (
            weakref.WeakKeyDictionary()
        )

    def connection(self, host: str, tls_protocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        """
        A client connection on the shared context for C{host}, an A-label
        name: SNI set, its name checked when the handshake is done.

        @param tls_protocol: the TLS protocol that runs the connection; it
            is what a failed name check aborts.
        """
        if not _valid_host(host):
            raise ValueError(f"{host!r}: not a valid policy host name")
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        connection.set_tlsext_host_name(host.encode("ascii"))
        self._hosts[connection] = host
        connection.set_connect_state()
        return connection

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        """
        The context's info callback: at the end of each handshake, the
        certificate must be valid for the connection's policy host, or the
        connection fails. Anything unexpected fails it too, since OpenSSL
        callbacks cannot raise.
        """
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        try:
            host = self._hosts.get(connection)
            if host is None:
                raise RuntimeError("TLS connection with no policy host recorded")
            verify_hostname(connection, host)
        except BaseException:  # noqa: BLE001 -- fail closed on anything
            failure = Failure()
            if not failure.check(VerificationError):
                self._log.failure("While checking a policy host certificate", failure)
            tls_protocol = connection.get_app_data()
            if tls_protocol is not None:
                tls_protocol.failVerification(failure)


@implementer(IOpenSSLClientConnectionCreator)
class _PolicyHostTLS:
    """TLS for one fetch: connections for its policy host on the shared context."""

    def __init__(self, shared: _ClientTLSContext, host: str) -> None:
        self._shared = shared
        self._host = host

    def clientConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> SSL.Connection:
        return self._shared.connection(self._host, tlsProtocol)


class _Connections:
    """
    The TCP connections opened for one fetch, so that a deadline, an
    oversized response or any other failure can cut them off whatever state
    the HTTP and TLS layers are in; and what L{_CountedProtocol} saw on
    them: the bytes received against C{limit}, and whether the server ended
    the connection with a TLS close_notify.
    """

    def __init__(self, limit: int) -> None:
        self.protocols: list[IProtocol] = []
        self.limit = limit
        self.received = 0
        self.over_limit = False
        self.closed_cleanly = False

    def abort(self) -> None:
        for protocol in self.protocols:
            transport = getattr(protocol, "transport", None)
            if transport is not None and not getattr(transport, "disconnected", False):
                transport.abortConnection()


class _CountedProtocol(ProtocolWrapper):
    """
    Between TLS and the HTTP client protocol: counts the plaintext bytes of
    the response as they arrive and aborts the connection before the HTTP
    parser sees the byte that passes the fetch's limit; and notes how the
    connection ended. TLS passes ConnectionDone after the server's
    close_notify and ConnectionLost (or the TLS error) for a TCP EOF
    without one; the TLS connection's own shutdown state confirms it.
    """

    factory: _CountingFactory

    def dataReceived(self, data: bytes) -> None:
        connections = self.factory.connections
        if connections.over_limit:
            return
        connections.received += len(data)
        if connections.received > connections.limit:
            connections.over_limit = True
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.connections.closed_cleanly = bool(
            reason.check(ConnectionDone)
        ) and _close_notify_received(self.transport)
        super().connectionLost(reason)


def _close_notify_received(transport: object) -> bool:
    """
    Whether TLS under C{transport} got the peer's close_notify, where the
    TLS layer still shows its connection (Twisted's does, up to the end of
    its connectionLost); otherwise the ConnectionDone alone decides.
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, SSL.Connection):
        return True
    return bool(handle.get_shutdown() & SSL.RECEIVED_SHUTDOWN)


def _wrapped_protocol(counted: IProtocol) -> IProtocol:
    assert isinstance(counted, _CountedProtocol)
    return counted.wrappedProtocol


class _CountingFactory(WrappingFactory):
    protocol = _CountedProtocol
    noisy = False

    def __init__(self, wrapped: Any, connections: _Connections) -> None:
        super().__init__(wrapped)
        self.connections = connections


@implementer(IStreamClientEndpoint)
class _CountedEndpoint:
    """
    Connect through C{endpoint} (TLS over TCP) with L{_CountedProtocol}
    around the HTTP protocol, which is what the caller gets back.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, connections: _Connections) -> None:
        self._endpoint = endpoint
        self._connections = connections

    def connect(self, protocolFactory: Any) -> Deferred[IProtocol]:
        d = self._endpoint.connect(_CountingFactory(protocolFactory, self._connections))
        return d.addCallback(_wrapped_protocol)


@implementer(IStreamClientEndpoint)
class _AddressListEndpoint:
    """
    Connect to the first of a list of addresses that accepts, one at a time,
    each attempt bounded; the addresses come from our DNS client, so no name
    lookup happens here.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        addresses: Sequence[str],
        port: int,
        attempt_timeout: float,
        connections: _Connections,
    ) -> None:
        self._reactor = reactor
        self._host = host
        self._addresses = tuple(addresses)
        self._port = port
        self._attempt_timeout = attempt_timeout
        self._connections = connections

    def connect(self, protocolFactory: Any) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: Any) -> IProtocol:
        failures: list[tuple[str, ConnectError]] = []
        for address in self._addresses:
            endpoint_type = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = endpoint_type(
                self._reactor, address, self._port, timeout=self._attempt_timeout
            )
            self._log.debug(
                "Connecting to {address} port {port} for {host}",
                address=address,
                port=self._port,
                host=self._host,
            )
            try:
                protocol = await endpoint.connect(factory)
            except ConnectError as e:
                self._log.debug(
                    "Connection to {address} for {host} failed: {error}",
                    address=address,
                    host=self._host,
                    error=e,
                )
                failures.append((address, e))
                continue
            self._connections.protocols.append(protocol)
            return protocol
        raise _NoConnection(failures)


class _NoConnection(ConnectError):
    """Every address of the policy host refused or timed out."""

    def __init__(self, failures: list[tuple[str, ConnectError]]) -> None:
        super().__init__(string="no address accepted")
        self.failures = failures

    def describe(self, port: int) -> str:
        if not self.failures:
            return "no address to connect to"
        return "; ".join(
            f"{address} port {port}: {str(error).rstrip('.')}"
            for address, error in self.failures
        )


@implementer(IAgentEndpointFactory)
class _PolicyHostEndpoints:
    """
    Route the request for C{https://mta-sts.<domain>/...} to the addresses we
    resolved, under TLS for the policy host name, so that the URL (and so the
    Host header, SNI and certificate check) keeps the name while the socket
    goes to the IP.
    """

    def __init__(
        self,
        host: str,
        tls_options: IOpenSSLClientConnectionCreator,
        addresses: _AddressListEndpoint,
        reactor: Any,
        connections: _Connections,
    ) -> None:
        self._host = host
        self._tls_options = tls_options
        self._addresses = addresses
        self._reactor = reactor
        self._connections = connections

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme != b"https" or uri.host != self._host.encode("ascii"):
            raise ValueError(
                f"refusing to connect to {uri.toBytes()!r}: only the policy host "
                f"{self._host} is allowed"
            )
        if _WRAP_TLS_TAKES_CLOCK:
            tls = wrapClientTLS(self._tls_options, self._addresses, clock=self._reactor)
        else:
            tls = wrapClientTLS(self._tls_options, self._addresses)
        return _CountedEndpoint(tls, self._connections)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class _EndNotMarked(Exception):
    """A body without length or chunking that ended with no TLS close_notify."""


class _CappedBody(Protocol):
    """
    Collect a response body, giving up as soon as it grows past the cap (and
    when cancelled) by stopping the transport, so that a server cannot make
    us buffer or wait forever. treq.collect cannot be cancelled, hence this.

    A body with neither Content-Length nor chunking ends when the connection
    does (Twisted's PotentialDataLoss); it counts only if C{closed_cleanly}
    says the server closed TLS with close_notify, since a bare TCP FIN can
    be forged on the path and would cut the policy short.
    """

    def __init__(self, limit: int, closed_cleanly: Callable[[], bool]) -> None:
        self._limit = limit
        self._closed_cleanly = closed_cleanly
        self._size = 0
        self._chunks: list[bytes] = []
        self._finished = False
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def dataReceived(self, data: bytes) -> None:
        if self._finished:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._finish()
            self.done.errback(_TooLarge(self._size))
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished:
            return
        self._finished = True
        body = b"".join(self._chunks)
        self._chunks = []
        if reason.check(ResponseDone):
            self.done.callback(body)
        elif reason.check(PotentialDataLoss):
            if self._closed_cleanly():
                self.done.callback(body)
            else:
                self.done.errback(_EndNotMarked())
        else:
            self.done.errback(reason)

    def _cancel(self, d: Deferred[bytes]) -> None:
        self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._chunks = []
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


class PolicyFetcher:
    """
    Fetches MTA-STS policy bodies. One instance serves the whole daemon; each
    fetch builds its own non-persistent Agent, so nothing (connections,
    cookies, cached responses) carries over from one domain to another.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        resolver: Any,
        trust_root: str | None = None,
        timeout: float = 60.0,
        max_size: int = 65536,
        port: int = 443,
        block_private: bool = False,
        *,
        connect_timeout: float = CONNECT_ATTEMPT_TIMEOUT,
        agent_factory: Callable[[Sequence[str]], IAgent] | None = None,
    ) -> None:
        """
        @param resolver: our DNS client (L{mxpolicyd.net.dns.Resolver}); the
            policy host is resolved through it and nothing else.
        @param trust_root: path of a PEM file of CA certificates to trust
            instead of the system store. Either is loaded now, once, into
            the TLS context all fetches share, so a bad file fails at
            start-up; a reload builds a new fetcher.
        @param timeout: deadline in seconds over the whole exchange, from the
            first DNS query to the last body byte.
        @param max_size: largest accepted body, in decoded bytes.
        @param port: TCP port of the policy host (443 but for tests).
        @param block_private: refuse addresses that are not public, see
            L{is_public_address}.
        @param connect_timeout: time allowed to each address's TCP connect.
        @param agent_factory: builds the HTTP agent from the resolved
            addresses in place of the real TLS one; for tests.
        """
        self._reactor = reactor
        self._resolver = resolver
        self._trust: IOpenSSLTrustRoot = (
            platformTrust() if trust_root is None else load_trust_root(trust_root)
        )
        try:
            self._tls = _ClientTLSContext(self._trust)
        except SSL.Error as e:
            raise ValueError(
                f"{trust_root or 'system trust store'}: cannot be loaded: "
                f"{_tls_reason(e)}"
            ) from e
        self._timeout = timeout
        self._max_size = max_size
        self._port = port
        self._block_private = block_private
        self._connect_timeout = connect_timeout
        self._agent_factory = agent_factory

    def fetch(self, domain: str) -> Deferred[bytes]:
        """
        The body of C{https://mta-sts.<domain>/.well-known/mta-sts.txt}, or a
        L{FetchError}. C{domain} is an A-label name without trailing dot.
        """
        host = "mta-sts." + domain.rstrip(".").lower()

        def timed_out(result: object, timeout: float) -> object:
            if isinstance(result, Failure):
                self._log.debug(
                    "Policy fetch from {host} hit its {timeout} s deadline",
                    host=host,
                    timeout=timeout,
                )
                raise FetchError(
                    domain,
                    "timeout",
                    f"{host}: no complete response within {timeout:g} s",
                )
            return result

        d = Deferred.fromCoroutine(self._fetch(domain, host))
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=timed_out)
        return d

    async def _fetch(self, domain: str, host: str) -> bytes:
        if not _valid_host(host):
            raise FetchError(domain, "dns", f"{host!r}: not a valid host name")
        self._log.debug("Resolving {host} to fetch the MTA-STS policy", host=host)
        addresses = await self._resolve(domain, host)
        connections = _Connections(self._max_size + HEADER_ALLOWANCE)
        agent = self._agent(host, addresses, connections)
        url = f"https://{host}{POLICY_PATH}"
        try:
            response: IResponse = await HTTPClient(agent).get(
                url,
                headers=Headers({"Accept": ["text/plain"]}),
                allow_redirects=False,
                unbuffered=True,
                reactor=self._reactor,
            )
            self._log.debug("HTTP {code} from {host}", code=response.code, host=host)
            self._check_response(domain, host, response)
            body = await self._read_body(domain, host, response, connections)
        except Exception as e:
            connections.abort()
            if connections.over_limit:
                # Whatever the HTTP layer made of the cut, this is why.
                error = FetchError(
                    domain,
                    "too-large",
                    f"{host}: response over the {connections.limit} byte limit "
                    f"on headers and body",
                )
            elif isinstance(e, FetchError):
                error = e
            else:
                error = _classify(domain, host, self._port, e)
            self._log.debug(
                "Policy fetch from {host} failed: {error}", host=host, error=error
            )
            if error is e:
                raise
            raise error from e
        if connections.protocols:
            self._reactor.callLater(_CLOSE_GRACE, connections.abort)
        self._log.debug(
            "Read {size} byte MTA-STS policy from {host}", size=len(body), host=host
        )
        return body

    async def _resolve(self, domain: str, host: str) -> list[str]:
        """
        The policy host's addresses, IPv6 first, each family in the order the
        resolver returned it; one family failing is fine if the other answers.
        """
        families = [("AAAA", dns.rdatatype.AAAA), ("A", dns.rdatatype.A)]
        queries = [
            maybeDeferred(self._resolver.query, host, int(rdtype))
            for _, rdtype in families
        ]
        results = await DeferredList(queries, consumeErrors=True)
        addresses: list[str] = []
        problems: list[str] = []
        for (family, _), (ok, result) in zip(families, results):
            if not ok:
                error = result.value
                problems.append(
                    f"{family} {getattr(error, 'kind', type(error).__name__)}"
                )
                continue
            found = _addresses_of(result)
            if not found:
                problems.append(f"{family} none")
            for address in found:
                if address not in addresses:
                    addresses.append(address)
        self._log.debug(
            "{host} has addresses {addresses}", host=host, addresses=addresses
        )
        if not addresses:
            raise FetchError(
                domain, "dns", f"{host}: no address ({', '.join(problems)})"
            )
        if self._block_private:
            allowed = [a for a in addresses if is_public_address(a)]
            if not allowed:
                raise FetchError(
                    domain,
                    "blocked",
                    f"{host}: only non-public addresses ({', '.join(addresses)})",
                )
            addresses = allowed
        return addresses

    def _agent(
        self, host: str, addresses: Sequence[str], connections: _Connections
    ) -> IAgent:
        if self._agent_factory is not None:
            return self._agent_factory(addresses)
        return Agent.usingEndpointFactory(
            self._reactor,
            self.endpoint_factory(host, addresses, connections),
            pool=_quiet_pool(self._reactor),
        )

    def endpoint_factory(
        self,
        host: str,
        addresses: Sequence[str],
        connections: _Connections | None = None,
    ) -> IAgentEndpointFactory:
        """
        Where the Agent's request for the policy URL really goes: TLS for
        C{host} over TCP to C{addresses} in order, every byte received
        counted against the fetch's limit.
        """
        if connections is None:
            connections = _Connections(self._max_size + HEADER_ALLOWANCE)
        return _PolicyHostEndpoints(
            host,
            self.tls_options(host),
            _AddressListEndpoint(
                self._reactor,
                host,
                addresses,
                self._port,
                min(self._connect_timeout, self._timeout),
                connections,
            ),
            self._reactor,
            connections,
        )

    def tls_options(self, host: str) -> IOpenSSLClientConnectionCreator:
        """
        SNI, chain to the trust root, name check for C{host}, TLS >= 1.2; on
        the fetcher's one context, so the trust root is not loaded again.
        """
        return _PolicyHostTLS(self._tls, host)

    def _check_response(self, domain: str, host: str, response: IResponse) -> None:
        code = response.code
        if 300 <= code < 400:
            location = (response.headers.getRawHeaders("location") or ["(none)"])[0]
            raise FetchError(
                domain,
                "redirect",
                f"{host}: HTTP {code} redirect to {location}, not followed",
            )
        if code != 200:
            raise FetchError(domain, "status", f"{host}: HTTP status {code}, not 200")
        types = response.headers.getRawHeaders("content-type")
        if not types:
            raise FetchError(domain, "content-type", f"{host}: no Content-Type")
        for value in types:
            if value.split(";", 1)[0].strip().lower() != "text/plain":
                raise FetchError(
                    domain,
                    "content-type",
                    f"{host}: Content-Type {value!r}, not text/plain",
                )
        length = response.length
        if length is not UNKNOWN_LENGTH and isinstance(length, int):
            if length > self._max_size:
                raise FetchError(
                    domain,
                    "too-large",
                    f"{host}: Content-Length {length} over the "
                    f"{self._max_size} byte limit",
                )

    async def _read_body(
        self, domain: str, host: str, response: IResponse, connections: _Connections
    ) -> bytes:
        reader = _CappedBody(self._max_size, lambda: connections.closed_cleanly)
        response.deliverBody(reader)
        try:
            return await reader.done
        except _EndNotMarked:
            raise FetchError(
                domain,
                "truncated",
                f"{host}: body without Content-Length or chunking ended with no "
                f"TLS close_notify; it may have been cut short",
            ) from None
        except _TooLarge as e:
            raise FetchError(
                domain,
                "too-large",
                f"{host}: body over the {self._max_size} byte limit "
                f"(stopped at {e.size})",
            ) from e


def _valid_host(host: str) -> bool:
    if len(host) > 253 or not host.isascii():
        return False
    return all(_HOST_LABEL.match(label) for label in host.split("."))


def _addresses_of(answer: Answer | Any) -> list[str]:
    found = []
    for record in getattr(answer, "records", ()):
        address = getattr(record, "address", None)
        if not isinstance(address, str):
            continue
        try:
            found.append(str(ipaddress.ip_address(address)))
        except ValueError:
            continue
    return found


def _causes(error: BaseException) -> list[BaseException]:
    """
    An error and what it wraps: twisted.web reports TLS and connection
    trouble inside ResponseNeverReceived / ResponseFailed C{reasons}.
    """
    found = [error]
    for reason in getattr(error, "reasons", None) or ():
        value = getattr(reason, "value", reason)
        if isinstance(value, BaseException):
            found.extend(_causes(value))
    return found


def _tls_reason(error: SSL.Error) -> str:
    try:
        reasons = [str(item[-1]) for item in error.args[0] if item and item[-1]]
    except (IndexError, TypeError):
        reasons = []
    return ", ".join(reasons) or str(error) or "handshake failed"


def _classify(domain: str, host: str, port: int, error: BaseException) -> FetchError:
    """Name the step that failed, for the log and for retry decisions."""
    causes = _causes(error)
    for cause in causes:
        if isinstance(cause, VerificationError):
            return FetchError(domain, "tls", f"{host}: certificate not valid for this name")
    for cause in causes:
        if isinstance(cause, SSL.Error):
            return FetchError(
                domain, "tls", f"{host}: TLS handshake failed: {_tls_reason(cause)}"
            )
    for cause in causes:
        if isinstance(cause, _NoConnection):
            return FetchError(
                domain, "connect", f"{host}: cannot connect: {cause.describe(port)}"
            )
        if isinstance(cause, ConnectError):
            return FetchError(
                domain, "connect", f"{host}: cannot connect: {str(cause).rstrip('.')}"
            )
    inner = causes[-1]
    detail = str(inner) or type(inner).__name__
    if inner is not error:
        detail = f"{type(error).__name__}: {detail}"
    return FetchError(domain, "http", f"{host}: {detail}")
