"""
The Exim readsocket codec: one request line in, one reply line out, close.

Exim's C{${readsocket{spec}{request}}} writes the request as given and, by
default, half-closes its side and reads until EOF; with C{shutdown=no} it
keeps the write side open and the request must end with a newline.  So a
request ends at the first newline or at the half-close, whichever comes
first.  The protocol parses bytes, calls the injected C{lookup(key)} and
writes the line it returns; it knows nothing of caches, DNS or HTTP.

Every peer may be hostile: the request is bounded in bytes
(C{max_request_size}) and in time (C{timeout}), and once it is in, the
connection is not read any more, so whatever a client sends after it costs
the daemon neither memory nor work.
"""

from __future__ import annotations

from typing import Callable, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mxpolicyd.protocols.limits import ConnectionLimit

Reply = Union[bytes, Deferred[bytes]]
Lookup = Callable[[bytes], Reply]


def error_line(reason: str) -> bytes:
    """What a request that cannot be answered gets: Exim defers on temp."""
    return b'action=temp reason="%s"\n' % reason.encode("ascii")


@implementer(IHalfCloseableProtocol)
class EximProtocol(Protocol):
    _log = Logger()

    def __init__(self, factory: EximFactory) -> None:
        self._factory = factory
        self._buffer = b""
        self._answered = False
        self._in_flight: Deferred[bytes] | None = None
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._factory.limit.opened()
        self._timer = self._factory.clock.callLater(self._factory.timeout, self._expired)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._factory.limit.closed()
        self._stop_timer()
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.cancel()

    def dataReceived(self, data: bytes) -> None:
        if self._answered:
            return
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if len(line) > self._factory.max_request_size:
            # Refused however the line was split into segments.
            self._reply(error_line("request longer than %d bytes"
                                   % self._factory.max_request_size))
        elif newline:
            self._request(line)

    def readConnectionLost(self) -> None:
        """Exim's default: the request is everything before the half-close."""
        if not self._answered:
            self._request(self._buffer)

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _expired(self) -> None:
        self._timer = None
        if not self._answered:
            self._reply(error_line("no complete request within %d s" % self._factory.timeout))

    def _request(self, line: bytes) -> None:
        self._answered = True
        self._buffer = b""
        # One request per connection: read nothing more while it is answered.
        self.transport.pauseProducing()  # type: ignore[union-attr]
        key = line.rstrip(b"\r").strip()
        if not key:
            self._reply(error_line("empty request: send the domain"))
            return
        try:
            result = self._factory.lookup(key)
        except Exception:
            self._log.failure("Exim lookup of {key!r} crashed", key=key)
            self._reply(error_line("internal error"))
            return
        if isinstance(result, bytes):
            self._reply(result)
            return
        self._in_flight = result
        result.addCallbacks(self._done, self._failed, errbackArgs=(key,))

    def _done(self, reply: bytes) -> None:
        if self._in_flight is not None:
            self._in_flight = None
            self._reply(reply)

    def _failed(self, failure: Failure, key: bytes) -> None:
        if self._in_flight is not None:
            self._log.failure("Exim lookup of {key!r} failed", failure, key=key)
            self._done(error_line("internal error"))

    def _reply(self, line: bytes) -> None:
        self._answered = True
        self._stop_timer()
        self.transport.write(line)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class EximFactory(Factory):
    """Serves Exim lookups, one per connection; refuses beyond a limit."""

    noisy = False
    _log = Logger()

    def __init__(self, lookup: Lookup, clock: IReactorTime, timeout: float = 10.0,
                 max_request_size: int = 1024, max_connections: int = 1000) -> None:
        self.lookup = lookup
        self.clock = clock
        self.timeout = timeout
        self.max_request_size = max_request_size
        self.limit = ConnectionLimit(max_connections, clock, self._log, "Exim",
                                     "exim.max_connections")

    def buildProtocol(self, addr: object) -> EximProtocol | None:
        if not self.limit.admit(addr):
            return None
        return EximProtocol(self)
