"""Tests for L{mxpolicyd.protocols.exim} and the Exim reply: readsocket's two ways of ending a request."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.render import exim_reply
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.verdict import Action, Verdict
from mxpolicyd.protocols.exim import EximFactory, EximProtocol

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)
POLICY = StsPolicy("enforce", 604800, ("mail.example.test", "*.example.net"))


class EximProtocolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.keys: list[bytes] = []
        self.answers: dict[bytes, bytes | Deferred[bytes]] = {}
        self.factory = EximFactory(self.lookup, self.clock, timeout=5, max_request_size=64,
                                   max_connections=2)
        self.proto, self.transport = self.connect()

    def lookup(self, key: bytes) -> bytes | Deferred[bytes]:
        self.keys.append(key)
        return self.answers.get(key, b"action=none\n")

    def connect(self) -> tuple[EximProtocol, StringTransport]:
        proto = self.factory.buildProtocol(ADDR)
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    def test_newline_ends_request(self) -> None:
        """A request ended by a newline is answered with one line, then the connection closes."""
        self.proto.dataReceived(b"example.test\n")
        self.assertEqual(self.keys, [b"example.test"])
        self.assertEqual(self.transport.value(), b"action=none\n")
        self.assertTrue(self.transport.disconnecting)

    def test_half_close_ends_request(self) -> None:
        """Exim's default: no newline, then a half-close; answered from readConnectionLost."""
        self.proto.dataReceived(b"exam")
        self.proto.dataReceived(b"ple.test")
        self.assertEqual(self.keys, [])
        self.proto.readConnectionLost()
        self.assertEqual(self.keys, [b"example.test"])
        self.assertEqual(self.transport.value(), b"action=none\n")

    def test_crlf_and_spaces(self) -> None:
        """A CRLF and surrounding blanks are not part of the key."""
        self.proto.dataReceived(b"  example.test \r\n")
        self.assertEqual(self.keys, [b"example.test"])

    def test_only_first_line(self) -> None:
        """Anything after the first line is ignored."""
        self.proto.dataReceived(b"a.test\nb.test\n")
        self.assertEqual(self.keys, [b"a.test"])

    def test_reading_stops_after_request(self) -> None:
        """Once the request is in, the connection is not read and later data is not kept."""
        pending: Deferred[bytes] = Deferred()
        self.answers[b"a.test"] = pending
        self.proto.dataReceived(b"a.test\nb.te")
        self.assertEqual(self.transport.producerState, "paused")
        for _ in range(100):
            self.proto.dataReceived(b"b.test\n" * 1000)
        self.assertEqual(self.proto._buffer, b"")
        self.assertEqual(self.keys, [b"a.test"])
        pending.callback(b"action=none\n")
        self.assertEqual(self.transport.value(), b"action=none\n")

    def test_empty_request(self) -> None:
        """An empty request gets a temp action naming the problem."""
        self.proto.readConnectionLost()
        self.assertEqual(self.transport.value(),
                         b'action=temp reason="empty request: send the domain"\n')

    def test_oversized_request(self) -> None:
        """A request longer than the limit without a newline is refused."""
        self.proto.dataReceived(b"x" * 65)
        self.assertIn(b"action=temp", self.transport.value())
        self.assertIn(b"longer than 64 bytes", self.transport.value())
        self.assertEqual(self.keys, [])

    def test_timeout(self) -> None:
        """A client that never finishes its request gets a temp action after the timeout."""
        self.proto.dataReceived(b"example")
        self.clock.advance(5)
        self.assertIn(b"no complete request within 5 s", self.transport.value())
        self.assertTrue(self.transport.disconnecting)

    def test_deferred_answer(self) -> None:
        """A lookup that waits for an evaluation answers when it fires; no timer is left."""
        d: Deferred[bytes] = Deferred()
        self.answers[b"slow.test"] = d
        self.proto.dataReceived(b"slow.test\n")
        self.assertEqual(self.transport.value(), b"")
        d.callback(b"action=dane-only\n")
        self.assertEqual(self.transport.value(), b"action=dane-only\n")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failed_lookup(self) -> None:
        """A lookup that fails gives a temp action and is logged."""
        self.answers[b"bad.test"] = fail(RuntimeError("bug"))
        self.proto.dataReceived(b"bad.test\n")
        self.assertEqual(self.transport.value(), b'action=temp reason="internal error"\n')
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_client_gone_cancels(self) -> None:
        """A client that goes away cancels its pending lookup."""
        cancelled: list[object] = []
        self.answers[b"slow.test"] = Deferred(cancelled.append)
        self.proto.dataReceived(b"slow.test\n")
        self.proto.connectionLost(None)
        self.assertEqual(len(cancelled), 1)
        self.assertEqual(self.factory.limit.open, 0)

    def test_connection_limit(self) -> None:
        """The connection after max_connections is refused; a close makes room for one more."""
        second, _ = self.connect()
        self.assertEqual(self.factory.limit.open, 2)
        self.assertIsNone(self.factory.buildProtocol(ADDR))
        self.assertEqual(self.factory.limit.refusals.total, 1)
        second.connectionLost(None)
        self.assertEqual(self.factory.limit.open, 1)
        self.assertIsNotNone(self.factory.buildProtocol(ADDR))


class EximReplyTests(SynchronousTestCase):
    def test_actions(self) -> None:
        """Each verdict renders its action first, with what the contrib router needs."""
        cases = [
            (Verdict("d.test", Action.STS_ENFORCE, "enforce", POLICY),
             b'action=sts-enforce mx="mail.example.test:*.example.net" max_age=604800 '
             b'rule="enforce"\n'),
            (Verdict("d.test", Action.STS_TESTING, "testing", POLICY),
             b'action=sts-testing mx="mail.example.test:*.example.net" max_age=604800 '
             b'rule="testing"\n'),
            (Verdict("d.test", Action.DANE_ONLY, "all usable"), b'action=dane-only rule="all usable"\n'),
            (Verdict("d.test", Action.DANE, "some"), b'action=dane rule="some"\n'),
            (Verdict("d.test", Action.NONE, "none"), b'action=none rule="none"\n'),
            (Verdict("d.test", Action.TEMP, "unknown", reason='DNS "SERVFAIL"'),
             b'action=temp reason="DNS \'SERVFAIL\'" rule="unknown"\n'),
        ]
        for verdict, expected in cases:
            self.assertEqual(exim_reply(verdict), expected)


class EximPropertyTests(SynchronousTestCase):
    @given(chunks=st.lists(st.binary(max_size=40), max_size=10), half_close=st.booleans())
    @settings(max_examples=300, deadline=None)
    def test_any_bytes(self, chunks: list[bytes], half_close: bool) -> None:
        """Any request bytes get at most one reply line, starting with action=, and no crash."""
        clock = Clock()
        factory = EximFactory(lambda key: b"action=none\n", clock, max_request_size=64)
        proto = factory.buildProtocol(ADDR)
        assert proto is not None
        transport = StringTransport()
        proto.makeConnection(transport)
        for chunk in chunks:
            proto.dataReceived(chunk)
        if half_close:
            proto.readConnectionLost()
        clock.advance(10)
        out = transport.value()
        self.assertTrue(out.startswith(b"action="), out)
        self.assertEqual(out.count(b"\n"), 1)
        self.assertTrue(out.endswith(b"\n"))
        self.assertEqual(self.flushLoggedErrors(), [])
