"""
Tests for L{mxpolicyd.store.redis}: the fleet store over the real client and
protocol, talking through StringTransports to a Redis made of a dict; and its
[store] settings and assembly.
"""

from __future__ import annotations

import json
from dataclasses import replace
import math
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.config.load import ConfigError, parse
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.evidence.dane import DaneState, DaneStatus, HostEvidence, HostState, Tlsa
from mxpolicyd.net.redis import (
    MGET_KEYS,
    RedisClient,
    RedisError,
    RedisUnavailable,
    ReplyParser,
)
from mxpolicyd.evidence.state import Remembered
from mxpolicyd.policy.merge import written
from mxpolicyd.store.redis import CAS, RedisStore, ttl
from mxpolicyd.store.sqlite import SQLiteStore
from mxpolicyd.tap import make_store

START = 1_000_000.0
DAY = 86400.0
WINDOW = 7 * DAY
ENFORCE = StsPolicy("enforce", 86400, ("mx.example.test",))


def enforced(expires_at: float, checked_at: float = START) -> DomainState:
    return DomainState(
        sts=StsState(policy=ENFORCE, policy_id="1", fetched_at=checked_at,
                     expires_at=expires_at, record="v=STSv1; id=1",
                     checked_at=checked_at, due_at=checked_at + 600)
    )


def resp(value: Any) -> bytes:
    """A reply as Redis writes it."""
    if isinstance(value, RedisError):
        return b"-%s\r\n" % str(value).encode()
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(resp(v) for v in value)


class FakeRedis:
    """
    A Redis made of a dict, serving the client's connections through
    StringTransports: PING, SET (NX, PX), GET, DEL, MGET, SCAN (MATCH
    prefix*, COUNT), PTTL and EVAL of the store's compare-and-set script,
    with expiry on the reactor's clock.
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor
        self.data: dict[bytes, tuple[bytes, float]] = {}
        self.commands: list[list[bytes]] = []
        # Commands per read: how the client pipelined them.
        self.reads: list[int] = []
        self.connections: list[tuple[Protocol, StringTransport, ReplyParser]] = []

    def accept(self) -> None:
        """Accept the client's newest connection attempt and answer its handshake."""
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport, ReplyParser()))
        self.pump()

    def refuse(self) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(ConnectionRefusedError())
        )

    def drop(self) -> None:
        """Every connection ends, with its commands unanswered."""
        connections, self.connections = self.connections, []
        for protocol, _, _ in connections:
            protocol.connectionLost(Failure(ConnectionDone()))

    def pump(self) -> None:
        """Answer what the clients sent, until they send nothing more."""
        busy = True
        while busy:
            busy = False
            for protocol, transport, parser in list(self.connections):
                data = transport.value()
                if not data:
                    continue
                transport.clear()
                busy = True
                commands = parser.feed(data)
                self.reads.append(len(commands))
                protocol.dataReceived(b"".join(resp(self.run(c)) for c in commands))

    def live(self, key: bytes) -> bytes | None:
        value = self.data.get(key)
        if value is None or value[1] <= self.reactor.seconds():
            self.data.pop(key, None)
            return None
        return value[0]

    def run(self, command: list[bytes]) -> Any:
        self.commands.append(command)
        name, args = command[0].upper(), command[1:]
        if name == b"PING":
            return "PONG"
        if name == b"GET":
            return self.live(args[0])
        if name == b"MGET":
            return [self.live(k) for k in args]
        if name == b"DEL":
            return sum(1 for k in args if self.live(k) is not None and self.data.pop(k))
        if name == b"PEXPIRE":
            if self.live(args[0]) is None:
                return 0
            self.data[args[0]] = (
                self.data[args[0]][0], self.reactor.seconds() + int(args[1]) / 1000
            )
            return 1
        if name == b"PTTL":
            if self.live(args[0]) is None:
                return -2
            return math.ceil((self.data[args[0]][1] - self.reactor.seconds()) * 1000)
        if name == b"SET":
            key, value, options = args[0], args[1], [o.upper() for o in args[2:]]
            if b"NX" in options and self.live(key) is not None:
                return None
            expires = math.inf
            if b"PX" in options:
                expires = self.reactor.seconds() + int(options[options.index(b"PX") + 1]) / 1000
            self.data[key] = (value, expires)
            return "OK"
        if name == b"EVAL":
            # Only the store's compare-and-set script, run as Redis would.
            if args[0] != CAS.encode() or args[1] != b"1":
                return RedisError("ERR unknown script")
            key, expected, value, px = args[2:6]
            current = self.live(key) or b""
            if current != expected:
                return current
            self.data[key] = (value, self.reactor.seconds() + int(px) / 1000)
            return 1
        if name == b"SCAN":
            cursor = int(args[0])
            options = dict(zip(args[1::2], args[2::2]))
            prefix = options[b"MATCH"].rstrip(b"*").replace(b"\\", b"")
            count = int(options[b"COUNT"])
            keys = sorted(k for k in self.data if self.live(k) is not None)
            part = keys[cursor : cursor + count]
            following = cursor + count if cursor + count < len(keys) else 0
            return [b"%d" % following, [k for k in part if k.startswith(prefix)]]
        return RedisError("ERR unknown command '%s'" % name.decode())


class Fleet:
    """One daemon's store on the fake Redis, with its log lines."""

    def __init__(self, test: SynchronousTestCase, reactor: MemoryReactorClock, redis: FakeRedis,
                 owner: str, chunk: int = 1000, connect: bool = True) -> None:
        self.client = RedisClient(reactor, "tcp:127.0.0.1:6390", timeout=2.0)
        self.store = RedisStore(self.client, reactor, window=WINDOW, owner=owner, chunk=chunk,
                                merge=lambda ours, stored, now, ack: written(
                                    ours, stored, now, 3600.0, ack))
        self.merged: list[tuple[str, DomainState]] = []
        self.store.on_merged(lambda domain, state: self.merged.append((domain, state)))
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.observe)
        globalLogPublisher.addObserver(observer)
        test.addCleanup(globalLogPublisher.removeObserver, observer)
        self.store.open()
        if connect:
            redis.accept()

    def observe(self, event: dict[str, Any]) -> None:
        if event.get("log_source") is self.store:
            self.events.append(event)

    def log(self, level: LogLevel = LogLevel.debug) -> list[str]:
        """The store's lines at C{level} or above."""
        return [formatEvent(e) for e in self.events if e["log_level"] >= level]


class RedisStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(START)
        self.redis = FakeRedis(self.reactor)
        self.a = Fleet(self, self.reactor, self.redis, "daemon-a")
        self.store = self.a.store

    def flush(self, store: RedisStore | None = None) -> None:
        d = (store or self.store).flush()
        self.redis.pump()
        self.successResultOf(d)

    def stored(self, domain: str) -> dict[str, Any] | None:
        value = self.redis.live(b"mxpolicyd:d:" + domain.encode())
        return None if value is None else json.loads(value)

    def test_write_behind(self) -> None:
        """put() sends nothing; flush() writes the state and its last use under the domain's key."""
        state = enforced(START + DAY)
        self.store.put("a.test", state, used_at=START - 5)
        self.assertEqual(self.store.unwritten, 1)
        self.assertIsNone(self.stored("a.test"))
        self.flush()
        self.assertEqual(self.store.unwritten, 0)
        self.assertEqual(self.stored("a.test"), {"state": state.to_json(), "used": START - 5})

    def test_other_daemon_reads(self) -> None:
        """A state one daemon flushed is what another daemon's get() returns."""
        state = enforced(START + DAY)
        self.store.put("a.test", state, used_at=START - 5)
        self.flush()
        b = Fleet(self, self.reactor, self.redis, "daemon-b")
        d = b.store.get("a.test")
        self.redis.pump()
        self.assertEqual(self.successResultOf(d), ("a.test", state, START - 5))
        d = b.store.get("unknown.test")
        self.redis.pump()
        self.assertIsNone(self.successResultOf(d))

    def test_key_expires_after_window(self) -> None:
        """A domain without a cached policy is kept for the refresh window."""
        self.store.put("a.test", DomainState(), used_at=START)
        self.flush()
        self.assertEqual(self.redis.commands[-1][-1], b"%d" % (WINDOW * 1000))
        self.reactor.advance(WINDOW - 1)
        self.assertIsNotNone(self.stored("a.test"))
        self.reactor.advance(1)
        self.assertIsNone(self.stored("a.test"))

    def test_key_outlives_policy(self) -> None:
        """A cached MTA-STS policy valid beyond the window keeps its key until it expires (RFC 8461)."""
        self.store.put("a.test", enforced(START + 30 * DAY), used_at=START)
        self.flush()
        self.assertEqual(self.redis.commands[-1][-1], b"%d" % (30 * DAY * 1000))
        self.reactor.advance(30 * DAY - 1)
        self.assertIsNotNone(self.stored("a.test"))

    def test_ttl(self) -> None:
        """The TTL is the window, or the time the MTA-STS policy has left when that is longer."""
        now = START
        self.assertEqual(ttl(DomainState(), now, WINDOW), WINDOW)
        self.assertEqual(ttl(enforced(now + DAY), now, WINDOW), WINDOW)
        self.assertEqual(ttl(enforced(now + 10 * DAY), now, WINDOW), 10 * DAY)
        self.assertEqual(ttl(enforced(now - DAY), now, WINDOW), WINDOW)

    def test_ttl_memory(self) -> None:
        """A domain with downgrade memory is kept until the memory ages out, even idle and reduced to it."""
        now = START
        memory = DomainState(memory=Remembered("sts-enforce", now - 8 * DAY))
        self.assertEqual(ttl(memory, now, WINDOW, 30 * DAY), 22 * DAY)
        self.assertEqual(ttl(memory, now, WINDOW), WINDOW)
        self.assertEqual(ttl(replace(memory, memory=Remembered("dane", now - 29 * DAY)),
                             now, WINDOW, 30 * DAY), WINDOW)
        store = RedisStore(self.a.client, self.reactor, window=WINDOW, owner="b",
                           memory=30 * DAY)
        store.put("kept.test", memory, used_at=now - 8 * DAY)
        self.flush(store)
        # The compare-and-set script's last argument is the key's lifetime in ms.
        write = self.redis.commands[-1]
        self.assertEqual((write[0], write[-1]), (b"EVAL", b"%d" % (22 * DAY * 1000)))
        self.reactor.advance(22 * DAY - 1)
        self.assertIsNotNone(self.stored("kept.test"))

    def test_last_put_wins(self) -> None:
        """Of two puts before a flush, the later is written."""
        self.store.put("a.test", DomainState(), used_at=START)
        newer = enforced(START + DAY)
        self.store.put("a.test", newer, used_at=START + 1)
        self.flush()
        self.assertEqual(self.stored("a.test"), {"state": newer.to_json(), "used": START + 1})
        self.assertEqual([c[0] for c in self.redis.commands].count(b"EVAL"), 1)

    def test_delete(self) -> None:
        """A deleted domain's key is removed at the next flush."""
        self.store.put("a.test", DomainState(), used_at=START)
        self.flush()
        self.store.delete("a.test")
        self.flush()
        self.assertIsNone(self.stored("a.test"))
        self.assertEqual(self.redis.commands[-1], [b"DEL", b"mxpolicyd:d:a.test"])

    def test_unwritten_answers_first(self) -> None:
        """get() of an unflushed put or delete answers from memory, asking Redis nothing."""
        state = enforced(START + DAY)
        self.store.put("a.test", state, used_at=7.0)
        sent = len(self.redis.commands)
        self.assertEqual(self.successResultOf(self.store.get("a.test")), ("a.test", state, 7.0))
        self.store.delete("a.test")
        self.assertIsNone(self.successResultOf(self.store.get("a.test")))
        self.redis.pump()
        self.assertEqual(len(self.redis.commands), sent)

    def test_unreadable_state(self) -> None:
        """A value that is not a stored state is skipped with a warning naming the domain."""
        self.redis.data[b"mxpolicyd:d:bad.test"] = (b'{"state": {"v": 99}, "used": 1}', math.inf)
        d = self.store.get("bad.test")
        self.redis.pump()
        self.assertIsNone(self.successResultOf(d))
        self.assertTrue(any("bad.test" in line for line in self.a.log()))

    def test_get_when_down(self) -> None:
        """get() fails with RedisUnavailable while Redis is away (the cache evaluates afresh)."""
        self.redis.drop()
        self.failureResultOf(self.store.get("a.test"), RedisUnavailable)

    def test_get_waits_for_first_connection(self) -> None:
        """A get() at start-up, before the connection is up, waits for it rather than failing."""
        self.store.put("a.test", DomainState(), used_at=START)
        self.flush()
        b = Fleet(self, self.reactor, self.redis, "daemon-b", connect=False)
        d = b.store.get("a.test")
        self.assertNoResult(d)
        self.redis.accept()
        self.assertEqual(self.successResultOf(d)[0], "a.test")

    def test_down_keeps_unwritten(self) -> None:
        """While Redis is away a flush keeps the batch, newer puts win, and the outage is one warning."""
        self.redis.drop()
        self.store.put("a.test", DomainState(), used_at=START)
        self.store.put("b.test", DomainState(), used_at=START)
        self.successResultOf(self.store.flush())
        self.successResultOf(self.store.flush())
        newer = enforced(START + DAY)
        self.store.put("a.test", newer, used_at=START + 1)
        self.successResultOf(self.store.flush())
        self.assertEqual(self.store.unwritten, 2)
        unreachable = [line for line in self.a.log(LogLevel.warn) if "unreachable" in line]
        self.assertEqual(len(unreachable), 1)
        self.assertIn("keeping 2 domain states in memory and retrying", unreachable[0])
        self.assertEqual(len([line for line in self.a.log() if "unreachable" in line]), 3)
        self.assertIsNone(self.stored("a.test"))

    def test_resynchronise_on_reconnect(self) -> None:
        """When the connection comes back, what piled up is written at once and that is logged."""
        self.redis.drop()
        self.store.put("a.test", DomainState(), used_at=START)
        self.successResultOf(self.store.flush())
        newer = enforced(START + DAY)
        self.store.put("a.test", newer, used_at=START + 1)
        self.store.put("b.test", DomainState(), used_at=START)
        self.reactor.advance(1.0)
        self.redis.accept()
        self.assertEqual(self.store.unwritten, 0)
        self.assertEqual(self.stored("a.test"), {"state": newer.to_json(), "used": START + 1})
        self.assertIsNotNone(self.stored("b.test"))
        self.assertIn("Redis at tcp:127.0.0.1:6390 is back; wrote 2 domain states kept in "
                      "memory since 1970-01-12 13:46:40 UTC", self.a.log())

    def test_lost_during_flush(self) -> None:
        """A batch whose writes are not confirmed stays unwritten, unless a newer put replaced it."""
        self.store.put("a.test", DomainState(), used_at=START)
        self.store.put("b.test", DomainState(), used_at=START)
        d = self.store.flush()
        waiting = self.store.flush()
        self.assertNoResult(waiting)
        newer = enforced(START + DAY)
        self.store.put("a.test", newer, used_at=START + 1)
        self.redis.drop()
        self.successResultOf(d)
        self.successResultOf(waiting)
        self.assertEqual(self.store.unwritten, 2)
        self.reactor.advance(1.0)
        self.redis.accept()
        self.assertEqual(self.stored("a.test"), {"state": newer.to_json(), "used": START + 1})
        self.assertIsNotNone(self.stored("b.test"))

    def test_refused_write(self) -> None:
        """An error reply (Redis out of memory) keeps the batch for the next flush."""
        self.store.put("a.test", DomainState(), used_at=START)
        run = self.redis.run
        self.redis.run = lambda c: (  # type: ignore[method-assign]
            RedisError("OOM command not allowed") if c[0] == b"EVAL" else run(c)
        )
        self.flush()
        self.assertEqual(self.store.unwritten, 1)
        self.assertTrue(any("OOM" in line for line in self.a.log()))
        self.redis.run = run  # type: ignore[method-assign]
        self.flush()
        self.assertEqual(self.store.unwritten, 0)
        self.assertIsNotNone(self.stored("a.test"))

    def test_write_merges_over_stored(self) -> None:
        """A state whose fetch was blocked is merged over the fleet's: the stored policy and memory stay, and the cache hears of it."""
        stored = replace(enforced(START + 30 * DAY), memory=Remembered("sts-enforce", START))
        self.store.put("a.test", stored, used_at=START)
        self.flush()
        b = Fleet(self, self.reactor, self.redis, "daemon-b")
        self.reactor.advance(10)
        blocked = DomainState(sts=StsState(record="v=STSv1; id=2", checked_at=START + 10,
                                           due_at=START + 70, failure="policy fetch failed"))
        b.store.put("a.test", blocked, used_at=START + 10)
        self.flush(b.store)
        value = self.stored("a.test")
        assert value is not None
        got = DomainState.from_json(value["state"])
        self.assertEqual((got.sts.policy, got.memory), (ENFORCE, stored.memory))
        self.assertEqual((got.sts.checked_at, got.sts.failure), (START + 10, "policy fetch failed"))
        self.assertEqual(value["used"], START + 10)
        self.assertEqual(b.merged, [("a.test", got)])
        # The key lives as long as the merged state needs: the window here.
        self.assertEqual(self.redis.commands[-1][-1], b"%d" % (WINDOW * 1000))

    def test_nothing_to_merge(self) -> None:
        """A write that the stored state adds nothing to is not reported."""
        self.store.put("a.test", enforced(START + DAY), used_at=START)
        self.flush()
        self.store.put("a.test", enforced(START + DAY), used_at=START)
        self.flush()
        self.assertEqual(self.a.merged, [])

    def test_compare_and_set_retries(self) -> None:
        """Another daemon's write between the read and the compare-and-set is merged in, not lost."""
        b = Fleet(self, self.reactor, self.redis, "daemon-b")
        self.store.put("a.test", DomainState(sts=StsState(checked_at=START, due_at=START + 60)),
                       used_at=START)
        run = self.redis.run
        peer = replace(enforced(START + DAY), memory=Remembered("dane-only", START))
        raced: list[bool] = []

        def racing(command: list[bytes]) -> Any:
            if command[0] == b"EVAL" and not raced:
                raced.append(True)
                text = json.dumps({"state": peer.to_json(), "used": START})
                self.redis.data[b"mxpolicyd:d:a.test"] = (text.encode(), math.inf)
            return run(command)

        self.redis.run = racing  # type: ignore[method-assign]
        self.flush()
        self.assertEqual([c[0] for c in self.redis.commands].count(b"EVAL"), 2)
        value = self.stored("a.test")
        assert value is not None
        got = DomainState.from_json(value["state"])
        self.assertEqual((got.sts.policy, got.memory), (ENFORCE, peer.memory))
        self.assertEqual(self.store.unwritten, 0)
        del b

    def test_contended_write_waits(self) -> None:
        """A key other daemons keep changing is tried three times, then kept for the next flush."""
        self.store.put("a.test", DomainState(), used_at=START)
        run = self.redis.run
        count = [0]

        def racing(command: list[bytes]) -> Any:
            if command[0] == b"EVAL":
                count[0] += 1
                self.redis.data[b"mxpolicyd:d:a.test"] = (b"{}%d" % count[0], math.inf)
            return run(command)

        self.redis.run = racing  # type: ignore[method-assign]
        self.flush()
        self.assertEqual(count[0], 3)
        self.assertEqual(self.store.unwritten, 1)
        self.assertTrue(any("again at the next flush" in line for line in self.a.log(LogLevel.info)))
        self.redis.run = run  # type: ignore[method-assign]
        self.flush()
        self.assertEqual(self.store.unwritten, 0)

    def test_acknowledged_memory_written(self) -> None:
        """An acknowledged state's memory replaces a stronger stored one, also when another put follows it before the flush."""
        self.store.put("a.test", replace(enforced(START + DAY), memory=Remembered("dane-only", START)),
                       used_at=START)
        self.flush()
        acked = replace(enforced(START + DAY), memory=Remembered("sts-enforce", START))
        self.store.put("a.test", acked, used_at=START, acknowledged=True)
        self.store.put("a.test", acked, used_at=START + 1)
        self.flush()
        value = self.stored("a.test")
        assert value is not None
        self.assertEqual(DomainState.from_json(value["state"]).memory, acked.memory)
        self.store.put("a.test", replace(acked, memory=None), used_at=START + 2)
        self.flush()
        value = self.stored("a.test")
        assert value is not None
        self.assertEqual(DomainState.from_json(value["state"]).memory, acked.memory)

    def test_future_use_capped(self) -> None:
        """A stored last use in the future is merged as now: a key is not kept alive by a lie."""
        self.redis.data[b"mxpolicyd:d:a.test"] = (json.dumps(
            {"state": DomainState().to_json(), "used": START + 10**9}).encode(), math.inf)
        self.store.put("a.test", DomainState(), used_at=START - 5)
        self.flush()
        value = self.stored("a.test")
        assert value is not None
        self.assertEqual(value["used"], START)

    def test_pipelined_in_chunks(self) -> None:
        """A flush sends its writes pipelined, a chunk at a time: its reads in one round trip, its compare-and-sets in the next."""
        fleet = Fleet(self, self.reactor, self.redis, "daemon-c", chunk=2)
        for i in range(5):
            fleet.store.put("d%d.test" % i, DomainState(), used_at=START)
        self.redis.reads.clear()
        self.flush(fleet.store)
        self.assertEqual(self.redis.reads, [2, 2, 2, 2, 1, 1])
        self.assertEqual(len([k for k in self.redis.data if k.startswith(b"mxpolicyd:d:")]), 5)

    def test_lease(self) -> None:
        """The first daemon takes a domain's lease; another is refused until it expires."""
        b = Fleet(self, self.reactor, self.redis, "daemon-b")
        d = self.store.lease("a.test", 60)
        self.redis.pump()
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(
            self.redis.commands[-1],
            [b"SET", b"mxpolicyd:l:a.test", b"daemon-a", b"NX", b"PX", b"60000"],
        )
        d = b.store.lease("a.test", 60)
        self.redis.pump()
        self.assertFalse(self.successResultOf(d))
        self.reactor.advance(60)
        d = b.store.lease("a.test", 60)
        self.redis.pump()
        self.assertTrue(self.successResultOf(d))

    def test_own_lease(self) -> None:
        """A daemon still holding a domain's lease refreshes it again and extends the lease."""
        b = Fleet(self, self.reactor, self.redis, "daemon-b")
        for _ in range(3):
            d = self.store.lease("a.test", 60)
            self.redis.pump()
            self.assertTrue(self.successResultOf(d))
            self.reactor.advance(40)
        d = b.store.lease("a.test", 60)
        self.redis.pump()
        self.assertFalse(self.successResultOf(d))
        self.assertEqual(self.redis.run([b"PTTL", b"mxpolicyd:l:a.test"]), 20000)

    def test_lease_when_down(self) -> None:
        """With Redis away the lease is granted: the daemon refreshes locally."""
        self.redis.drop()
        self.assertTrue(self.successResultOf(self.store.lease("a.test", 60)))

    def test_lease_on_timeout(self) -> None:
        """A lease that Redis does not answer in time is granted."""
        d = self.store.lease("a.test", 60)
        self.reactor.advance(2.0)
        self.assertTrue(self.successResultOf(d))

    def test_scan(self) -> None:
        """scan() reads every stored domain in batches, skipping other keys and unreadable states."""
        for i in range(25):
            self.store.put("d%02d.test" % i, DomainState(), used_at=START + i)
        self.flush()
        self.redis.data[b"other:d:x.test"] = (b"{}", math.inf)
        self.redis.data[b"mxpolicyd:l:d01.test"] = (b"daemon-a", math.inf)
        self.redis.data[b"mxpolicyd:d:bad.test"] = (b"[", math.inf)
        rows = []
        batches = 0
        for d in self.store.scan(batch=10):
            self.redis.pump()
            rows += self.successResultOf(d)
            batches += 1
        self.assertEqual(
            sorted(rows), [("d%02d.test" % i, DomainState(), START + i) for i in range(25)]
        )
        self.assertGreaterEqual(batches, 3)
        log = self.a.log()
        self.assertTrue(any("bad.test" in line for line in log))
        self.assertIn("Skipped 1 unreadable domain states in Redis at tcp:127.0.0.1:6390", log)

    def test_scan_reads_few_keys_at_a_time(self) -> None:
        """scan() asks MGET for at most MGET_KEYS keys at a time: a reply may hold only so many bytes."""
        for i in range(40):
            self.store.put("d%02d.test" % i, DomainState(), used_at=START)
        self.flush()
        rows = []
        for d in self.store.scan(batch=100):
            self.redis.pump()
            rows += self.successResultOf(d)
        self.assertEqual(len(rows), 40)
        sizes = [len(c) - 1 for c in self.redis.commands if c[0] == b"MGET"]
        self.assertEqual(sizes, [MGET_KEYS, MGET_KEYS, 40 - 2 * MGET_KEYS])

    def test_oversized_state_not_written(self) -> None:
        """A state larger than a reply may hold is kept in memory only, with a warning: no daemon could read it."""
        hosts = tuple(HostEvidence("mx%d.big.test" % i, 10, HostState.USABLE,
                                   tlsa=(Tlsa(3, 0, 0, "ab" * 20000),)) for i in range(32))
        big = DomainState(dane=DaneState(DaneStatus.DANE_ONLY, "x", True, hosts=hosts))
        self.store.put("big.test", big, used_at=START)
        self.store.put("a.test", DomainState(), used_at=START)
        self.flush()
        self.assertEqual(self.store.unwritten, 0)
        self.assertIsNone(self.stored("big.test"))
        self.assertIsNotNone(self.stored("a.test"))
        self.assertTrue(any("Not storing the state of big.test" in line
                            for line in self.a.log(LogLevel.warn)))

    def test_scan_waits_for_connection(self) -> None:
        """A scan started before the connection is up waits for it."""
        self.store.put("a.test", DomainState(), used_at=START)
        self.flush()
        b = Fleet(self, self.reactor, self.redis, "daemon-b", connect=False)
        batches = b.store.scan()
        d = next(batches)
        self.assertNoResult(d)
        self.redis.accept()
        self.assertEqual([r[0] for r in self.successResultOf(d)], ["a.test"])
        self.assertEqual(list(batches), [])

    def test_scan_when_down(self) -> None:
        """With Redis unreachable at start-up the scan ends at once with a warning."""
        b = Fleet(self, self.reactor, self.redis, "daemon-b", connect=False)
        batches = b.store.scan()
        d = next(batches)
        self.redis.refuse()
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(list(batches), [])
        self.assertTrue(any("serving and evaluating domains without them" in line
                            for line in b.log()))

    def test_scan_interrupted(self) -> None:
        """A connection lost in the middle of a scan ends it with what was read."""
        for i in range(25):
            self.store.put("d%02d.test" % i, DomainState(), used_at=START)
        self.flush()
        batches = self.store.scan(batch=10)
        d = next(batches)
        self.redis.pump()
        self.assertTrue(self.successResultOf(d))
        d = next(batches)
        self.redis.drop()
        self.assertEqual(self.successResultOf(d), [])
        self.assertEqual(list(batches), [])

    def test_close(self) -> None:
        """close() disconnects for good and says how many states were not written."""
        self.redis.drop()
        self.store.put("a.test", DomainState(), used_at=START)
        self.store.close()
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(any("Stopping with 1 domain states not written" in line
                            for line in self.a.log()))


class StoreConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """Without [store] settings the store is SQLite, and Redis settings have their defaults."""
        store = parse({}).store
        self.assertEqual(store.backend, "sqlite")
        self.assertEqual(store.redis, "tcp:127.0.0.1:6379")
        self.assertIsNone(store.redis_password)
        self.assertEqual((store.redis_db, store.key_prefix, store.lease), (0, "mxpolicyd:", 60.0))

    def test_redis(self) -> None:
        """Every Redis setting is read."""
        store = parse({"store": {
            "backend": "redis", "redis": "unix:/run/redis/redis-server.sock",
            "redis_password": "pw", "redis_db": 2, "key_prefix": "mta:", "lease": 30,
        }}).store
        self.assertEqual(
            (store.backend, store.redis, store.redis_password, store.redis_db,
             store.key_prefix, store.lease),
            ("redis", "unix:/run/redis/redis-server.sock", "pw", 2, "mta:", 30.0),
        )

    def test_errors_name_the_key(self) -> None:
        """A bad [store] value is refused with a message naming its key."""
        for key, value in [
            ("backend", "mysql"),
            ("redis", "redis://127.0.0.1:6379"),
            ("redis", "tcp:127.0.0.1"),
            ("redis_db", -1),
            ("redis_password", 1234),
            ("key_prefix", "my prefix"),
            ("lease", 0),
        ]:
            with self.assertRaises(ConfigError) as caught:
                parse({"store": {key: value}}, "x.toml")
            self.assertIn("x.toml: store.%s " % key, str(caught.exception))


class MakeStoreTests(SynchronousTestCase):
    def test_redis_backend(self) -> None:
        """backend = "redis" builds a RedisStore that starts connecting without waiting."""
        reactor = MemoryReactorClock()
        config = parse({"store": {"backend": "redis", "redis": "tcp:127.0.0.1:6390"}})
        store, stop = make_store(config, reactor)
        self.assertIsInstance(store, RedisStore)
        self.assertEqual(store.path, "Redis at tcp:127.0.0.1:6390")
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 6390))
        stop()
        store.close()

    def test_redis_backend_merges(self) -> None:
        """The Redis store make_store builds merges each write over the fleet's stored state."""
        reactor = MemoryReactorClock()
        reactor.advance(START)
        redis = FakeRedis(reactor)
        config = parse({"store": {"backend": "redis", "redis": "tcp:127.0.0.1:6390"}})
        store, stop = make_store(config, reactor)
        self.addCleanup(stop)
        self.addCleanup(store.close)
        redis.accept()
        store.put("a.test", enforced(START + DAY), used_at=START)
        d = store.flush()
        redis.pump()
        self.successResultOf(d)
        store.put("a.test", DomainState(sts=StsState(checked_at=START)), used_at=START)
        d = store.flush()
        redis.pump()
        self.successResultOf(d)
        value = json.loads(redis.live(b"mxpolicyd:d:a.test") or b"null")
        self.assertEqual(DomainState.from_json(value["state"]).sts.policy, ENFORCE)

    def test_sqlite_backend(self) -> None:
        """The default backend is the SQLite file in the state directory."""
        directory = self.mktemp()
        config = parse({"daemon": {"state_directory": directory}})
        store, stop = make_store(config, MemoryReactorClock())
        self.addCleanup(stop)
        self.addCleanup(store.close)
        self.assertIsInstance(store, SQLiteStore)
        self.assertTrue(store.path.endswith("mxpolicyd.sqlite"))
