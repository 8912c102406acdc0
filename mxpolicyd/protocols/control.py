"""
The control socket: administrators' commands to a running daemon.

The lookup listeners are read-only; anything that changes state (forget a
domain, refresh it now) comes only through this unix socket, whose file
mode and directory keep it to the daemon's user and an admin group.
Otherwise any local user could make the daemon forget a cached MTA-STS
policy and open the door to a downgrade on the next fetch.

One JSON object per line in, one JSON object per line out, then close:
one command per connection.  A client has C{request_timeout} seconds from
connecting to send it, and once it is sent nothing more is read, so a
silent or chattering client holds one of the few connection slots for
seconds at most and no memory.  The codec calls one injected function
with the request; what the commands do is L{mxpolicyd.answers.control}'s
business.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from mxpolicyd.protocols.limits import ConnectionLimit

Result = Union[dict[str, Any], Deferred[dict[str, Any]]]
Run = Callable[[dict[str, Any]], Result]

# Fixed, not configured: see ControlFactory.  The CLI names them when the
# daemon refuses a connection.
MAX_CONNECTIONS = 16
REQUEST_TIMEOUT = 10.0
REPLY_TIMEOUT = 60.0


class ControlProtocol(Protocol):
    """One administrator's command: a JSON line in, a JSON line out, close."""

    MAX_LENGTH = 4096
    _log = Logger()

    def __init__(self, run: Run, limit: ConnectionLimit, clock: IReactorTime,
                 request_timeout: float, reply_timeout: float) -> None:
        self._run = run
        self._limit = limit
        self._clock = clock
        self._request_timeout = request_timeout
        self._reply_timeout = reply_timeout
        self._buffer = b""
        self._served = False
        self._lost = False
        self._timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._limit.opened()
        self._timer = self._clock.callLater(self._request_timeout, self._expired)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._limit.closed()
        self._stop_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._served:
            return
        self._buffer += data
        line, newline, _ = self._buffer.partition(b"\n")
        if len(line) > self.MAX_LENGTH:
            self._serve()
            self._reply({"error": "request longer than %d bytes" % self.MAX_LENGTH})
        elif newline:
            self._serve()
            self.lineReceived(line)

    def _serve(self) -> None:
        """The one request is in: read nothing more, and stop its clock."""
        self._served = True
        self._buffer = b""
        self._stop_timer()
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def _expired(self) -> None:
        self._timer = None
        if not self._served:
            self._served = True
            self._buffer = b""
            self._reply({"error": "no complete request within %g s" % self._request_timeout})
        else:
            # The reply was written a while ago and the client reads none of it.
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._reply({"error": "request is not a JSON object: %s" % (e,)})
            return
        self._log.info("Control command {request}", request=request)
        try:
            result = self._run(request)
        except Exception:
            result = fail()
        d = result if isinstance(result, Deferred) else succeed(result)
        d.addErrback(self._failed)
        d.addCallback(self._reply)

    def _failed(self, failure: Failure) -> dict[str, Any]:
        self._log.failure("Control command failed", failure)
        return {"error": "internal error: %s" % failure.getErrorMessage()}

    def _reply(self, data: dict[str, Any]) -> None:
        if self._lost or self.transport is None:
            return  # the client went away while its command ran
        self.transport.write(json.dumps(data, sort_keys=True).encode("utf-8") + b"\n")
        self.transport.loseConnection()
        # A client that never reads a reply too big for the socket buffer
        # would keep the connection: cut it off after a while.
        self._stop_timer()
        self._timer = self._clock.callLater(self._reply_timeout, self._expired)


class ControlFactory(Factory):
    """
    Serves administrators' commands; refuses connections beyond a small
    limit.  A command is one exchange, a refresh at most one evaluation
    long, and a person or a script sends a few at a time: 16 at once is
    plenty, and it bounds the descriptors a runaway script can take.  The
    command must arrive within 10 s of connecting (the CLI sends it at
    once), and a reply be read within 60 s, so that silent clients cannot
    keep the administrators out.
    """

    noisy = False
    _log = Logger()

    def __init__(self, run: Run, clock: IReactorTime, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT,
                 reply_timeout: float = REPLY_TIMEOUT) -> None:
        self._run = run
        self._clock = clock
        self.request_timeout = request_timeout
        self.reply_timeout = reply_timeout
        self.limit = ConnectionLimit(max_connections, clock, self._log, "control",
                                     "the control socket's fixed limit")

    def buildProtocol(self, addr: object) -> ControlProtocol | None:
        if not self.limit.admit(addr):
            return None
        return ControlProtocol(self._run, self.limit, self._clock, self.request_timeout,
                               self.reply_timeout)
