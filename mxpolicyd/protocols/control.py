"""
The control socket: administrators' commands to a running daemon.

The lookup listeners are read-only; anything that changes state (forget a
domain, refresh it now) comes only through this unix socket, whose file
mode and directory keep it to the daemon's user and an admin group.
Otherwise any local user could make the daemon forget a cached MTA-STS
policy and open the door to a downgrade on the next fetch.

One JSON object per line in, one JSON object per line out, then close.
The codec calls one injected function with the request; what the commands
do is L{mxpolicyd.answers.control}'s business.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from mxpolicyd.protocols.limits import ConnectionLimit

Result = Union[dict[str, Any], Deferred[dict[str, Any]]]
Run = Callable[[dict[str, Any]], Result]


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 4096
    _log = Logger()

    def __init__(self, run: Run, limit: ConnectionLimit) -> None:
        self._run = run
        self._limit = limit

    def connectionMade(self) -> None:
        super().connectionMade()
        self._limit.opened()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._limit.closed()
        super().connectionLost(reason)

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

    def lineLengthExceeded(self, line: bytes) -> None:
        self._reply({"error": "request longer than %d bytes" % self.MAX_LENGTH})

    def _reply(self, data: dict[str, Any]) -> None:
        if self.transport is None:
            return
        self.transport.write(json.dumps(data, sort_keys=True).encode("utf-8") + b"\n")
        self.transport.loseConnection()


class ControlFactory(Factory):
    """
    Serves administrators' commands; refuses connections beyond a small
    limit.  A command is one exchange, a refresh at most one evaluation
    long, and a person or a script sends a few at a time: 16 at once is
    plenty, and it bounds the descriptors a runaway script can take.
    """

    noisy = False
    _log = Logger()

    def __init__(self, run: Run, clock: IReactorTime, max_connections: int = 16) -> None:
        self._run = run
        self.limit = ConnectionLimit(max_connections, clock, self._log, "control",
                                     "the control socket's fixed limit")

    def buildProtocol(self, addr: object) -> ControlProtocol | None:
        if not self.limit.admit(addr):
            return None
        return ControlProtocol(self._run, self.limit)
