"""
DNS client for the cold path: the MTA-STS evaluator asks it for the
`_mta-sts` TXT record and the DANE evaluator for MX, A/AAAA and TLSA, and both
get an L{Answer} carrying the records, their TTL and whether the configured
(local, validating) resolver vouched for them with the AD bit. dnspython
builds and parses the messages; Twisted carries them over UDP, and over TCP
when a response is truncated or longer than asked for; a response that does
not parse whole is never used in part. Every try has a deadline; failed tries
move across the configured nameservers; cancellation closes sockets and timers.
A lookup that ends with no usable answer raises L{DNSError}: the caller must
then treat the name's state as unknown (a SERVFAIL is how a validating
resolver reports bogus data).
"""

from __future__ import annotations

import inspect
import ipaddress
import re
import secrets
import struct
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as _DeferredTimeout
from twisted.internet.interfaces import IAddress, ITCPTransport
from twisted.internet.protocol import (
    ClientFactory,
    DatagramProtocol,
    Protocol,
    connectionDone,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "Answer",
    "DNSError",
    "Resolver",
    "kind_text",
    "resolver_kind",
    "system_nameservers",
]

_EDNS_PAYLOAD = 1232
_HEADER = struct.Struct("!HH")
_LENGTH = struct.Struct("!H")
# QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT, after the id and the flags.
_COUNTS = struct.Struct("!4H")
_MESSAGE_HEADER_SIZE = _HEADER.size + _COUNTS.size
_QR = int(dns.flags.QR)
_TC = int(dns.flags.TC)
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")

_KIND_BY_RCODE = {
    dns.rcode.SERVFAIL: "servfail",
    dns.rcode.REFUSED: "refused",
    dns.rcode.FORMERR: "formerr",
    dns.rcode.NOTIMP: "notimp",
}

_KIND_TEXT = {
    "timeout": "timeout",
    "servfail": "SERVFAIL",
    "refused": "REFUSED",
    "formerr": "FORMERR",
    "notimp": "NOTIMP",
    "network": "network error",
    "malformed": "malformed response",
    "cname-loop": "CNAME loop",
    "rcode": "unexpected rcode",
}


def _type_text(rdtype: int) -> str:
    try:
        return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))
    except ValueError:  # out of range: show it as is
        return f"TYPE{rdtype}"


def _name_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


class DNSError(Exception):
    """A lookup that gave no usable answer: the name's state is unknown."""

    def __init__(self, name: str, rdtype: int, kind: str, message: str) -> None:
        super().__init__(name, rdtype, kind, message)
        self.name = name
        self.rdtype = rdtype
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        # One short ASCII token sequence: it ends up in a Postfix
        # "TEMP <reason>" reply and in log lines.
        text = (
            f"DNS {_KIND_TEXT.get(self.kind, self.kind)} for {self.name} {_type_text(self.rdtype)}"
        )
        return _UNPRINTABLE.sub("?", text)


# Kinds that say the resolver cannot answer (it is gone, refuses, or cannot
# reach the authorities), not that the name's data is broken.  SERVFAIL is
# both: a validating resolver also reports bogus signatures with it.  It
# counts as the resolver's so that an upstream outage is one outage; a bogus
# domain among answering ones is still told apart, since every answered
# lookup in between ends the outage.
RESOLVER_KINDS = frozenset(
    ("timeout", "network", "refused", "servfail", "formerr", "notimp", "rcode")
)


def resolver_kind(errors: Sequence[BaseException]) -> str | None:
    """
    The kind of a failed check's DNS errors when they are all the
    resolver's, None when any says something about the name itself.
    """
    if not errors:
        return None
    kinds = [e.kind if isinstance(e, DNSError) else None for e in errors]
    if any(kind not in RESOLVER_KINDS for kind in kinds):
        return None
    return kinds[0]


def kind_text(kind: str) -> str:
    """A L{DNSError} kind as log lines write it (C{"SERVFAIL"})."""
    return _KIND_TEXT.get(kind, kind)


@dataclass(frozen=True)
class Answer:
    """What the resolver said about one name and type, after any CNAMEs."""

    name: str
    rdtype: int
    rcode: int
    records: tuple[Any, ...]
    ttl: int
    secure: bool
    canonical_name: str
    cnames: tuple[str, ...]
    # Records in the response that this dnspython could not parse (skipped).
    malformed: int = 0

    @property
    def exists(self) -> bool:
        return self.rcode == dns.rcode.NOERROR and bool(self.records)


def clamp(ttl: float, low: float, high: float) -> float:
    """A TTL held between an administrator's floor and cap."""
    return max(low, min(high, ttl))


def system_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    """
    The resolv.conf nameservers, so that a default install uses the host's
    (ideally local, validating) resolver without extra configuration.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return []
    servers: list[str] = []
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        address = words[1].split("%", 1)[0]
        try:
            ipaddress.ip_address(address)
        except ValueError:
            continue
        servers.append(address)
    return servers


class _TryFailed(Exception):
    """One exchange with one server gave nothing usable; try the next one."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


# dnspython >= 2.6 refuses some records that older versions accept (a TLSA
# digest of the wrong length, say); with continue_on_error it skips them and
# lists them in Message.errors, so one bad record does not make the whole
# answer unusable.  RFC 7672 calls such TLSA records unusable, not an error.
_LENIENT: dict[str, bool] = (
    {"continue_on_error": True}
    if "continue_on_error" in inspect.signature(dns.message.from_wire).parameters
    else {}
)


class _Truncated(Exception):
    """
    The UDP response is not the whole answer: TC is set, or it is longer
    than the payload we asked for (the reactor reads at most 8192 bytes of
    a datagram, so it may be cut). Ask the same server again over TCP.
    """

    def __init__(self, why: str = "is truncated") -> None:
        super().__init__(why)
        self.why = why


def _response_or_none(
    query: dns.message.Message, data: bytes, max_size: int | None = None
) -> dns.message.Message | None:
    """
    Parse C{data} as the response to C{query}. Return None for bytes that are
    not addressed to this query (wrong id, no QR bit or another question),
    which a caller waiting on UDP ignores. Raise L{_Truncated} for a response
    to this query with TC set or longer than C{max_size}, and L{_TryFailed}
    for one that cannot be parsed whole.
    """
    if len(data) < _HEADER.size:
        return None
    message_id, flags = _HEADER.unpack_from(data)
    if message_id != query.id or not flags & _QR:
        return None
    if flags & _TC:
        raise _Truncated()
    if max_size is not None and len(data) > max_size:
        raise _Truncated(f"has {len(data)} bytes, over the {max_size} asked for")
    cut = _framing_error(data)
    if cut is not None:
        raise _TryFailed("malformed", f"response {cut}")
    try:
        response = dns.message.from_wire(data, **_LENIENT)  # type: ignore[arg-type]
    except Exception as e:
        raise _TryFailed("malformed", f"unparseable response ({type(e).__name__})") from None
    problem = _unaccounted(data, response)
    if problem is not None:
        raise _TryFailed("malformed", problem)
    if not query.is_response(response):
        return None
    return response


def _framing_error(wire: bytes) -> str | None:
    """
    Why C{wire} is not one whole message (every record the header counts
    present to its last byte, and nothing after them), or None. Names are
    walked, not decompressed: a pointer just ends one.
    """
    if len(wire) < _MESSAGE_HEADER_SIZE:
        return "shorter than a header"
    counts = _COUNTS.unpack_from(wire, _HEADER.size)
    offset = _MESSAGE_HEADER_SIZE
    for section, count in enumerate(counts):
        for _ in range(count):
            end = _name_end(wire, offset)
            if end is None:
                return "cut short in a name"
            offset = end + (4 if section == 0 else 10)
            if offset > len(wire):
                return "cut short in a record header"
            if section:
                (rdlength,) = _LENGTH.unpack_from(wire, offset - 2)
                offset += rdlength
                if offset > len(wire):
                    return "cut short in a record's data"
    if offset != len(wire):
        return f"followed by {len(wire) - offset} bytes of junk"
    return None


def _name_end(wire: bytes, offset: int) -> int | None:
    """Where the name at C{offset} ends on the wire, None if it runs past the end."""
    while offset < len(wire):
        length = wire[offset]
        if length >= 0xC0:
            return offset + 2 if offset + 2 <= len(wire) else None
        if length > 63:
            return None  # a label type nobody uses
        offset += 1 + length
        if length == 0:
            return offset
    return None


def _unaccounted(data: bytes, response: dns.message.Message) -> str | None:
    """
    Why a leniently parsed response is not whole, or None if it is.

    continue_on_error skips a record whose data it cannot parse and goes on,
    but at a broken name (in a message whose framing is whole) it stops for
    good and returns what came before: a shorter RRset, which must never
    pass for the answer. So every record the header counts must be either
    read or listed as skipped; counted on a second parse with one record
    per RRset, since the first merges duplicates.
    """
    errors = getattr(response, "errors", None)
    if not errors:
        return None
    try:
        again = dns.message.from_wire(data, one_rr_per_rrset=True, **_LENIENT)  # type: ignore[arg-type]
    except Exception as e:
        return f"unparseable response ({type(e).__name__})"
    announced = sum(_COUNTS.unpack_from(data, _HEADER.size)[1:])
    read = sum(len(rrset) for rrset in (*again.answer, *again.authority, *again.additional))
    read += (again.opt is not None) + (again.tsig is not None)
    skipped = len(getattr(again, "errors", ()))
    if read + skipped != announced:
        return (
            f"response parsed only in part: {announced} records announced, "
            f"{read} read, {skipped} errors"
        )
    return None


class _DatagramQuery(DatagramProtocol):
    """
    One query over UDP from its own ephemeral port, so that the port number
    and the message id together make an off-path forgery hard.

    A datagram with our id that cannot be parsed whole does not end the try:
    anyone who sees the query can send one, and the server's answer may
    still follow. C{unusable} says what the last one was, so that a try that
    gets nothing better can go on over TCP.
    """

    noisy = False

    def __init__(self, query: dns.message.Message, server: str, port: int) -> None:
        self._query = query
        self._wire = query.to_wire()
        self._server = ipaddress.ip_address(server)
        self._server_text = server
        self._server_port = port
        self._listening: Any = None
        self._done = False
        self.unusable: str | None = None
        self.deferred: Deferred[dns.message.Message] = Deferred(self._cancel)

    def start(self, reactor: Any) -> Deferred[dns.message.Message]:
        interface = "::" if self._server.version == 6 else ""
        try:
            self._listening = reactor.listenUDP(0, self, interface=interface)
            # A connected socket makes the kernel drop datagrams from other
            # sources and turns an ICMP "port unreachable" into a fast
            # failure instead of a timeout.
            self._listening.connect(self._server_text, self._server_port)
            self._listening.write(self._wire)
        except Exception as e:
            self._finish(Failure(_TryFailed("network", f"cannot send: {e}")))
        return self.deferred

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._done or not self._from_server(addr):
            return
        try:
            response = _response_or_none(self._query, datagram, _EDNS_PAYLOAD)
        except _Truncated as e:
            self._finish(Failure(e))
            return
        except _TryFailed as e:
            self.unusable = e.detail
            return
        if response is not None:
            self._finish(response)

    def connectionRefused(self) -> None:
        self._finish(Failure(_TryFailed("network", "connection refused")))

    def stopProtocol(self) -> None:
        # The reactor closes a connected UDP port by itself when the socket
        # reports an error (epoll: an ICMP "port unreachable" shows up as
        # EPOLLERR): nobody answers there, so move on now.
        self._listening = None
        self._finish(Failure(_TryFailed("network", "UDP socket error (port unreachable?)")))

    def _from_server(self, addr: Any) -> bool:
        try:
            host, port = addr[0], addr[1]
            return bool(
                ipaddress.ip_address(str(host).split("%", 1)[0]) == self._server
                and port == self._server_port
            )
        except (ValueError, TypeError, IndexError):
            return False

    def _close(self) -> None:
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.stopListening()

    def _cancel(self, deferred: Deferred[dns.message.Message]) -> None:
        self._done = True
        self._close()

    def _finish(self, result: dns.message.Message | Failure) -> None:
        if self._done:
            return
        self._done = True
        self._close()
        if isinstance(result, Failure):
            self.deferred.errback(result)
        else:
            self.deferred.callback(result)


class _StreamQuery(Protocol):
    """One query per TCP connection, framed by a two-byte length (RFC 1035 4.2.2)."""

    def __init__(
        self,
        query: dns.message.Message,
        finish: Callable[[dns.message.Message | Failure], None],
    ) -> None:
        self._query = query
        self._finish = finish
        self._buffer = b""

    def connectionMade(self) -> None:
        wire = self._query.to_wire()
        assert self.transport is not None
        self.transport.write(_LENGTH.pack(len(wire)) + wire)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < _LENGTH.size:
            return
        (length,) = _LENGTH.unpack_from(self._buffer)
        if len(self._buffer) < _LENGTH.size + length:
            return
        payload = self._buffer[_LENGTH.size : _LENGTH.size + length]
        self._buffer = b""
        try:
            response = _response_or_none(self._query, payload)
        except _TryFailed as e:
            self._finish(Failure(e))
            return
        except _Truncated:
            self._finish(Failure(_TryFailed("malformed", "truncated response over TCP")))
            return
        if response is None:
            # One query per connection: anything else is a broken server.
            self._finish(Failure(_TryFailed("malformed", "TCP response does not match the query")))
        else:
            self._finish(response)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._finish(Failure(_TryFailed("network", "TCP connection closed before a response")))


class _StreamQueryFactory(ClientFactory):
    """Owns one TCP try: its Deferred, its connector and its connection."""

    noisy = False

    def __init__(self, query: dns.message.Message) -> None:
        self._query = query
        self._connector: Any = None
        self._protocol: _StreamQuery | None = None
        self._done = False
        self.deferred: Deferred[dns.message.Message] = Deferred(self._cancel)

    def start(
        self, reactor: Any, server: str, port: int, timeout: float
    ) -> Deferred[dns.message.Message]:
        try:
            self._connector = reactor.connectTCP(server, port, self, timeout=timeout)
        except Exception as e:
            self._finish(Failure(_TryFailed("network", f"cannot connect: {e}")))
        return self.deferred

    def buildProtocol(self, addr: IAddress | None) -> _StreamQuery | None:
        if self._done:
            return None
        self._protocol = _StreamQuery(self._query, self._finish)
        self._protocol.factory = self
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._connector = None  # no longer connecting: nothing to stop
        self._finish(
            Failure(_TryFailed("network", f"TCP connect failed: {reason.getErrorMessage()}"))
        )

    def _close(self, abort: bool) -> None:
        protocol, self._protocol = self._protocol, None
        connector, self._connector = self._connector, None
        if protocol is not None and protocol.transport is not None:
            if abort:
                cast(ITCPTransport, protocol.transport).abortConnection()
            else:
                protocol.transport.loseConnection()
        elif connector is not None:
            connector.stopConnecting()

    def _cancel(self, deferred: Deferred[dns.message.Message]) -> None:
        # Closing may report back synchronously (stopConnecting calls
        # clientConnectionFailed); _done keeps that from replacing the
        # CancelledError.
        self._done = True
        self._close(abort=True)

    def _finish(self, result: dns.message.Message | Failure) -> None:
        if self._done:
            return
        self._done = True
        self._close(abort=False)
        if isinstance(result, Failure):
            self.deferred.errback(result)
        else:
            self.deferred.callback(result)


class Resolver:
    """
    A stub resolver on the reactor, talking to the configured recursive
    resolvers (which must validate DNSSEC for the AD bit to mean anything).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        nameservers: Sequence[str],
        port: int = 53,
        timeout: float = 2.0,
        attempts: int = 2,
        max_cnames: int = 8,
    ) -> None:
        servers = list(nameservers)
        if not servers:
            raise ValueError("no nameservers: give at least one resolver address")
        for server in servers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(f"nameserver {server!r} is not an IPv4 or IPv6 address") from None
        if timeout <= 0:
            raise ValueError(f"DNS timeout must be positive, not {timeout!r}")
        if attempts < 1:
            raise ValueError(f"DNS attempts must be at least 1, not {attempts!r}")
        if max_cnames < 0:
            raise ValueError(f"max_cnames must not be negative, not {max_cnames!r}")
        self._reactor = reactor
        self._nameservers = servers
        self._port = port
        self._timeout = timeout
        self._attempts = attempts
        self._max_cnames = max_cnames

    def query(self, name: str, rdtype: int) -> Deferred[Answer]:
        """
        Look up C{name}/C{rdtype}, following CNAMEs. Fails with L{DNSError}
        when no server gave a usable answer, with ValueError for a name that
        is not a valid A-label domain name or a type out of range.
        """
        try:
            qname = self._parse_name(name)
            qtype = dns.rdatatype.RdataType.make(rdtype)
        except ValueError as e:
            return fail(e)
        return Deferred.fromCoroutine(self._resolve(qname, qtype))

    @staticmethod
    def _parse_name(name: str) -> dns.name.Name:
        if not name.isascii():
            raise ValueError(f"DNS name {name!r} is not in A-label form")
        text = name[:-1] if name.endswith(".") else name
        try:
            return dns.name.from_text(text + ".")
        except dns.exception.DNSException as e:
            raise ValueError(f"{name!r} is not a valid DNS name: {e}") from None

    async def _resolve(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Answer:
        name_text = _name_text(qname)
        current = qname
        seen = {qname}
        cnames: list[str] = []
        secure = True
        ttl: int | None = None

        def error(kind: str, why: str) -> DNSError:
            return DNSError(
                name_text,
                rdtype,
                kind,
                f"DNS lookup of {name_text}/{_type_text(rdtype)} failed: {why}",
            )

        while True:
            response = await self._exchange(current, rdtype, name_text)
            secure = secure and bool(response.flags & dns.flags.AD)
            malformed = len(getattr(response, "errors", ()))
            asked = current
            records: tuple[Any, ...] | None = None
            # Walk the CNAME chain that the response carries for the name asked.
            while True:
                final = _find(response, current, rdtype)
                if final is not None:
                    records = tuple(final)
                    ttl = _min(ttl, final.ttl)
                    break
                alias = _find(response, current, dns.rdatatype.CNAME)
                if alias is None or len(alias) == 0:
                    break
                target = alias[0].target
                if target in seen:
                    raise error(
                        "cname-loop", f"CNAME loop at {_name_text(current)} -> {_name_text(target)}"
                    )
                if len(cnames) >= self._max_cnames:
                    raise error("cname-loop", f"CNAME chain longer than {self._max_cnames}")
                seen.add(target)
                cnames.append(_name_text(target))
                ttl = _min(ttl, alias.ttl)
                current = target
            rcode = response.rcode()
            if records is not None:
                return self._answer(
                    name_text, rdtype, dns.rcode.NOERROR, records, ttl, secure, current, cnames,
                    malformed,
                )
            if rcode == dns.rcode.NXDOMAIN or current == asked:
                return self._answer(
                    name_text,
                    rdtype,
                    rcode,
                    (),
                    _min(ttl, _negative_ttl(response)),
                    secure,
                    current,
                    cnames,
                    malformed,
                )
            # The chain stopped at a name this response says nothing about:
            # ask for the last target itself.
            self._log.debug(
                "DNS response for {asked}/{rdtype} ended its CNAME chain at {target}; asking for it",
                asked=_name_text(asked),
                rdtype=_type_text(rdtype),
                target=_name_text(current),
            )

    @staticmethod
    def _answer(
        name: str,
        rdtype: int,
        rcode: int,
        records: tuple[Any, ...],
        ttl: int | None,
        secure: bool,
        canonical: dns.name.Name,
        cnames: list[str],
        malformed: int = 0,
    ) -> Answer:
        return Answer(
            name=name,
            rdtype=rdtype,
            rcode=rcode,
            records=records,
            ttl=max(0, ttl or 0),
            secure=secure,
            canonical_name=_name_text(canonical),
            cnames=tuple(cnames),
            malformed=malformed,
        )

    async def _exchange(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, asked: str
    ) -> dns.message.Message:
        """One question to the nameservers in turn until one gives an answer."""
        failures: list[str] = []
        last = _TryFailed("timeout", "no server tried")
        for attempt in range(self._attempts):
            for server in self._nameservers:
                try:
                    response = await self._try(server, qname, rdtype)
                except _TryFailed as e:
                    last = e
                else:
                    rcode = response.rcode()
                    if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                        return response
                    last = _TryFailed(_KIND_BY_RCODE.get(rcode, "rcode"), dns.rcode.to_text(rcode))
                failures.append(f"{server} ({last.detail})")
                self._log.debug(
                    "DNS server {server} gave {kind} ({detail}) for {name}/{rdtype} (attempt {attempt});"
                    " trying the next server",
                    server=server,
                    kind=last.kind,
                    detail=last.detail,
                    name=_name_text(qname),
                    rdtype=_type_text(rdtype),
                    attempt=attempt + 1,
                )
        where = "" if _name_text(qname) == asked else f" (at CNAME target {_name_text(qname)})"
        raise DNSError(
            asked,
            rdtype,
            last.kind,
            f"DNS lookup of {asked}/{_type_text(rdtype)} failed{where}; tried {', '.join(failures)}",
        )

    async def _try(
        self, server: str, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> dns.message.Message:
        query = dns.message.make_query(
            qname, rdtype, use_edns=0, payload=_EDNS_PAYLOAD, want_dnssec=True
        )
        query.id = secrets.randbelow(0x10000)
        # Ask for AD explicitly too (RFC 6840 5.7), not only through DO.
        query.flags |= dns.flags.AD
        datagram = _DatagramQuery(query, server, self._port)
        try:
            return await self._deadline(datagram.start(self._reactor))
        except _Truncated as e:
            self._log.debug(
                "DNS response from {server} for {name}/{rdtype} {why}; retrying over TCP",
                server=server,
                name=_name_text(qname),
                rdtype=_type_text(rdtype),
                why=e.why,
            )
        except _TryFailed as e:
            if e.kind != "timeout" or datagram.unusable is None:
                raise
            self._log.debug(
                "No usable UDP response from {server} for {name}/{rdtype}, only junk"
                " ({detail}); retrying over TCP",
                server=server,
                name=_name_text(qname),
                rdtype=_type_text(rdtype),
                detail=datagram.unusable,
            )
        return await self._deadline(
            _StreamQueryFactory(query).start(self._reactor, server, self._port, self._timeout)
        )

    async def _deadline(self, d: Deferred[dns.message.Message]) -> dns.message.Message:
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        except _DeferredTimeout:
            raise _TryFailed("timeout", f"no response within {self._timeout:g}s") from None


def _find(response: dns.message.Message, name: dns.name.Name, rdtype: int) -> Any:
    for rrset in response.answer:
        if rrset.rdclass == dns.rdataclass.IN and rrset.rdtype == rdtype and rrset.name == name:
            return rrset
    return None


def _negative_ttl(response: dns.message.Message) -> int:
    """RFC 2308 section 5: the SOA's own TTL capped by its MINIMUM field."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            return int(min(rrset.ttl, rrset[0].minimum))
    return 0


def _min(current: int | None, ttl: int) -> int:
    return int(ttl) if current is None else min(current, int(ttl))
