"""
The Postfix socketmap wire codec (socketmap_table(5)).

A request is one netstring C{<len>:NAME SP KEY,}; the reply is one netstring.
Postfix keeps one connection per process and sends one request at a time.
This protocol parses bytes, calls the injected C{lookup(name, key)} and
writes what it returns; it knows nothing of caches, DNS or HTTP.  A lookup
may answer synchronously (C{bytes}, the cached case) or with a Deferred.

On a plain TCP or UNIX connection a reply is written straight to the socket
when nothing is buffered, as asyncio's transports do, rather than by
Twisted's write buffer on the next reactor turn: that saves two epoll
updates and a reactor dispatch per lookup, about a third of a cached
lookup's CPU.

Every peer may be hostile, so what one connection can make the daemon hold
is bounded.  Replies: the protocol is a streaming producer on its own
transport; while the transport holds more unsent replies than its
C{bufferSize}, the connection is not read and requests already read are not
parsed, so a client that pipelines and never reads costs a buffer, not a
reply per request; and pipelined requests are answered a hundred at a time,
each batch a reactor turn, so that the other connections are served too.  Time: a request must be complete within
C{request_timeout} of its first byte, so a client dripping one byte at a
time cannot hold a connection slot; it gets C{PERM} and a close, after which
Postfix reconnects.  Between requests C{idle_timeout} applies.
"""

from __future__ import annotations

import socket
from typing import Callable, Union

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mxpolicyd.protocols.limits import ConnectionLimit

Reply = Union[bytes, Deferred[bytes]]


Lookup = Callable[[bytes, bytes], Reply]

# A 100000-byte request has a six-digit length; anything longer is garbage.
_MAX_DIGITS = 6

# Pipelined requests answered in one go before the other connections get a
# turn.  Replies go straight to the socket, whose kernel buffer takes
# megabytes before Twisted's buffer fills and pauses the connection: without
# turns, one 64 KiB read of requests could keep the reactor for a long while.
_TURN = 100

# The transport's bufferSize: the most it reads at once, and the unsent
# replies beyond which it pauses the connection.  Twisted's 64 KiB for each
# would let max_connections (1000) clients that pipeline and never read
# hold some 130 MB; Postfix's requests and replies are far smaller.
_BUFFER = 16 * 1024


def netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


@implementer(IPushProducer)
class SocketmapProtocol(Protocol):
    """
    One Postfix connection: netstring requests in, netstring replies out.

    It is the producer of its replies (L{IPushProducer}): the transport
    pauses it when its buffer is full and resumes it once the buffer is
    empty.
    """

    _log = Logger()

    def __init__(self, factory: SocketmapFactory) -> None:
        self._factory = factory
        self._lookup = factory.lookup
        self._seconds = factory.clock.seconds
        self._buffer = b""
        self._in_flight: Deferred[bytes] | None = None
        self._last = 0.0
        self._idle: IDelayedCall | None = None
        self._closing = False
        self._socket: socket.socket | None = None
        # The plain socket, kept while Twisted's buffer holds replies.
        self._direct: socket.socket | None = None
        self._processing = False
        # The transport holds unsent replies beyond its bound: read nothing.
        self._paused = False
        # The deadline of a request begun and not yet complete.
        self._deadline: IDelayedCall | None = None
        # The next turn of a connection with more pipelined requests.
        self._turn: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport = self.transport
        if isinstance(transport, tcp.Connection) and not transport.TLS:
            self._socket = self._direct = transport.socket
        transport.bufferSize = _BUFFER  # type: ignore[union-attr]
        transport.registerProducer(self, True)  # type: ignore[union-attr]
        self._factory.limit.opened()
        self._last = self._factory.clock.seconds()
        self._idle = self._factory.clock.callLater(
            self._factory.idle_timeout, self._checkIdle
        )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._factory.limit.closed()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self._stopDeadline()
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        self._buffer = b""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.cancel()

    # IPushProducer: the transport's buffer of replies is full, or empty again.

    def pauseProducing(self) -> None:
        self._paused = True
        # Waiting on our own replies is not the client's slowness.
        self._stopDeadline()
        if not self._closing:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def resumeProducing(self) -> None:
        if not self._paused or self._closing:
            return
        self._paused = False
        # Twisted's buffer is empty: replies may go straight to the socket again.
        self._socket = self._direct
        self._last = self._seconds()
        self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._in_flight is None and not self._processing:
            self._process()

    def stopProducing(self) -> None:
        """The connection is going away; connectionLost cleans up."""

    def _yieldTurn(self) -> None:
        """Read and answer nothing more until the reactor has served the others."""
        self._paused = True
        self.transport.pauseProducing()  # type: ignore[union-attr]
        self._turn = self._factory.clock.callLater(0, self._nextTurn)

    def _nextTurn(self) -> None:
        self._turn = None
        if self._closing:
            return
        # Not resumeProducing: Twisted's buffer may hold replies, so the
        # socket may not be written directly.
        self._paused = False
        self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._in_flight is None and not self._processing:
            self._process()

    def _checkIdle(self) -> None:
        # One timer per idle period, not a reset per request: requests only
        # note the time, which keeps the cached path cheap.
        if self._closing:
            # Closed an idle period ago and still not gone: the client
            # reads none of what is left to send.
            self._idle = None
            self._abort()
            return
        idle = self._factory.idle_timeout
        left = self._last + idle - self._factory.clock.seconds()
        if self._in_flight is None and left <= 0:
            if self._paused:
                # Replies unread for an idle period: they never will be.
                self._idle = None
                self._abort()
                return
            self._close()
            return
        self._idle = self._factory.clock.callLater(max(left, idle / 10), self._checkIdle)

    def _close(self) -> None:
        """
        Close once the replies are sent; if the client has not read them
        within an idle period, abort (the idle timer does), or one that
        never reads would keep its connection slot for good.
        """
        if self._closing:
            return
        self._closing = True
        self._buffer = b""
        self._stopDeadline()
        transport = self.transport
        assert transport is not None
        # A registered producer would keep the connection open after the
        # buffer drains (FileDescriptor.loseConnection).
        transport.unregisterProducer()  # type: ignore[attr-defined]
        transport.loseConnection()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = self._factory.clock.callLater(
            self._factory.idle_timeout, self._checkIdle
        )

    def _abort(self) -> None:
        self._closing = True
        self._buffer = b""
        self._stopDeadline()
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _startDeadline(self) -> None:
        # Only for a request left incomplete by a read: Postfix sends each
        # request whole, so the cached path never gets here.
        if self._deadline is None:
            self._deadline = self._factory.clock.callLater(
                self._factory.request_timeout, self._expired
            )

    def _stopDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self._closing:
            self._fatal("no complete request within %g s" % self._factory.request_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._last = self._seconds()
        if self._buffer:
            data = self._buffer + data
        self._buffer = data
        if self._in_flight is None and not self._paused:
            self._process()
        elif len(data) > self._factory.max_request_size + _MAX_DIGITS + 2 and not self._paused:
            # Postfix sends one request at a time; this peer does not.
            self._fatal("too much data sent ahead of the reply")
        # While paused the transport reads nothing more, so the buffer
        # holds at most the one read that was under way.

    def _process(self) -> None:
        # A lookup answered by an already-fired Deferred calls _answered
        # from inside _request: the loop below goes on with the rest,
        # instead of _answered recursing once per pipelined request.
        self._processing = True
        try:
            self._parse()
        finally:
            self._processing = False

    def _parse(self) -> None:
        # The hot path: locals, and the loop ends when the buffer does.
        buf = self._buffer
        turn = _TURN
        while buf:
            colon = buf.find(b":", 0, _MAX_DIGITS + 1)
            if colon < 0:
                if len(buf) > _MAX_DIGITS or not buf.isdigit():
                    self._fatal("malformed netstring length")
                    return
                self._startDeadline()
                return
            digits = buf[:colon]
            # bytes.isdigit() is true for ASCII digits only.
            if not digits.isdigit():
                self._fatal("malformed netstring length")
                return
            if colon > 1 and buf[0] == 0x30:  # "0"
                self._fatal("malformed netstring length (leading zero)")
                return
            size = int(digits)
            if size > self._factory.max_request_size:
                self._fatal(
                    "request of %d bytes exceeds the limit of %d"
                    % (size, self._factory.max_request_size)
                )
                return
            end = colon + 1 + size
            if len(buf) <= end:
                self._startDeadline()
                return
            if buf[end] != 0x2C:  # ","
                self._fatal("malformed netstring (no comma after the data)")
                return
            payload = buf[colon + 1 : end]
            self._buffer = buf[end + 1 :]
            if self._deadline is not None:
                self._stopDeadline()
            self._request(payload)
            if self._in_flight is not None or self._closing or self._paused:
                # Paused: this read's other requests wait for the client to
                # read the replies, or one read could make megabytes of them.
                return
            buf = self._buffer
            turn -= 1
            if not turn and buf:
                self._yieldTurn()
                return

    def _request(self, payload: bytes) -> None:
        name, space, key = payload.partition(b" ")
        if not space or not name:
            self._reply(b"PERM request is not 'name key'")
            return
        if not key:
            self._reply(b"PERM empty key")
            return
        try:
            result = self._lookup(name, key)
        except Exception:
            self._log.failure("Lookup of {key!r} in {name!r} crashed", key=key, name=name)
            self._reply(b"TEMP internal error")
            return
        if isinstance(result, bytes):
            self._write(b"%d:%s," % (len(result), result))
            return
        self._in_flight = result
        result.addCallbacks(self._answered, self._failed, errbackArgs=(name, key))

    def _answered(self, reply: bytes) -> None:
        if self._in_flight is None:
            return
        self._in_flight = None
        if self._closing:
            return
        self._reply(reply)
        if not self._processing and not self._paused:
            self._process()

    def _failed(self, failure: Failure, name: bytes, key: bytes) -> None:
        if self._in_flight is None:
            return  # the connection went away; nobody to tell
        self._log.failure(
            "Lookup of {key!r} in {name!r} failed", failure, key=key, name=name
        )
        self._answered(b"TEMP internal error")

    def _reply(self, payload: bytes) -> None:
        self._write(netstring(payload))

    def _write(self, data: bytes) -> None:
        sock = self._socket
        if sock is not None:
            transport: tcp.Connection = self.transport  # type: ignore[assignment]
            if transport.connected and not transport.disconnecting:
                try:
                    sent = sock.send(data)
                except OSError:
                    # Full, or broken: Twisted's buffer retries, or finds
                    # the error and closes the connection as usual.
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
            # Twisted's buffer may hold data from now on; only it keeps the
            # order, so every later reply goes through it too.
            self._socket = None
        self.transport.write(data)  # type: ignore[union-attr]

    def _fatal(self, reason: str) -> None:
        """Framing is lost: say why, then close (Postfix reconnects)."""
        peer: IAddress | None = self.transport.getPeer() if self.transport else None
        self._log.warn(
            "Bad socketmap request from {peer}: {reason}; closing the connection",
            peer=peer,
            reason=reason,
        )
        self._reply(b"PERM " + reason.encode("ascii"))
        self._close()


class SocketmapFactory(Factory):
    """Serves socketmap lookups; refuses connections beyond a limit."""

    _log = Logger()
    noisy = False

    def __init__(
        self,
        lookup: Lookup,
        clock: IReactorTime,
        max_request_size: int = 10000,
        idle_timeout: float = 60.0,
        max_connections: int = 1000,
        request_timeout: float = 10.0,
    ) -> None:
        self.lookup = lookup
        self.clock = clock
        self.max_request_size = max_request_size
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.limit = ConnectionLimit(max_connections, clock, self._log, "socketmap",
                                     "socketmap.max_connections")

    def buildProtocol(self, addr: IAddress) -> SocketmapProtocol | None:  # type: ignore[override]
        if not self.limit.admit(addr):
            # Postfix sees the close, retries once, then defers the mail:
            # nothing is lost, and the daemon stays responsive.
            return None
        return SocketmapProtocol(self)
