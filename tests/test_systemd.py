"""Tests for L{mxpolicyd.ops.systemd}: sd_notify over a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.ops.systemd import Notifier, NotifyService


class _Listener:
    """The service manager's end: a datagram socket bound in a temporary directory."""

    def __init__(self, case: SynchronousTestCase, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        case.addCleanup(self.sock.close)
        self.sock.setblocking(False)
        if abstract:
            name = "mxpolicyd-test-%d-%d" % (os.getpid(), id(self))
            self.sock.bind(b"\0" + name.encode("ascii"))
            self.address = "@" + name
        else:
            directory = tempfile.mkdtemp()
            case.addCleanup(os.rmdir, directory)
            self.address = os.path.join(directory, "notify")
            self.sock.bind(self.address)
            case.addCleanup(os.unlink, self.address)

    def messages(self) -> list[dict[str, str]]:
        """Every datagram received so far, each parsed into its fields."""
        out: list[dict[str, str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            lines = data.decode("utf-8").split("\n")
            self_check = lines.pop()
            assert self_check == "", data
            out.append(dict(line.split("=", 1) for line in lines))


class NotifierTests(SynchronousTestCase):
    def test_path_socket(self) -> None:
        """A message reaches a socket named by a file path, one KEY=value line per field."""
        listener = _Listener(self)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.address})
        self.assertTrue(notifier.send(READY=1, STATUS="serving"))
        self.assertEqual(listener.messages(), [{"READY": "1", "STATUS": "serving"}])

    def test_abstract_socket(self) -> None:
        """An address starting with '@' is looked up in the abstract namespace."""
        listener = _Listener(self, abstract=True)
        self.assertTrue(Notifier(listener.address).send(STOPPING=1))
        self.assertEqual(listener.messages(), [{"STOPPING": "1"}])

    def test_no_socket(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
        notifier = Notifier.from_environ({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.send(READY=1))

    def test_newline_in_value(self) -> None:
        """A newline inside a value cannot start a field of its own."""
        listener = _Listener(self)
        Notifier(listener.address).send(STATUS="a\nREADY=1")
        self.assertEqual(listener.messages(), [{"STATUS": "a READY=1"}])

    def test_dead_socket_logged_once(self) -> None:
        """A socket that is gone gives one warning, then the notifier stays quiet."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        notifier = Notifier(os.path.join(tempfile.gettempdir(), "no-such-dir-%d" % os.getpid(), "s"))
        self.assertFalse(notifier.send(READY=1))
        self.assertFalse(notifier.send(READY=1))
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertFalse(notifier.enabled)


class NotifyServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.listener = _Listener(self)
        self.clock = Clock()
        self.cached = 3
        self.service = NotifyService(
            Notifier(self.listener.address),
            self.clock,
            lambda: "serving; %d domains cached" % self.cached,
            interval=60.0,
            monotonic_usec=lambda: 123456789,
        )

    def test_ready_on_start(self) -> None:
        """Starting sends READY=1 with the status line."""
        self.service.startService()
        self.assertEqual(
            self.listener.messages(),
            [{"READY": "1", "STATUS": "serving; 3 domains cached"}],
        )

    def test_status_updates(self) -> None:
        """The status line is re-sent every interval while running, and not after stopping."""
        self.service.startService()
        self.listener.messages()
        self.cached = 7
        self.clock.advance(60)
        self.assertEqual(self.listener.messages(), [{"STATUS": "serving; 7 domains cached"}])
        self.service.stopService()
        self.listener.messages()
        self.clock.advance(600)
        self.assertEqual(self.listener.messages(), [])

    def test_stopping(self) -> None:
        """Stopping sends STOPPING=1."""
        self.service.startService()
        self.listener.messages()
        self.service.stopService()
        [message] = self.listener.messages()
        self.assertEqual(message["STOPPING"], "1")

    def test_reload_applied(self) -> None:
        """A reload is bracketed by RELOADING=1 with MONOTONIC_USEC and READY=1."""
        self.service.startService()
        self.listener.messages()
        seen: list[list[dict[str, str]]] = []

        def apply() -> bool:
            seen.append(self.listener.messages())
            return True

        result = self.service.reload(apply)
        self.assertTrue(result)
        self.assertEqual(
            seen,
            [[{"RELOADING": "1", "MONOTONIC_USEC": "123456789",
               "STATUS": "reloading the configuration"}]],
        )
        self.assertEqual(
            self.listener.messages(), [{"READY": "1", "STATUS": "serving; 3 domains cached"}]
        )

    def test_reload_refused(self) -> None:
        """A refused reload still ends with READY=1, and the status says so until one applies."""
        self.service.startService()
        self.listener.messages()
        self.assertFalse(self.service.reload(lambda: False))
        messages = self.listener.messages()
        self.assertEqual([m.get("RELOADING") for m in messages], ["1", None])
        self.assertEqual(messages[1]["READY"], "1")
        self.assertIn("reload refused", messages[1]["STATUS"])
        self.clock.advance(60)
        self.assertIn("reload refused", self.listener.messages()[0]["STATUS"])
        self.service.reload(lambda: True)
        self.assertNotIn("refused", self.listener.messages()[1]["STATUS"])

    def test_reload_raises(self) -> None:
        """A reload that raises still sends READY=1, then lets the error through."""
        self.service.startService()
        self.listener.messages()

        def broken() -> bool:
            raise RuntimeError("boom")

        self.assertRaises(RuntimeError, self.service.reload, broken)
        self.assertEqual(self.listener.messages()[-1]["READY"], "1")

    def test_order_in_tree(self) -> None:
        """Added last to a running tree, it sends READY=1 at once and STOPPING=1 before the listeners stop."""
        received = self.listener
        at_listener_stop: list[list[dict[str, str]]] = []

        class Listener(Service):
            def stopService(self) -> None:
                at_listener_stop.append(received.messages())
                super().stopService()

        top = MultiService()
        Listener().setServiceParent(top)
        top.startService()
        self.service.setServiceParent(top)
        self.assertEqual(self.listener.messages()[0]["READY"], "1")
        top.stopService()
        self.assertEqual([m.get("STOPPING") for m in at_listener_stop[0]], ["1"])


class SocketActivationConfigTests(SynchronousTestCase):
    def test_systemd_listener_checked_only_in_service(self) -> None:
        """check-config accepts a systemd: listener without LISTEN_FDS, but still rejects a bad one beside it."""
        from twisted.internet.testing import MemoryReactor

        from mxpolicyd.cli import _check_listeners
        from mxpolicyd.config.load import ConfigError, parse

        self.patch(os, "environ", {"HOME": "/h"})
        good = parse({"socketmap": {"listen": ["systemd:domain=INET:index=0"]}}, "t.toml", {"HOME": "/h"})
        _check_listeners(good, MemoryReactor())
        bad = parse(
            {"socketmap": {"listen": ["systemd:domain=INET:index=0", "tcp:notaport"]}},
            "t.toml", {"HOME": "/h"},
        )
        message = str(self.assertRaises(ConfigError, _check_listeners, bad, MemoryReactor()))
        self.assertIn("tcp:notaport", message)
