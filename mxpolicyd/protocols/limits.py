"""
Connection limits shared by the listeners: beyond its C{max_connections} a
listener refuses, and says so at most once a minute.  Every peer may be
hostile, and an open connection holds a descriptor and memory.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class Refusals:
    """
    Connections refused at a listener's limit, logged at most once a
    minute: a client storm must not become a log storm too.
    """

    interval = 60.0

    def __init__(self, clock: IReactorTime, log: Logger, what: str, key: str) -> None:
        self._clock = clock
        self._log = log
        self._what = what
        self._key = key
        self._since_logged = 0
        self._logged = -self.interval
        self.total = 0

    def refused(self, peer: object, count: int) -> None:
        self.total += 1
        self._since_logged += 1
        now = self._clock.seconds()
        if now - self._logged < self.interval:
            return
        self._log.warn(
            "Refusing {what} connection from {peer}: {count} connections open ({key}); "
            "{refused} refused since the last such line, which comes at most once a minute",
            what=self._what, peer=peer, count=count, key=self._key,
            refused=self._since_logged,
        )
        self._logged = now
        self._since_logged = 0


class ConnectionLimit:
    """
    At most C{maximum} connections open at one listener.

    Its factory asks L{admit} in C{buildProtocol} (returning None closes the
    new connection at once), and each protocol says when it is L{opened}
    and L{closed}.  The protocols count themselves rather than being wrapped
    (C{twisted.protocols.policies}' ProtocolWrapper), which would put one
    more call in front of every C{dataReceived}: on the socketmap listener,
    in front of every lookup.
    """

    def __init__(self, maximum: int, clock: IReactorTime, log: Logger, what: str,
                 key: str) -> None:
        self.maximum = maximum
        self.open = 0
        self.refusals = Refusals(clock, log, what, key)

    def admit(self, peer: object) -> bool:
        """Whether one more connection may open; a refusal is counted and logged."""
        if self.open < self.maximum:
            return True
        self.refusals.refused(peer, self.open)
        return False

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1
