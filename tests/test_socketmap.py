"""Tests for L{mxpolicyd.protocols.socketmap}: the netstring codec, with StringTransport."""

from __future__ import annotations

import errno
import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.protocols.socketmap import SocketmapFactory, SocketmapProtocol, netstring

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)


class Lookups:
    """Records requests; answers from a dict or with Deferreds on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, bytes]] = []
        self.answers: dict[bytes, bytes | Deferred[bytes]] = {}

    def __call__(self, name: bytes, key: bytes) -> bytes | Deferred[bytes]:
        self.calls.append((name, key))
        return self.answers.get(key, b"NOTFOUND ")


class SocketmapProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.lookups = Lookups()
        self.factory = SocketmapFactory(
            self.lookups, self.clock, max_request_size=100, idle_timeout=10,
            max_connections=2,
        )
        self.proto, self.transport = self.connect()

    def connect(self) -> tuple[SocketmapProtocol, StringTransport]:
        proto = self.factory.buildProtocol(ADDR)
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_netstring(self) -> None:
        """netstring() frames a payload as <len>:payload, ."""
        self.assertEqual(netstring(b"OK secure"), b"9:OK secure,")
        self.assertEqual(netstring(b""), b"0:,")

    def test_one_request(self) -> None:
        """A request gets its lookup's answer, framed, and the connection stays open."""
        self.lookups.answers[b"example.test"] = b"OK secure"
        self.proto.dataReceived(b"20:postfix example.test,")
        self.assertEqual(self.lookups.calls, [(b"postfix", b"example.test")])
        self.assertEqual(self.transport.value(), b"9:OK secure,")
        self.assertFalse(self.transport.disconnecting)

    def test_many_requests_one_segment(self) -> None:
        """Several requests in one segment are answered in order."""
        self.proto.dataReceived(b"9:postfix a,9:postfix b,9:postfix c,")
        self.assertEqual([k for _, k in self.lookups.calls], [b"a", b"b", b"c"])
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ," * 3)

    def test_split_request(self) -> None:
        """A request split byte by byte is answered once it is complete."""
        for byte in b"20:postfix example.test,":
            self.assertEqual(self.transport.value(), b"")
            self.proto.dataReceived(bytes([byte]))
        self.assertEqual(self.lookups.calls, [(b"postfix", b"example.test")])
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ,")

    def test_deferred_answers_in_order(self) -> None:
        """A second request waits until the first's Deferred answer is written."""
        first: Deferred[bytes] = Deferred()
        self.lookups.answers[b"a"] = first
        self.proto.dataReceived(b"9:postfix a,9:postfix b,")
        self.assertEqual(len(self.lookups.calls), 1)
        self.assertEqual(self.transport.value(), b"")
        first.callback(b"OK dane")
        self.assertEqual(self.transport.value(), b"7:OK dane,9:NOTFOUND ,")

    def test_bad_length(self) -> None:
        """A non-digit length gets PERM and a close: framing is lost."""
        self.proto.dataReceived(b"x9:postfix a,")
        self.assertEqual(self.transport.value(), b"31:PERM malformed netstring length,")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.lookups.calls, [])

    def test_leading_zero(self) -> None:
        """A length with a leading zero is malformed (socketmap_table(5))."""
        self.proto.dataReceived(b"09:postfix a,")
        self.assertIn(b"PERM malformed netstring length", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_too_many_digits(self) -> None:
        """Seven digits and no colon is refused before any more is buffered."""
        self.proto.dataReceived(b"1234567")
        self.assertIn(b"PERM malformed netstring length", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_missing_comma(self) -> None:
        """Data not followed by a comma gets PERM and a close."""
        self.proto.dataReceived(b"9:postfix a;")
        self.assertIn(b"PERM malformed netstring (no comma", self.transport.value())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.lookups.calls, [])

    def test_over_limit(self) -> None:
        """A request over max_request_size is refused from its length alone."""
        self.proto.dataReceived(b"101:postfix ")
        self.assertIn(b"PERM request of 101 bytes exceeds the limit of 100", self.transport.value())
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.lookups.calls, [])

    def test_at_limit(self) -> None:
        """A request of exactly max_request_size is served."""
        key = b"k" * (100 - len(b"postfix "))
        self.proto.dataReceived(netstring(b"postfix " + key))
        self.assertEqual(self.lookups.calls, [(b"postfix", key)])

    def test_no_space(self) -> None:
        """A request without 'name key' gets PERM; the connection stays usable."""
        self.proto.dataReceived(b"7:postfix,9:postfix a,")
        self.assertEqual(
            self.transport.value(), b"30:PERM request is not 'name key',9:NOTFOUND ,"
        )
        self.assertFalse(self.transport.disconnecting)

    def test_empty_key(self) -> None:
        """An empty key gets PERM; the connection stays usable."""
        self.proto.dataReceived(b"8:postfix ,")
        self.assertEqual(self.transport.value(), b"14:PERM empty key,")
        self.assertFalse(self.transport.disconnecting)

    def test_empty_name(self) -> None:
        """A request with no map name gets PERM."""
        self.proto.dataReceived(b"2: a,")
        self.assertIn(b"PERM request is not 'name key'", self.transport.value())

    def test_lookup_raises(self) -> None:
        """A lookup that raises gives TEMP (mail waits), and is logged."""

        def broken(name: bytes, key: bytes) -> bytes:
            raise RuntimeError("bug")

        self.factory.lookup = broken
        proto, transport = self.connect()
        proto.dataReceived(b"9:postfix a,")
        self.assertEqual(transport.value(), b"19:TEMP internal error,")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_lookup_fails(self) -> None:
        """A lookup whose Deferred fails gives TEMP and the next request is served."""
        self.lookups.answers[b"a"] = fail(RuntimeError("bug"))
        self.proto.dataReceived(b"9:postfix a,9:postfix b,")
        self.assertEqual(self.transport.value(), b"19:TEMP internal error,9:NOTFOUND ,")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_connection_lost_cancels(self) -> None:
        """A pending lookup is cancelled when the client goes away."""
        cancelled: list[Deferred[bytes]] = []
        self.lookups.answers[b"a"] = Deferred(cancelled.append)
        self.proto.dataReceived(b"9:postfix a,")
        self.proto.connectionLost(None)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(self.factory.limit.open, 0)

    def test_pipelined_flood(self) -> None:
        """A client that floods while a lookup is pending is cut off."""
        self.lookups.answers[b"a"] = Deferred()
        self.proto.dataReceived(b"9:postfix a,")
        self.proto.dataReceived(b"9:postfix b," * 20)
        self.assertIn(b"PERM too much data", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_idle_timeout(self) -> None:
        """An idle connection is closed after idle_timeout seconds."""
        self.clock.advance(9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_activity_postpones_idle_timeout(self) -> None:
        """A request resets the idle clock."""
        self.clock.advance(8)
        self.proto.dataReceived(b"9:postfix a,")
        self.clock.advance(8)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.transport.disconnecting)

    def test_pending_lookup_not_idle(self) -> None:
        """A connection waiting on a lookup is not closed as idle."""
        pending: Deferred[bytes] = Deferred()
        self.lookups.answers[b"a"] = pending
        self.proto.dataReceived(b"9:postfix a,")
        self.clock.advance(30)
        self.assertFalse(self.transport.disconnecting)
        pending.callback(b"NOTFOUND ")
        self.clock.advance(10)
        self.assertTrue(self.transport.disconnecting)

    def test_no_timers_after_close(self) -> None:
        """Closing the connection cancels its idle timer."""
        self.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_limit(self) -> None:
        """The connection after max_connections is refused; a close makes room for one more."""
        second = self.factory.buildProtocol(ADDR)
        assert second is not None
        second.makeConnection(StringTransport())
        self.assertEqual(self.factory.limit.open, 2)
        self.assertIsNone(self.factory.buildProtocol(ADDR))
        second.connectionLost(None)
        self.assertEqual(self.factory.limit.open, 1)
        self.assertIsNotNone(self.factory.buildProtocol(ADDR))

    def test_refusals_logged_once_a_minute(self) -> None:
        """A storm of refused connections logs one line a minute, with the count since the last."""
        events: list[dict[str, Any]] = []
        self.factory.limit.refusals._log = Logger(observer=events.append)  # type: ignore[misc]
        second = self.factory.buildProtocol(ADDR)
        assert second is not None
        second.makeConnection(StringTransport())
        for _ in range(5):
            self.assertIsNone(self.factory.buildProtocol(ADDR))
        self.clock.advance(60)
        self.assertIsNone(self.factory.buildProtocol(ADDR))
        self.assertEqual([e["refused"] for e in events], [1, 5])
        self.assertEqual(events[0]["key"], "socketmap.max_connections")
        self.assertEqual(self.factory.limit.refusals.total, 6)


class RequestDeadlineTests(SynchronousTestCase):
    """A request must be complete within request_timeout of its first byte; idle time is apart."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.lookups = Lookups()
        self.factory = SocketmapFactory(
            self.lookups, self.clock, idle_timeout=10, request_timeout=3,
        )
        proto = self.factory.buildProtocol(ADDR)
        assert proto is not None
        self.proto = proto
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_default(self) -> None:
        """Ten seconds unless told otherwise."""
        self.assertEqual(SocketmapFactory(self.lookups, self.clock).request_timeout, 10.0)

    def test_slow_drip_cut_off(self) -> None:
        """One byte a second does not hold the connection past the deadline: PERM, then a close."""
        for byte in b"20:postfix exam":
            if self.transport.disconnecting:
                break
            self.proto.dataReceived(bytes([byte]))
            self.clock.advance(1)
        self.assertEqual(self.transport.value(),
                         netstring(b"PERM no complete request within 3 s"))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.seconds(), 3)
        self.assertEqual(self.lookups.calls, [])

    def test_deadline_counts_from_first_byte(self) -> None:
        """Bytes after the first do not postpone the deadline."""
        self.proto.dataReceived(b"20:")
        self.clock.advance(2.5)
        self.proto.dataReceived(b"postfix")
        self.clock.advance(0.4)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertIn(b"PERM no complete request", self.transport.value())

    def test_complete_request_in_time(self) -> None:
        """A request completed before its deadline is answered and the connection stays open."""
        self.proto.dataReceived(b"9:postfix")
        self.clock.advance(2.9)
        self.proto.dataReceived(b" a,")
        self.clock.advance(2)
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ,")
        self.assertFalse(self.transport.disconnecting)

    def test_each_request_its_own_deadline(self) -> None:
        """The next request's deadline starts with its own first byte, even in the same read."""
        self.proto.dataReceived(b"9:postfix")
        self.clock.advance(2)
        self.proto.dataReceived(b" a,9:post")
        self.clock.advance(2.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(),
                         b"9:NOTFOUND ," + netstring(b"PERM no complete request within 3 s"))

    def test_idle_between_requests_unchanged(self) -> None:
        """Between requests only idle_timeout applies, and it closes without a reply."""
        self.proto.dataReceived(b"9:postfix a,")
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ,")

    def test_pending_lookup_has_no_deadline(self) -> None:
        """Data sent ahead while a lookup runs is not timed until the reply is written."""
        pending: Deferred[bytes] = Deferred()
        self.lookups.answers[b"a"] = pending
        self.proto.dataReceived(b"9:postfix a,9:post")
        self.clock.advance(4)
        self.assertFalse(self.transport.disconnecting)
        pending.callback(b"NOTFOUND ")
        self.clock.advance(2.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertIn(b"PERM no complete request", self.transport.value())

    def test_no_timers_after_close(self) -> None:
        """A connection lost mid-request leaves no timer behind."""
        self.proto.dataReceived(b"9:post")
        self.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PauseTests(SynchronousTestCase):
    """The protocol as its transport's streaming producer: no reading or parsing while paused."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.lookups = Lookups()
        self.factory = SocketmapFactory(self.lookups, self.clock, idle_timeout=5,
                                        request_timeout=3)
        proto = self.factory.buildProtocol(ADDR)
        assert proto is not None
        self.proto = proto
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def test_registered(self) -> None:
        """The protocol registers itself as a streaming producer on its transport, paused beyond 16 KiB."""
        self.assertIs(self.transport.producer, self.proto)
        self.assertTrue(self.transport.streaming)
        self.assertEqual(self.transport.bufferSize, 16 * 1024)  # type: ignore[attr-defined]

    def test_pause_stops_parsing(self) -> None:
        """Requests already read wait while paused and are answered, in order, on resume."""
        self.proto.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")
        self.proto.dataReceived(b"9:postfix a,9:postfix b,")
        self.assertEqual((self.lookups.calls, self.transport.value()), ([], b""))
        self.proto.resumeProducing()
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual([k for _, k in self.lookups.calls], [b"a", b"b"])
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ,9:NOTFOUND ,")

    def test_pause_mid_segment(self) -> None:
        """A pause during a reply stops the rest of the segment until resumed."""
        answered: list[bytes] = []

        def lookup(name: bytes, key: bytes) -> bytes:
            answered.append(key)
            if key == b"b":
                self.proto.pauseProducing()  # as the transport does on a full buffer
            return b"NOTFOUND "

        self.factory.lookup = self.proto._lookup = lookup
        self.proto.dataReceived(b"9:postfix a,9:postfix b,9:postfix c,9:postfix d,")
        self.assertEqual(answered, [b"a", b"b"])
        self.proto.resumeProducing()
        self.assertEqual(answered, [b"a", b"b", b"c", b"d"])
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ," * 4)

    def test_deferred_answer_while_paused(self) -> None:
        """A lookup answered while paused writes its reply; the next request waits for resume."""
        pending: Deferred[bytes] = Deferred()
        self.lookups.answers[b"a"] = pending
        self.proto.dataReceived(b"9:postfix a,9:postfix b,")
        self.proto.pauseProducing()
        pending.callback(b"OK dane")
        self.assertEqual(self.transport.value(), b"7:OK dane,")
        self.assertEqual(len(self.lookups.calls), 1)
        self.proto.resumeProducing()
        self.assertEqual(self.transport.value(), b"7:OK dane,9:NOTFOUND ,")

    def test_no_flood_refusal_while_paused(self) -> None:
        """Data held while paused is the daemon's doing, not a flood: no PERM."""
        self.proto.pauseProducing()
        self.proto.dataReceived(b"9:postfix a," * 100)
        self.assertFalse(self.transport.disconnecting)
        self.proto.resumeProducing()
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ," * 100)

    def test_paused_has_no_request_deadline(self) -> None:
        """A request cut short by a pause is timed again only once the client reads."""
        self.proto.dataReceived(b"9:post")
        self.proto.pauseProducing()
        self.clock.advance(4)
        self.assertFalse(self.transport.disconnecting)
        self.proto.resumeProducing()
        self.clock.advance(3)
        self.assertIn(b"PERM no complete request", self.transport.value())

    def test_unread_replies_aborted_when_idle(self) -> None:
        """A client that reads none of its replies for an idle period is cut off at once."""
        self.proto.dataReceived(b"9:postfix a,")
        self.proto.pauseProducing()
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnected)  # abortConnection
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_turns(self) -> None:
        """Pipelined requests are answered a hundred per reactor turn, without reading meanwhile."""
        self.proto.dataReceived(b"9:postfix a," * 250)
        self.assertEqual(len(self.lookups.calls), 100)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual([c.getTime() for c in self.clock.getDelayedCalls()], [0, 5])
        # Clock runs the turns queued meanwhile too; a reactor polls between them.
        self.clock.advance(0)
        self.assertEqual(len(self.lookups.calls), 250)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(self.transport.value(), b"9:NOTFOUND ," * 250)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the idle timer

    def test_one_turn_is_enough(self) -> None:
        """A hundred requests or fewer, and partial ones after them, take no extra turn."""
        self.proto.dataReceived(b"9:postfix a," * 100)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_lost_between_turns(self) -> None:
        """A connection lost between turns leaves no timer and answers nothing more."""
        self.proto.dataReceived(b"9:postfix a," * 250)
        self.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.lookups.calls), 100)

    def test_close_unregisters(self) -> None:
        """Closing unregisters the producer, or the transport would never finish closing."""
        self.proto.dataReceived(b"x")
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.transport.producer)

    def test_close_aborted_if_never_read(self) -> None:
        """A close that the client does not let finish within an idle period is an abort."""
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnected)
        self.proto.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ShortSocket:
    """A socket that takes at most C{room} bytes per send, or raises C{error}."""

    def __init__(self, room: int, error: OSError | None = None) -> None:
        self.room = room
        self.error = error
        self.sent: list[bytes] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def send(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        self.sent.append(data[: self.room])
        return min(len(data), self.room)


class WriteThroughTests(SynchronousTestCase):
    """Replies go straight to a plain socket, and through Twisted once it is full."""

    def setUp(self) -> None:
        self.lookups = Lookups()
        self.lookups.answers[b"a"] = b"OK secure"
        self.factory = SocketmapFactory(self.lookups, Clock())
        self.reactor = MemoryReactor()

    def connect(self, sock: object) -> tuple[SocketmapProtocol, tcp.Connection]:
        proto = self.factory.buildProtocol(ADDR)
        assert proto is not None
        transport = tcp.Connection(sock, proto, self.reactor)  # type: ignore[arg-type]
        transport.connected = True
        proto.makeConnection(transport)
        return proto, transport

    def test_reply_sent_at_once(self) -> None:
        """On a plain socket the reply is sent during dataReceived, with nothing left for the reactor."""
        ours, peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(peer.close)
        peer.setblocking(False)
        proto, transport = self.connect(ours)
        proto.dataReceived(b"9:postfix a,9:postfix b,")
        self.assertEqual(peer.recv(100), b"9:OK secure,9:NOTFOUND ,")
        self.assertNotIn(transport, self.reactor.getWriters())

    def test_partial_send_falls_back_in_order(self) -> None:
        """What the socket does not take, and every later reply, goes through Twisted's buffer in order."""
        sock = ShortSocket(room=3)
        proto, transport = self.connect(sock)
        proto.dataReceived(b"9:postfix a,")
        proto.dataReceived(b"9:postfix b,")
        self.assertEqual(sock.sent, [b"9:O"])
        self.assertIn(transport, self.reactor.getWriters())
        sock.room = 1000
        transport.doWrite()
        self.assertEqual(b"".join(sock.sent), b"9:OK secure,9:NOTFOUND ,")

    def test_send_error_left_to_twisted(self) -> None:
        """A broken socket is left for Twisted's write path to find and close."""
        sock = ShortSocket(room=0, error=ConnectionResetError(errno.ECONNRESET, "reset"))
        proto, transport = self.connect(sock)
        proto.dataReceived(b"9:postfix a,")
        self.assertIn(transport, self.reactor.getWriters())
        self.assertIsInstance(transport.doWrite(), error.ConnectionLost)

    def test_closing_connection_not_written(self) -> None:
        """After loseConnection the socket is not written directly."""
        sock = ShortSocket(room=1000)
        proto, transport = self.connect(sock)
        transport.disconnecting = True
        proto.dataReceived(b"9:postfix a,")
        self.assertEqual(sock.sent, [])


class BackPressureTests(SynchronousTestCase):
    """
    A real TCP transport over a socketpair: a client that pipelines and does
    not read fills the transport's buffer, which stops reading and parsing.
    """

    REPLY = b"OK secure match=" + b"mx.example.test:" * 60 + b" servername=hostname"

    def setUp(self) -> None:
        self.lookups = Lookups()
        self.lookups.answers[b"a"] = self.REPLY
        self.clock = Clock()
        self.factory = SocketmapFactory(self.lookups, self.clock)
        self.reactor = MemoryReactor()
        ours, self.peer = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(self.peer.close)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.setblocking(False)
        self.peer.setblocking(False)
        proto = self.factory.buildProtocol(ADDR)
        assert proto is not None
        self.proto = proto
        self.transport = tcp.Connection(ours, proto, self.reactor)  # type: ignore[arg-type]
        self.transport.connected = True
        proto.makeConnection(self.transport)
        self.transport.startReading()

    def buffered(self) -> int:
        return len(self.transport.dataBuffer) + self.transport._tempDataLen

    def drain(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                return out
            out += chunk

    def test_pipelined_without_reading(self) -> None:
        """One read of 2,000 requests answers only what fills the buffer, then stops reading."""
        requests = 2000
        self.proto.dataReceived(b"9:postfix a," * requests)
        answered = len(self.lookups.calls)
        self.assertLess(answered, requests // 4)
        self.assertLessEqual(self.buffered(), self.transport.bufferSize + len(self.REPLY) + 10)
        self.assertNotIn(self.transport, self.reactor.getReaders())
        # The client reads; each emptied buffer resumes the protocol.
        received = b""
        for _ in range(1000):
            received += self.drain()
            if len(self.lookups.calls) == requests and not self.buffered():
                break
            self.transport.doWrite()
            self.clock.advance(0)
        received += self.drain()
        self.assertEqual(received, netstring(self.REPLY) * requests)
        self.assertIn(self.transport, self.reactor.getReaders())

    def test_direct_writes_again_after_drain(self) -> None:
        """Once a paused connection's buffer has drained, replies go straight to the socket again."""
        self.proto.dataReceived(b"9:postfix a," * 100)
        for _ in range(1000):
            self.drain()
            if len(self.lookups.calls) == 100 and not self.buffered():
                break
            self.transport.doWrite()
            self.clock.advance(0)
        self.drain()
        # Now every reply goes through Twisted's buffer: exactly enough of
        # them to pause the protocol after the last.
        size = len(netstring(self.REPLY))
        count = self.transport.bufferSize // size + 1
        self.proto.dataReceived(b"9:postfix a," * count)
        self.assertTrue(self.proto._paused)
        for _ in range(1000):
            self.drain()
            if not self.buffered():
                break
            self.transport.doWrite()
            self.clock.advance(0)
        self.assertFalse(self.proto._paused)
        self.drain()
        self.proto.dataReceived(b"9:postfix b,")
        self.assertEqual(self.drain(), b"9:NOTFOUND ,")
        self.assertNotIn(self.transport, self.reactor.getWriters())

class SocketmapPropertyTests(SynchronousTestCase):
    @given(chunks=st.lists(st.binary(max_size=40), max_size=20))
    @settings(max_examples=300, deadline=None)
    def test_any_bytes(self, chunks: list[bytes]) -> None:
        """Any byte stream, cut anywhere, gets only well-formed netstring replies and never a crash."""
        clock = Clock()
        factory = SocketmapFactory(lambda n, k: b"NOTFOUND ", clock, max_request_size=64)
        proto = factory.buildProtocol(ADDR)
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
        out = transport.value()
        while out:
            head, colon, rest = out.partition(b":")
            self.assertTrue(colon and head.isdigit(), out)
            size = int(head)
            self.assertEqual(rest[size : size + 1], b",")
            self.assertTrue(rest[:size].split(b" ")[0] in (b"NOTFOUND", b"PERM", b"TEMP"))
            out = rest[size + 1 :]
        self.assertEqual(self.flushLoggedErrors(), [])
