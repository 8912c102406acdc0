"""Tests for L{mxpolicyd.protocols.control}: administrators' commands over the control socket."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.control import ControlCommands
from mxpolicyd.protocols.control import ControlFactory, ControlProtocol

from .test_server import EnforceWorld


class ControlTests(EnforceWorld):
    def setUp(self) -> None:
        super().setUp()
        self.successResultOf(self.cache.lookup("example.test"))  # type: ignore[arg-type]
        self.commands = ControlCommands(self.cache)

    def ask(self, request: Any) -> dict[str, Any]:
        proto = ControlFactory(self.commands.run, self.clock).buildProtocol(None)
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        line = request if isinstance(request, bytes) else json.dumps(request).encode()
        proto.dataReceived(line + b"\n")
        self.assertTrue(transport.disconnecting)
        reply = json.loads(transport.value())
        assert isinstance(reply, dict)
        return reply

    def test_list(self) -> None:
        """list shows each cached domain's action and rule, with the total count."""
        reply = self.ask({"command": "list"})
        self.assertEqual(reply["count"], 1)
        self.assertEqual(reply["domains"][0]["domain"], "example.test")
        self.assertEqual(reply["domains"][0]["action"], "sts-enforce")

    def test_list_limit(self) -> None:
        """list --limit caps the output but not the count."""
        self.successResultOf(self.cache.lookup("other.test"))  # type: ignore[arg-type]
        reply = self.ask({"command": "list", "limit": 1})
        self.assertEqual((reply["count"], len(reply["domains"])), (2, 1))

    def test_show(self) -> None:
        """show gives the verdict and the full stored state; the key is normalised."""
        reply = self.ask({"command": "show", "domain": "EXAMPLE.test."})
        self.assertEqual(reply["domain"], "example.test")
        self.assertEqual(reply["state"]["sts"]["policy"]["mode"], "enforce")

    def test_show_unknown(self) -> None:
        """show of an uncached domain says so."""
        self.assertEqual(self.ask({"command": "show", "domain": "nope.test"})["error"],
                         "nope.test is not cached")

    def test_forget(self) -> None:
        """forget drops the domain; a second forget reports it was not cached."""
        self.assertTrue(self.ask({"command": "forget", "domain": "example.test"})["forgotten"])
        self.assertNotIn("example.test", self.cache)
        self.assertFalse(self.ask({"command": "forget", "domain": "example.test"})["forgotten"])

    def test_refresh(self) -> None:
        """refresh re-evaluates now and shows the result."""
        before = len(self.resolver.queries)
        reply = self.ask({"command": "refresh", "domain": "example.test"})
        self.assertEqual(reply["action"], "sts-enforce")
        self.assertGreater(len(self.resolver.queries), before)

    def test_bad_requests(self) -> None:
        """Junk, unknown commands and bad domains get an error reply, never a crash."""
        self.assertIn("not a JSON object", self.ask(b"junk")["error"])
        self.assertIn("not a JSON object", self.ask(b"[1]")["error"])
        self.assertIn("unknown command", self.ask({"command": "drop"})["error"])
        self.assertIn("not a domain", self.ask({"command": "show", "domain": "[1.2.3.4]"})["error"])
        self.assertIn("not a domain", self.ask({"command": "forget"})["error"])
        self.assertIn("limit", self.ask({"command": "list", "limit": "all"})["error"])
        self.assertIn("longer than", self.ask(b"x" * 5000)["error"])


class ControlLimitTests(SynchronousTestCase):
    """The control socket's connection limit."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.factory = ControlFactory(lambda request: {"ok": True}, self.clock,
                                      max_connections=2)
        self.factory.limit.refusals._log = Logger(  # type: ignore[misc]
            observer=self.events.append)

    def connect(self) -> ControlProtocol:
        proto = self.factory.buildProtocol(UNIXAddress(None))
        assert proto is not None
        proto.makeConnection(StringTransport())
        return proto

    def test_default(self) -> None:
        """Sixteen connections at once unless told otherwise."""
        self.assertEqual(ControlFactory(lambda request: {}, self.clock).limit.maximum, 16)

    def test_connection_limit(self) -> None:
        """The connection after max_connections is refused, and logged; a close makes room for one more."""
        self.connect()
        second = self.connect()
        self.assertEqual(self.factory.limit.open, 2)
        self.assertIsNone(self.factory.buildProtocol(UNIXAddress(None)))
        self.assertEqual([(e["what"], e["count"], e["key"]) for e in self.events],
                         [("control", 2, "the control socket's fixed limit")])
        second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.limit.open, 1)
        self.assertIsNotNone(self.factory.buildProtocol(UNIXAddress(None)))

    def test_answered_connection_counted_until_closed(self) -> None:
        """A connection holds its place until it is gone, not merely until it is answered."""
        proto = self.connect()
        proto.dataReceived(b'{"command": "list"}\n')
        self.assertEqual(self.factory.limit.open, 1)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.limit.open, 0)


class ControlOneRequestTests(SynchronousTestCase):
    """One command per connection, within a deadline; nothing more is read or kept."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.requests: list[dict[str, Any]] = []
        self.pending: Deferred[dict[str, Any]] | None = None
        self.factory = ControlFactory(self.command, self.clock)
        proto = self.factory.buildProtocol(UNIXAddress(None))
        assert proto is not None
        self.proto = proto
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def command(self, request: dict[str, Any]) -> dict[str, Any] | Deferred[dict[str, Any]]:
        self.requests.append(request)
        if self.pending is not None:
            return self.pending
        return {"ok": len(self.requests)}

    def test_timeouts(self) -> None:
        """Ten seconds to send the command, sixty to read the reply."""
        self.assertEqual((self.factory.request_timeout, self.factory.reply_timeout),
                         (10.0, 60.0))

    def test_only_first_line_served(self) -> None:
        """Lines after the first are neither run nor answered, and reading stops."""
        self.proto.dataReceived(b'{"command": "list"}\n{"command": "forget"}\n')
        self.assertEqual(self.requests, [{"command": "list"}])
        self.assertEqual(self.transport.value(), b'{"ok": 1}\n')
        self.assertEqual(self.transport.producerState, "paused")
        self.assertTrue(self.transport.disconnecting)

    def test_nothing_kept_while_command_runs(self) -> None:
        """While a slow command runs, further lines are dropped unread, not run and not buffered."""
        self.pending = Deferred()
        self.proto.dataReceived(b'{"command": "refresh", "domain": "a.test"}\n')
        self.assertEqual(self.transport.producerState, "paused")
        for _ in range(100):
            self.proto.dataReceived(b'{"command": "refresh", "domain": "a.test"}\n' * 100)
        self.assertEqual(len(self.requests), 1)
        self.assertEqual(self.proto._buffer, b"")
        self.pending.callback({"done": True})
        self.assertEqual(self.transport.value(), b'{"done": true}\n')

    def test_silent_connection_times_out(self) -> None:
        """A connection that sends no complete command in 10 s gets an error and is closed."""
        self.proto.dataReceived(b'{"command": ')
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(b'"li')
        self.clock.advance(0.1)
        self.assertEqual(json.loads(self.transport.value()),
                         {"error": "no complete request within 10 s"})
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.requests, [])
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.factory.limit.open, 0)

    def test_slow_command_not_timed(self) -> None:
        """The deadline is for sending the command; the command itself may take longer."""
        self.pending = Deferred()
        self.proto.dataReceived(b'{"command": "refresh", "domain": "a.test"}\n')
        self.clock.advance(30)
        self.assertFalse(self.transport.disconnecting)
        self.pending.callback({"done": True})
        self.assertTrue(self.transport.disconnecting)

    def test_unread_reply_aborted(self) -> None:
        """A client that never reads its reply is cut off 60 s after it was written."""
        self.proto.dataReceived(b'{"command": "list"}\n')
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnected)

    def test_no_timers_after_close(self) -> None:
        """A closed connection leaves no timer, and a command finishing after it writes nothing."""
        self.pending = Deferred()
        self.proto.dataReceived(b'{"command": "list"}\n')
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.pending.callback({"late": True})
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ControlConfigTests(SynchronousTestCase):
    def test_default_socket(self) -> None:
        """The control socket lives in systemd's RuntimeDirectory, else the state directory."""
        from mxpolicyd.config.load import parse

        self.assertEqual(parse({}, "t", {"HOME": "/h"}).control.socket,
                         "/h/.local/state/mxpolicyd/control.sock")
        self.assertEqual(parse({}, "t", {"HOME": "/h", "RUNTIME_DIRECTORY": "/run/mxpolicyd"})
                         .control.socket, "/run/mxpolicyd/control.sock")
        self.assertEqual(parse({"control": {"socket": ""}}, "t", {"HOME": "/h"}).control.socket, "")
