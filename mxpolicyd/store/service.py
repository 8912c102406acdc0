"""
The store's timer: a flush every C{store.flush_interval} and a last one at
shutdown, before the file or connection is closed.
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from mxpolicyd.store.base import DurableStore


class StoreService(Service):
    """Flushes the store on a timer and once more at shutdown."""

    def __init__(
        self,
        store: DurableStore,
        clock: IReactorTime,
        interval: float,
        stop: Callable[[], None] = lambda: None,
    ) -> None:
        self._store = store
        self._loop = LoopingCall(store.flush)
        self._loop.clock = clock
        self._interval = interval
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        d = self._store.flush()
        # A flush already in progress leaves newer states unwritten.
        d.addBoth(lambda _: self._store.flush())
        d.addBoth(lambda _: self._store.close())
        d.addBoth(lambda _: self._stop())
        return d
