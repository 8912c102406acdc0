"""
The service manager's side channel: sd_notify(3) without libsystemd.

Under a C{Type=notify} unit, systemd names a datagram socket in
C{$NOTIFY_SOCKET}; the daemon tells it when the listeners are up
(C{READY=1}), when a SIGHUP reload starts and ends (C{RELOADING=1},
C{READY=1}), when it stops (C{STOPPING=1}), and a one-line C{STATUS=} that
C{systemctl status} shows.  Outside systemd there is no socket and every
message is dropped, so the daemon runs the same either way.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def _monotonic_usec() -> int:
    # CLOCK_MONOTONIC, which is what systemd compares MONOTONIC_USEC with.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """
    Sends state lines to the socket systemd gave, one datagram per message.

    A failed send is logged once and never raised: losing a status line must
    not stop lookups.
    """

    _log = Logger()

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            # Linux's abstract namespace: a leading NUL, no file.
            return b"\0" + self.address[1:].encode("utf-8")
        return self.address

    def send(self, **fields: Any) -> bool:
        """Send C{KEY=value} lines; C{False} when there is no one to tell."""
        if self.address is None:
            return False
        message = "".join(
            "%s=%s\n" % (key, str(value).replace("\n", " "))
            for key, value in fields.items()
        ).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message, self._target())
        except OSError as e:
            self._log.warn(
                "Cannot notify systemd at {address} ({error}); carrying on "
                "without telling it the daemon's state",
                address=self.address,
                error=e,
            )
            self.address = None
            return False
        return True


class NotifyService(Service):
    """
    The daemon's state as systemd sees it.

    Added to the running service tree last, so it starts once every listener
    is up (C{READY=1}) and, the tree stopping children in reverse, stops first
    (C{STOPPING=1}) while the listeners still close and the store flushes.
    """

    def __init__(
        self,
        notifier: Notifier,
        clock: Any,
        status: Callable[[], str],
        interval: float = 60.0,
        monotonic_usec: Callable[[], int] = _monotonic_usec,
    ) -> None:
        self._notifier = notifier
        self._status = status
        self._interval = interval
        self._monotonic_usec = monotonic_usec
        self._refused = False
        self._updates = LoopingCall(self._update)
        self._updates.clock = clock

    def _status_line(self) -> str:
        status = self._status()
        if self._refused:
            status += "; last reload refused, see the log"
        return status

    def _update(self) -> None:
        self._notifier.send(STATUS=self._status_line())

    def startService(self) -> None:
        super().startService()
        self._notifier.send(READY=1, STATUS=self._status_line())
        if self._notifier.enabled:
            self._updates.start(self._interval, now=False)

    def stopService(self) -> Any:
        if self._updates.running:
            self._updates.stop()
        self._notifier.send(STOPPING=1, STATUS="stopping: flushing the store")
        return super().stopService()

    def reload(self, apply: Callable[[], bool]) -> bool:
        """
        Run one reload between C{RELOADING=1} and C{READY=1}.

        systemd waits for the READY after a reload whether the new file was
        applied or refused: either way the daemon is serving again.
        """
        self._notifier.send(
            RELOADING=1,
            MONOTONIC_USEC=self._monotonic_usec(),
            STATUS="reloading the configuration",
        )
        applied = False
        try:
            applied = apply()
        finally:
            self._refused = not applied
            self._notifier.send(READY=1, STATUS=self._status_line())
        return applied
