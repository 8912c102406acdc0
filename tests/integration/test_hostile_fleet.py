"""
Hostile fleet stores (issue #14, items 3 and 7), against real daemons: a
fake Redis that answers with an absurd bulk length and with deep nesting,
and a fleet peer that writes a weaker, future-dated state into a real
redis-server, or whose Redis read and policy fetch were blocked.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.net.redis import ReplyParser

from .case import IntegrationTestCase
from .daemon import Daemon
from .scenarios import DANE_ONLY, enforce_answer, mx_of
from .servers import RedisServer, wait_until
from .test_redis_fleet import redis_server  # noqa: F401  (the module's redis-server)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
# What a hostile Redis may make the daemon hold, at most, in these tests.
RSS_BOUND = 16 * MiB
# The peer's dates: 30 years ahead.
FAR = time.time() + 30 * 365 * 86400
# The longest the test world's daemons wait between checks (txt_ttl_max,
# dane.ttl_max): a peer's state must not schedule one later.
HORIZON = 3600


def rss(pid: int) -> int:
    """The process's resident set, in bytes (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class HostileRedis:
    """
    A Redis on 127.0.0.1 that answers like an empty one (PING, SCAN, GET,
    SET, EVAL, ...), except for one armed GET, answered with an attack:
    bytes sent as fast as the daemon reads them, until it hangs up or the
    attack is over.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        self.handshakes = 0
        self.sent = 0
        self._armed: tuple[bytes, Iterator[bytes]] | None = None
        self.attacked = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, key_suffix: bytes, attack: Iterator[bytes]) -> None:
        with self._lock:
            self._armed = (key_suffix, attack)
            self.attacked.clear()
            self.sent = 0

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        parser = ReplyParser()
        conn.settimeout(10.0)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for command in parser.feed(data):
                    attack = self._attack_for(command)
                    if attack is not None:
                        self._send_attack(conn, attack)
                        return
                    conn.sendall(self._reply(command))

    def _attack_for(self, command: list[bytes]) -> Iterator[bytes] | None:
        with self._lock:
            if (self._armed is not None and command[0].upper() == b"GET"
                    and command[1].endswith(self._armed[0])):
                attack, self._armed = self._armed[1], None
                return attack
        return None

    def _send_attack(self, conn: socket.socket, attack: Iterator[bytes]) -> None:
        try:
            for chunk in attack:
                conn.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass  # the daemon hung up: what the bounds are for
        finally:
            self.attacked.set()

    def _reply(self, command: list[bytes]) -> bytes:
        name = command[0].upper()
        if name == b"PING":
            self.handshakes += 1
            return b"+PONG\r\n"
        if name == b"SCAN":
            return b"*2\r\n$1\r\n0\r\n*0\r\n"
        if name == b"MGET":
            return b"*%d\r\n" % (len(command) - 1) + b"$-1\r\n" * (len(command) - 1)
        if name in (b"GET",):
            return b"$-1\r\n"
        if name == b"SET":
            return b"+OK\r\n"
        return b":1\r\n"  # EVAL (written), DEL, PEXPIRE


def absurd_bulk() -> Iterator[bytes]:
    """A bulk string of 999999999999 bytes, of which up to 256 MiB are sent."""
    yield b"$999999999999\r\n"
    chunk = b"x" * MiB
    for _ in range(256):
        yield chunk


def deep_nesting(levels: int = 2_000_000) -> Iterator[bytes]:
    """Arrays nested two million deep (8 MB on the wire), then their one element."""
    chunk = b"*1\r\n" * 65536
    for _ in range(levels // 65536):
        yield chunk
    yield b"*1\r\n" * (levels % 65536) + b":1\r\n"


class HostileRedisTests(IntegrationTestCase):
    """A daemon whose fleet store is a hostile Redis."""

    def attack(self, attack: Iterator[bytes], error: str) -> None:
        """
        Answer the store read of a lookup with C{attack}: the daemon's RSS
        stays within RSS_BOUND, it logs C{error} as a protocol error, it
        answers from its cache meanwhile and the new domain after, and it
        reconnects.
        """
        redis = HostileRedis()
        self.addCleanup(redis.close)
        daemon = self.start_daemon(None, {
            "store": {"backend": "redis", "redis": redis.endpoint, "flush_interval": 0.2},
        })
        cached, domain = "enforce.test", "crlf.test"
        answer = enforce_answer(mx_of(cached))
        self.assertAnswer(cached, answer, daemon=daemon)
        wait_until(lambda: redis.handshakes >= 1, 10.0, "the daemon's first connection")
        assert daemon.process is not None
        pid = daemon.process.pid
        time.sleep(0.5)  # settled after the first evaluation and its write
        handshakes = redis.handshakes
        before = rss(pid)
        redis.arm(b"d:" + domain.encode(), attack)
        # A miss reads the store: the armed GET.
        lookup = threading.Thread(target=daemon.postmap, args=(domain,))
        lookup.start()
        peak = before
        deadline = time.monotonic() + 20.0
        while not redis.attacked.is_set() and time.monotonic() < deadline:
            peak = max(peak, rss(pid))
            time.sleep(0.005)
        peak = max(peak, rss(pid))
        lookup.join(30.0)
        print(f"\n{error}: VmRSS {before / MiB:.1f} MiB before, {peak / MiB:.1f} MiB at "
              f"peak; {redis.sent / MiB:.1f} MiB sent")
        self.assertTrue(redis.attacked.is_set(), "the attack did not end within 20 s")
        self.assertLess(peak - before, RSS_BOUND,
                        f"VmRSS {before} before, {peak} at peak ({redis.sent} bytes sent)")
        wait_until(lambda: error in daemon.log_text(), 5.0, "the protocol error in the log")
        self.assertIn(f"Protocol error from Redis at {redis.endpoint}: {error}; dropping "
                      "the connection and reconnecting", daemon.log_text())
        # Answers go on from the cache, and the new domain is evaluated.
        started = time.monotonic()
        self.assertAnswer(cached, answer, daemon=daemon)
        self.assertLess(time.monotonic() - started, 1.0)
        new = enforce_answer(mx_of(domain))
        self.assertEqual(self.poll_answers(domain, new, 10.0, daemon=daemon)[-1], new)
        wait_until(lambda: redis.handshakes > handshakes, 10.0, "the daemon to reconnect")

    def test_absurd_bulk_length(self) -> None:
        """A $999999999999 reply is refused at its header: no memory, a protocol error, answers go on, a reconnect."""
        self.attack(absurd_bulk(), "bulk string of 999999999999 bytes, over the limit of 1048576")

    def test_deep_nesting(self) -> None:
        """Arrays nested two million deep are refused at depth 5: no memory, a protocol error, answers go on, a reconnect."""
        self.attack(deep_nesting(), "arrays nested deeper than 4")


class HostileFleetTests(IntegrationTestCase):
    """A real redis-server shared with a peer that lies, or whose reads were blocked."""

    redis: RedisServer
    prefix: str

    @pytest.fixture(autouse=True)
    def _fleet(self, redis_server: RedisServer,  # noqa: F811
               request: pytest.FixtureRequest) -> None:
        self.redis = redis_server
        if not self.redis.server.running():
            self.redis.start()
        self.prefix = f"{request.node.name}:"

    def fleet_daemon(self, *overrides: dict[str, dict[str, Any]]) -> Daemon:
        return self.start_daemon(None, {
            "store": {"backend": "redis", "redis": self.redis.endpoint,
                      "key_prefix": self.prefix, "lease": 30.0, "flush_interval": 0.2},
            "refresh": {"startup_spread": 1.0},
            "policy": {"downgrade": "warn"},
        }, *overrides)

    def key(self, domain: str) -> str:
        return f"{self.prefix}d:{domain}"

    def stored(self, domain: str) -> dict[str, Any]:
        value = self.redis.state(self.key(domain))
        assert value is not None, f"no state of {domain} in Redis"
        return value["state"]

    def show(self, daemon: Daemon, domain: str) -> dict[str, Any]:
        r = daemon.cli("cache", "show", domain, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def test_weaker_future_dated_peer_state(self) -> None:
        """A peer's weaker state dated 30 years ahead neither weakens the answer nor pushes the next check out."""
        domain = "daneonly.test"
        a = self.fleet_daemon()
        self.assertAnswer(domain, DANE_ONLY, daemon=a)
        wait_until(lambda: self.redis.state(self.key(domain)) is not None, 10.0, "A's write")
        self.assertEqual(self.show(a, domain)["state"]["memory"]["action"], "dane-only")
        # The peer: an expired policy, dane none, no memory, 30 years ahead,
        # and the lease, so that A takes the stored state instead of evaluating.
        lie = DomainState(
            sts=StsState(policy=StsPolicy("enforce", 86400, ("mx1.daneonly.test",)),
                         policy_id="1", fetched_at=time.time() - 3 * 86400,
                         expires_at=time.time() - 2 * 86400, checked_at=FAR, due_at=FAR),
            dane=DaneState(DaneStatus.NONE, "the peer says so", mx_secure=False,
                           checked_at=FAR, due_at=FAR))
        self.redis.cli("SET", self.key(domain),
                       json.dumps({"state": lie.to_json(), "used": FAR}))
        self.redis.cli("SET", f"{self.prefix}l:{domain}", "peer", "PX", "60000")
        refreshed = a.cli("cache", "refresh", domain, "--json")
        self.assertEqual(refreshed.returncode, 0, refreshed.stderr)
        self.assertAnswer(domain, DANE_ONLY, daemon=a)
        shown = self.show(a, domain)
        self.assertEqual(shown["action"], "dane-only")
        self.assertLessEqual(shown["due_at"], time.time() + HORIZON)
        self.assertEqual(shown["state"]["memory"]["action"], "dane-only")
        # A checked the domain itself and wrote its own result over the lie.
        wait_until(lambda: self.stored(domain)["dane"]["status"] == "dane-only", 10.0,
                   "A's result in Redis")
        self.assertLessEqual(self.stored(domain)["sts"]["checked_at"], time.time())

    def test_blocked_fetch_does_not_erase_fleet_state(self) -> None:
        """A daemon whose Redis read and policy fetch were blocked merges its fresh state over the fleet's: the policy and memory stay."""
        domain = "enforce.test"
        answer = enforce_answer(mx_of(domain))
        a = self.fleet_daemon()
        self.assertAnswer(domain, answer, daemon=a)
        wait_until(lambda: (self.redis.state(self.key(domain)) or {}).get("state", {})
                   .get("memory") is not None, 10.0, "A's state in Redis")
        a.stop()  # so that only B writes from here on
        # B cannot verify the policy host (the system trust store, not the
        # test CA): its fetch fails as if blocked.
        with self.redis.paused():
            b = self.fleet_daemon({"mta_sts": {"trust_root": "/etc/ssl/certs/ca-certificates.crt"}})
            # NOTFOUND, or TEMP while its DANE lookups outlast the deadline.
            self.assertNotEqual(self.answer(domain, daemon=b), answer)
            wait_until(lambda: f"MTA-STS policy fetch for {domain}" in b.log_text(), 10.0,
                       "B's failed fetch")
        wait_until(lambda: "is back; wrote" in b.log_text(), 30.0, "B's write after the pause")
        state = self.stored(domain)
        self.assertIsNotNone(state["sts"]["policy"], "the fleet's policy was overwritten")
        self.assertEqual(state["sts"]["policy"]["mode"], "enforce")
        self.assertEqual(state["memory"]["action"], "sts-enforce")
        self.assertIn("policy fetch failed", state["sts"]["failure"])
        # B takes the fleet's policy into its own cache from its write.
        self.assertEqual(self.poll_answers(domain, answer, 5.0, daemon=b)[-1], answer)
