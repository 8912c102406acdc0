"""Tests for L{mxpolicyd.net.redis}: the RESP2 codec, the pipelined protocol, the reconnecting client."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.net.redis import (
    MAX_BULK,
    MAX_DEPTH,
    MAX_ELEMENTS,
    MAX_REPLY,
    MGET_KEYS,
    RedisClient,
    RedisError,
    RedisProtocol,
    RedisProtocolError,
    RedisUnavailable,
    ReplyParser,
    encode,
)

# One of every reply type, and what each parses to.
EVERY_REPLY = (
    b"+OK\r\n"
    b"-ERR wrong number of arguments\r\n"
    b":42\r\n"
    b":-1\r\n"
    b"$5\r\nhello\r\n"
    b"$0\r\n\r\n"
    b"$-1\r\n"
    b"*-1\r\n"
    b"*0\r\n"
    b"$4\r\na\r\nb\r\n"
    b"*3\r\n$1\r\nk\r\n*2\r\n:1\r\n*1\r\n$-1\r\n-ERR inner\r\n"
)


def comparable(reply: Any) -> Any:
    """Error replies as their text, so that parses can be compared."""
    if isinstance(reply, RedisError):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [comparable(r) for r in reply]
    return reply


class ReplyParserTests(SynchronousTestCase):

    def test_every_reply_type(self) -> None:
        """Simple strings, errors, integers, bulk strings, nulls and (nested) arrays parse to Python values."""
        replies = ReplyParser().feed(EVERY_REPLY)
        self.assertEqual(replies[0], "OK")
        self.assertIsInstance(replies[1], RedisError)
        self.assertEqual(str(replies[1]), "ERR wrong number of arguments")
        self.assertEqual(replies[2:10], [42, -1, b"hello", b"", None, None, [], b"a\r\nb"])
        self.assertEqual(replies[10][:2], [b"k", [1, [None]]])
        self.assertIsInstance(replies[10][2], RedisError)
        self.assertEqual(len(replies), 11)

    def test_split_anywhere(self) -> None:
        """Fed one byte at a time, the stream gives the same replies as fed at once."""
        whole = comparable(ReplyParser().feed(EVERY_REPLY))
        parser = ReplyParser()
        pieces: list[Any] = []
        for i in range(len(EVERY_REPLY)):
            pieces += parser.feed(EVERY_REPLY[i : i + 1])
        self.assertEqual(comparable(pieces), whole)
        self.assertEqual(len(pieces), 11)

    def test_incomplete_reply_waits(self) -> None:
        """A reply missing its last bytes yields nothing until they come."""
        parser = ReplyParser()
        self.assertEqual(parser.feed(b"*2\r\n$3\r\nfoo\r\n$3\r\nba"), [])
        self.assertEqual(parser.feed(b"r\r\n+OK\r\n"), [[b"foo", b"bar"], "OK"])

    def test_large_array_in_segments(self) -> None:
        """An MGET-sized array split into network segments parses to every element."""
        values = [b"v%05d" % i * 20 for i in range(3000)]
        data = b"*%d\r\n" % len(values) + b"".join(
            b"$%d\r\n%s\r\n" % (len(v), v) for v in values
        )
        parser = ReplyParser()
        replies: list[Any] = []
        for i in range(0, len(data), 1400):
            replies += parser.feed(data[i : i + 1400])
        self.assertEqual(replies, [values])

    def test_unknown_type(self) -> None:
        """A byte that starts no RESP2 reply is a protocol error."""
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"?what\r\n")

    def test_bad_length(self) -> None:
        """A bulk length that is not a number is a protocol error."""
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"$x\r\n")

    def test_bulk_without_crlf(self) -> None:
        """A bulk string longer than its announced length is a protocol error."""
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"$2\r\nabc\r\n")

    def test_endless_line(self) -> None:
        """A line with no CRLF after 64 KiB is a protocol error, not unbounded buffering."""
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"+" + b"a" * 70000)


class ReplyBoundsTests(SynchronousTestCase):
    """What one reply may make the daemon hold (issue #14)."""

    def test_absurd_bulk_length(self) -> None:
        """A $999999999999 header fails at once, with nothing buffered for its body."""
        parser = ReplyParser()
        with self.assertRaises(RedisProtocolError) as caught:
            parser.feed(b"$999999999999\r\n")
        self.assertIn("over the limit of %d" % MAX_BULK, str(caught.exception))
        self.assertEqual(len(parser._buffer), 0)

    def test_bulk_at_the_limit(self) -> None:
        """A bulk string of MAX_BULK bytes is read; one byte more is refused."""
        value = b"x" * MAX_BULK
        self.assertEqual(ReplyParser().feed(b"$%d\r\n%s\r\n" % (MAX_BULK, value)), [value])
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"$%d\r\n" % (MAX_BULK + 1))

    def test_deep_nesting(self) -> None:
        """Arrays nest MAX_DEPTH deep and no deeper: the next level fails, whatever follows."""
        self.assertEqual(ReplyParser().feed(b"*1\r\n" * (MAX_DEPTH - 1) + b"*0\r\n"),
                         [[[[[]]]]])
        parser = ReplyParser()
        with self.assertRaises(RedisProtocolError) as caught:
            parser.feed(b"*1\r\n" * MAX_DEPTH + b"*1\r\n")
        self.assertIn("nested deeper than %d" % MAX_DEPTH, str(caught.exception))
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"*1\r\n" * 2_000_000)
        # An empty or null array is a level too.
        for last in (b"*0\r\n", b"*-1\r\n"):
            self.assertRaises(RedisProtocolError, ReplyParser().feed, b"*1\r\n" * MAX_DEPTH + last)

    def test_deep_nesting_in_pieces(self) -> None:
        """Nesting sent a level per segment fails at the level past the cap."""
        parser = ReplyParser()
        for _ in range(MAX_DEPTH):
            self.assertEqual(parser.feed(b"*1\r\n"), [])
        self.assertRaises(RedisProtocolError, parser.feed, b"*1\r\n")

    def test_element_count(self) -> None:
        """One reply announces at most MAX_ELEMENTS array elements, nested ones counted."""
        self.assertRaises(RedisProtocolError, ReplyParser().feed, b"*%d\r\n" % (MAX_ELEMENTS + 1))
        parser = ReplyParser(max_elements=10)
        self.assertEqual(parser.feed(b"*2\r\n*4\r\n:1\r\n:2\r\n:3\r\n:4\r\n"), [])
        self.assertRaises(RedisProtocolError, parser.feed, b"*5\r\n")
        parser = ReplyParser(max_elements=10)
        self.assertEqual(parser.feed(b"*10\r\n" + b":1\r\n" * 10 + b"*10\r\n" + b":2\r\n" * 10),
                         [[1] * 10, [2] * 10])

    def test_reply_size(self) -> None:
        """The bytes of one reply are bounded, each reply on its own."""
        parser = ReplyParser(max_bulk=10, max_reply=40)
        part = b"$10\r\n0123456789\r\n"
        self.assertEqual(parser.feed(b"*2\r\n" + part * 2 + b"*2\r\n" + part * 2),
                         [[b"0123456789"] * 2] * 2)
        self.assertRaises(RedisProtocolError, parser.feed, b"*3\r\n" + part * 2 + b"$10\r\n")
        self.assertEqual(MAX_REPLY, 2 * MGET_KEYS * MAX_BULK)

    def test_only_minus_one_is_null(self) -> None:
        """$-1 and *-1 are nulls; $-2, *-2 and other lengths Redis never writes are errors."""
        self.assertEqual(ReplyParser().feed(b"$-1\r\n*-1\r\n"), [None, None])
        for line in [b"$-2", b"*-2", b"$-0", b"$+1", b"$ 1", b"$1_0", b"$", b"*" + b"9" * 21,
                     b":1_0", b": 1", b":" + b"9" * 21, b":--1", b":"]:
            self.assertRaises(RedisProtocolError, ReplyParser().feed, line + b"\r\n")

    def test_error_is_final(self) -> None:
        """After a protocol error the parser refuses everything, valid replies too."""
        parser = ReplyParser()
        self.assertRaises(RedisProtocolError, parser.feed, b"$-2\r\n")
        self.assertRaises(RedisProtocolError, parser.feed, b"+OK\r\n")

    def test_protocol_error_logged(self) -> None:
        """An absurd length fails what waits, aborts the connection and says so."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        protocol = RedisProtocol(Clock(), address="Redis at tcp:127.0.0.1:6390")
        transport = StringTransport()
        protocol.makeConnection(transport)
        d = protocol.execute("GET", "k")
        protocol.dataReceived(b"$999999999999\r\n" + b"x" * 1000)
        self.failureResultOf(d, RedisUnavailable)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(
            [formatEvent(e) for e in events if e["log_level"] == LogLevel.error],
            ["Protocol error from Redis at tcp:127.0.0.1:6390: bulk string of 999999999999 "
             "bytes, over the limit of 1048576; dropping the connection and reconnecting"])


class EncodeTests(SynchronousTestCase):
    def test_command(self) -> None:
        """Arguments are sent as a RESP array of bulk strings: text as UTF-8, numbers as digits."""
        self.assertEqual(
            encode(["SET", b"k\r\n", "é", 1500]),
            b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n\xc3\xa9\r\n$4\r\n1500\r\n",
        )

    def test_no_booleans(self) -> None:
        """A boolean is refused rather than sent as 'True'."""
        self.assertRaises(TypeError, encode, ["SET", "k", True])


class RedisProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = RedisProtocol(self.clock, timeout=2.0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def test_pipelined_in_order(self) -> None:
        """Commands are written at once, before any reply; replies fire them in order."""
        a = self.protocol.execute("GET", "a")
        b = self.protocol.execute("GET", "b")
        c = self.protocol.execute("INCR", "n")
        self.assertEqual(self.transport.value(), encode(["GET", "a"]) + encode(["GET", "b"]) + encode(["INCR", "n"]))
        self.protocol.dataReceived(b"$1\r\n1\r\n$-1\r\n:")
        self.assertEqual(self.successResultOf(a), b"1")
        self.assertIsNone(self.successResultOf(b))
        self.assertNoResult(c)
        self.protocol.dataReceived(b"7\r\n")
        self.assertEqual(self.successResultOf(c), 7)
        self.assertEqual(self.protocol.waiting, 0)

    def test_error_reply(self) -> None:
        """An error reply fails its own command only."""
        a = self.protocol.execute("FOO")
        b = self.protocol.execute("PING")
        self.protocol.dataReceived(b"-ERR unknown command 'FOO'\r\n+PONG\r\n")
        self.assertEqual(str(self.failureResultOf(a, RedisError).value), "ERR unknown command 'FOO'")
        self.assertEqual(self.successResultOf(b), "PONG")

    def test_timeout(self) -> None:
        """No reply for the timeout: every waiting command fails and the connection is aborted."""
        a = self.protocol.execute("GET", "a")
        self.clock.advance(1.0)
        b = self.protocol.execute("GET", "b")
        self.clock.advance(0.9)
        self.assertNoResult(a)
        self.clock.advance(0.1)
        self.assertIn("within 2 s", str(self.failureResultOf(a, RedisUnavailable).value))
        self.failureResultOf(b, RedisUnavailable)
        self.assertTrue(self.transport.disconnecting)
        self.failureResultOf(self.protocol.execute("PING"), RedisUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_progress_keeps_waiting(self) -> None:
        """A reply arriving slowly but steadily is not timed out."""
        d = self.protocol.execute("GET", "big")
        for piece in (b"$5\r\n", b"a", b"b", b"c", b"d"):
            self.clock.advance(1.5)
            self.protocol.dataReceived(piece)
        self.clock.advance(1.5)
        self.protocol.dataReceived(b"e\r\n")
        self.assertEqual(self.successResultOf(d), b"abcde")
        self.assertFalse(self.transport.disconnecting)

    def test_idle_connection_has_no_timer(self) -> None:
        """With nothing awaited, no timer runs and the connection stays."""
        d = self.protocol.execute("PING")
        self.protocol.dataReceived(b"+PONG\r\n")
        self.successResultOf(d)
        self.clock.advance(60)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost(self) -> None:
        """A lost connection fails what waits, and later commands fail at once."""
        lost: list[Failure] = []
        self.protocol.on_lost = lost.append
        d = self.protocol.execute("GET", "a")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, RedisUnavailable)
        self.failureResultOf(self.protocol.execute("GET", "a"), RedisUnavailable)
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelled_command_keeps_its_place(self) -> None:
        """A cancelled command's reply is dropped; the next command gets its own reply."""
        a = self.protocol.execute("GET", "a")
        b = self.protocol.execute("GET", "b")
        a.cancel()
        self.failureResultOf(a, CancelledError)
        self.protocol.dataReceived(b"$1\r\nA\r\n$1\r\nB\r\n")
        self.assertEqual(self.successResultOf(b), b"B")

    def test_garbage_drops_connection(self) -> None:
        """Bytes that are not RESP2 fail what waits and abort the connection."""
        d = self.protocol.execute("PING")
        self.protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n")
        self.failureResultOf(d, RedisUnavailable)
        self.assertTrue(self.transport.disconnecting)

    def test_unsolicited_reply_drops_connection(self) -> None:
        """A reply with no command waiting for it aborts the connection."""
        self.protocol.dataReceived(b"+OK\r\n")
        self.assertTrue(self.transport.disconnecting)

    def test_callback_may_send(self) -> None:
        """A reply's callback can send the next command on the same connection."""
        second: list[Deferred[Any]] = []
        d = self.protocol.execute("GET", "a")
        d.addCallback(lambda _: second.append(self.protocol.execute("GET", "b")))
        self.protocol.dataReceived(b"$-1\r\n")
        self.protocol.dataReceived(b"$1\r\nB\r\n")
        self.assertEqual(self.successResultOf(second[0]), b"B")


class RedisClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.client = self.make()
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self, level: LogLevel) -> list[str]:
        """What the client logged at C{level}."""
        return [formatEvent(e) for e in self.events
                if e["log_level"] == level and e.get("log_source") is self.client]

    def make(self, password: str | None = None, db: int = 0) -> RedisClient:
        client = RedisClient(
            self.reactor, "tcp:127.0.0.1:6390", password=password, db=db, timeout=2.0
        )
        self.connects: list[None] = []
        client.on_connect(lambda: self.connects.append(None))
        return client

    def accept(self) -> tuple[Protocol, StringTransport]:
        """The server side accepts the newest connection attempt."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def refuse(self) -> None:
        """The newest connection attempt is refused."""
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(self.reactor.connectors[-1], Failure(ConnectionRefusedError()))

    def connect(self) -> tuple[Protocol, StringTransport]:
        protocol, transport = self.accept()
        self.assertEqual(transport.value(), encode(["PING"]))
        transport.clear()
        protocol.dataReceived(b"+PONG\r\n")
        return protocol, transport

    def test_connects_to_endpoint(self) -> None:
        """start() connects to the endpoint string's host and port, without blocking."""
        self.assertEqual(self.reactor.tcpClients, [])
        self.client.start()
        self.assertEqual(self.reactor.tcpClients[0][:2], ("127.0.0.1", 6390))
        self.assertFalse(self.client.connected)

    def test_usable_after_ping(self) -> None:
        """The client counts as connected, and tells its listeners, once PING is answered."""
        self.client.start()
        ready = self.client.ready()
        protocol, transport = self.accept()
        self.assertFalse(self.client.connected)
        self.assertNoResult(ready)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertTrue(self.client.connected)
        self.successResultOf(ready)
        self.assertEqual(len(self.connects), 1)
        transport.clear()
        d = self.client.execute("GET", "k")
        self.assertEqual(transport.value(), encode(["GET", "k"]))
        protocol.dataReceived(b"$1\r\nv\r\n")
        self.assertEqual(self.successResultOf(d), b"v")

    def test_auth_and_select(self) -> None:
        """A password and a database number are sent, in that order, before PING."""
        client = self.make(password="s3cret", db=3)
        client.start()
        protocol, transport = self.accept()
        self.assertEqual(transport.value(), encode(["AUTH", "s3cret"]))
        protocol.dataReceived(b"+OK\r\n")
        self.assertEqual(transport.value(), encode(["AUTH", "s3cret"]) + encode(["SELECT", 3]))
        protocol.dataReceived(b"+OK\r\n")
        self.assertFalse(client.connected)
        protocol.dataReceived(b"+PONG\r\n")
        self.assertTrue(client.connected)

    def test_wrong_password(self) -> None:
        """A refused AUTH names the setting to fix, drops the connection and retries later."""
        client = self.make(password="wrong")
        client.start()
        ready = client.ready()
        protocol, transport = self.accept()
        protocol.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        error = str(self.failureResultOf(ready, RedisUnavailable).value)
        self.assertIn("store.redis_password", error)
        self.assertIn("WRONGPASS", error)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(client.connected)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_fail_fast_while_disconnected(self) -> None:
        """Commands fail at once, sending nothing, while there is no connection."""
        self.failureResultOf(self.client.execute("GET", "k"), RedisUnavailable)
        self.client.start()
        self.failureResultOf(self.client.execute("GET", "k"), RedisUnavailable)
        protocol, transport = self.connect()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(self.client.execute("GET", "k"), RedisUnavailable)
        self.assertEqual(transport.value(), b"")

    def test_backoff(self) -> None:
        """Failed attempts are retried after 1, 2, 4, 8, 16, then every 30 seconds."""
        self.client.start()
        attempts = [self.reactor.seconds()]
        for _ in range(8):
            self.refuse()
            before = len(self.reactor.tcpClients)
            while len(self.reactor.tcpClients) == before:
                self.reactor.advance(0.5)
            attempts.append(self.reactor.seconds())
        gaps = [b - a for a, b in zip(attempts, attempts[1:])]
        self.assertEqual(gaps, [1, 2, 4, 8, 16, 30, 30, 30])

    def test_ready_fails_between_attempts(self) -> None:
        """While waiting to retry, ready() fails at once rather than waiting."""
        self.client.start()
        waiting = self.client.ready()
        self.refuse()
        self.failureResultOf(waiting, RedisUnavailable)
        self.failureResultOf(self.client.ready(), RedisUnavailable)

    def test_connect_timeout(self) -> None:
        """An attempt that does not connect within the timeout is abandoned and retried."""
        self.client.start()
        self.reactor.advance(2.0)
        self.assertTrue(self.reactor.connectors[0].stoppedConnecting)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_handshake_timeout(self) -> None:
        """A server that accepts but never answers PING (a stopped Redis) is dropped and retried."""
        self.client.start()
        _, transport = self.accept()
        self.reactor.advance(2.0)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.client.connected)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_reconnect_after_loss(self) -> None:
        """A lost connection fails what waits, reconnects after 1 s and tells the listeners again."""
        self.client.start()
        protocol, _ = self.connect()
        d = self.client.execute("GET", "k")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, RedisUnavailable)
        self.assertFalse(self.client.connected)
        self.reactor.advance(0.9)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.refuse()
        self.reactor.advance(1.9)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.tcpClients), 3)
        self.connect()
        self.assertTrue(self.client.connected)
        self.assertEqual(len(self.connects), 2)

    def test_backoff_resets_after_success(self) -> None:
        """After a successful connection, the next loss is retried after 1 s again."""
        self.client.start()
        for _ in range(4):
            self.refuse()
            self.reactor.advance(30)
        protocol, _ = self.connect()
        protocol.connectionLost(Failure(ConnectionDone()))
        count = len(self.reactor.tcpClients)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), count + 1)

    def test_stop(self) -> None:
        """stop() closes the connection and no reconnection follows."""
        self.client.start()
        protocol, transport = self.connect()
        self.client.stop()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertFalse(self.client.connected)

    def test_stop_while_retrying(self) -> None:
        """stop() between attempts cancels the retry."""
        self.client.start()
        self.refuse()
        self.client.stop()
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_rejected_connection_ends_quietly(self) -> None:
        """The end of a connection the handshake rejected raises nothing and leaves the retry as it was."""
        client = self.make(password="wrong")
        client.start()
        protocol, _ = self.accept()
        protocol.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0.9)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.reactor.advance(0.1)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        protocol, transport = self.accept()
        self.assertEqual(transport.value(), encode(["AUTH", "wrong"]))

    def test_lost_during_handshake(self) -> None:
        """A server that hangs up during the handshake is a failed attempt: ready() fails, a retry follows."""
        self.client.start()
        ready = self.client.ready()
        protocol, _ = self.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIn("connection to Redis lost",
                      str(self.failureResultOf(ready, RedisUnavailable).value))
        self.assertFalse(self.client.connected)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.connect()
        self.assertTrue(self.client.connected)

    def test_stop_during_handshake(self) -> None:
        """stop() during the handshake closes that connection and fails ready(); nothing reconnects."""
        self.client.start()
        ready = self.client.ready()
        protocol, transport = self.accept()
        stopped = self.client.stop()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(str(self.failureResultOf(ready, RedisUnavailable).value),
                         "Redis client stopped")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.failureResultOf(self.client.execute("GET", "k"), RedisUnavailable)

    def test_stop_fires_when_closed(self) -> None:
        """stop() of a connected client fires once its connection is closed."""
        self.client.start()
        protocol, _ = self.connect()
        stopped = self.client.stop()
        self.assertNoResult(stopped)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)

    def test_outage_logged_once(self) -> None:
        """Failed attempts: one warning, the retries at debug; the connection ends it with one info line."""
        self.client.start()
        for _ in range(3):
            self.refuse()
            self.reactor.advance(30)
        self.connect()
        [warning] = self.lines(LogLevel.warn)
        self.assertTrue(warning.startswith("Cannot connect to Redis at tcp:127.0.0.1:6390 (Connection "
                                           "was refused by other side"), warning)
        self.assertTrue(warning.endswith("; retrying in 1 s"), warning)
        debug = self.lines(LogLevel.debug)
        self.assertEqual([line.rsplit(";", 1)[1] for line in debug],
                         [" retrying in 2 s", " retrying in 4 s"])
        self.assertEqual(self.lines(LogLevel.info), ["Reconnected to Redis at tcp:127.0.0.1:6390 after 90 s"])

    def test_lost_connection_logged(self) -> None:
        """A lost connection is a warning saying when the client reconnects, and the reconnection is info."""
        self.client.start()
        protocol, _ = self.connect()
        self.assertEqual(self.lines(LogLevel.info), ["Connected to Redis at tcp:127.0.0.1:6390"])
        self.reactor.advance(100)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.lines(LogLevel.warn), [
            "Lost the connection to Redis at tcp:127.0.0.1:6390 (Connection was closed cleanly.); "
            "reconnecting in 1 s"])
        self.reactor.advance(1.0)
        self.connect()
        self.assertEqual(self.lines(LogLevel.info)[1:],
                         ["Reconnected to Redis at tcp:127.0.0.1:6390 after 1 s"])
        self.assertEqual(len(self.connects), 2)

    def test_handshake_deadline(self) -> None:
        """A handshake that trickles along without finishing is given up after the timeout."""
        self.client.start()
        protocol, transport = self.accept()
        self.reactor.advance(1.5)
        protocol.dataReceived(b"+PO")
        self.reactor.advance(0.5)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.client.connected)
        self.reactor.advance(1.0)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("no answer to AUTH/SELECT/PING within 2 s", warning)

    def test_unix_endpoint(self) -> None:
        """A unix: endpoint string connects to the socket path."""
        client = RedisClient(self.reactor, "unix:/run/redis/redis-server.sock")
        client.start()
        self.assertEqual(self.reactor.unixClients[0][0], "/run/redis/redis-server.sock")
        self.assertEqual(client.address, "Redis at unix:/run/redis/redis-server.sock")
