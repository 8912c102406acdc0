"""
Fault injection against a real daemon: a resolver that is gone or slow, a
policy host that refuses, stalls, trickles or streams forever, a full disk
and a corrupt file under the SQLite store, a kill -9 in the middle of heavy
writes, and Redis going away. Each test checks that the daemon gives the
safe answer of DESIGN.md ("What a lookup answers", "Reliability") within its
deadlines, logs what happened, and recovers without a restart once the fault
is gone.

The misbehaving servers are the test's own: a DNS relay in front of unbound
(``DnsRelay``) and a threaded TLS policy host on 127.0.0.46:443
(``FaultyPolicyHost``) for domains this module adds to the test zone.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sqlite3
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from mxpolicyd.cli import socketmap_request
from mxpolicyd.protocols.socketmap import netstring

from .addresses import FAULTY_POLICY_ADDRESS, POLICY_PORT, ensure_free
from .case import IntegrationTestCase
from .daemon import Daemon
from .pki import Pair
from .scenarios import enforce_answer, mx_of, policy
from .servers import REDIS_CLI, REDIS_SERVER, RedisServer, free_port, wait_until
from .world import World

pytestmark = pytest.mark.integration

# Short deadlines keep the module fast; the world's defaults are longer.
LOOKUP_DEADLINE = 1.0
FETCH_TIMEOUT = 2.0
# What a deadline may overrun by on a busy two-core machine.
SLACK = 1.0
# An answer from memory: a fresh connection and a dict lookup.
AT_ONCE = 0.5

ENFORCE = enforce_answer(mx_of("enforce.test"))
HTTPS_FAULTS = ("dead", "slow", "slowloris", "endless")


def reply(daemon: Daemon, key: str, name: str = "postfix") -> str:
    """The daemon's raw socketmap reply (``OK ...``, ``NOTFOUND ``, ``TEMP ...``)."""
    data = socketmap_request(socket.AF_INET, daemon.tcp_address, name, key.encode(), 30.0)
    return data.decode("ascii", "replace")


def ok(value: str) -> str:
    return "OK " + value


NOTFOUND = "NOTFOUND "


def timed_reply(daemon: Daemon, key: str) -> tuple[str, float]:
    started = time.monotonic()
    answer = reply(daemon, key)
    return answer, time.monotonic() - started


def log_lines(daemon: Daemon, *needles: str) -> list[str]:
    """Every line of the daemon's whole log that contains all of ``needles``."""
    try:
        text = daemon.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def wait_for_log(daemon: Daemon, *needles: str, timeout: float = 10.0) -> float:
    """Seconds until a log line contains all of ``needles``."""
    started = time.monotonic()
    wait_until(lambda: bool(log_lines(daemon, *needles)), timeout,
               f"a log line with {needles!r}", interval=0.05)
    return time.monotonic() - started


def open_fds(daemon: Daemon) -> int:
    assert daemon.process is not None
    return len(os.listdir(f"/proc/{daemon.process.pid}/fd"))


def txt(policy_id: int) -> list[str]:
    return [f'TXT "v=STSv1; id={policy_id}"']


# --- a DNS relay that can be slow or gone ------------------------------------


class DnsRelay:
    """
    A relay on 127.0.0.1 (UDP and TCP, one port) in front of the world's
    unbound: ``delay`` holds every answer back that long; ``stop()`` closes
    its sockets, so nothing listens until ``start()`` again.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.host = "127.0.0.1"
        self.port = free_port(self.host, udp_too=True)
        self.delay = 0.0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def config(self) -> dict[str, dict[str, Any]]:
        return {"dns": {"nameservers": [self.host], "port": self.port,
                        "timeout": 1.0, "attempts": 2}}

    def start(self) -> None:
        self._stopping = threading.Event()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((self.host, self.port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.host, self.port))
        tcp.listen(16)
        self._threads = [
            threading.Thread(target=self._udp_loop, args=(udp, self._stopping), daemon=True),
            threading.Thread(target=self._tcp_loop, args=(tcp, self._stopping), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(5.0)

    def _hold(self, started: float, stopping: threading.Event) -> bool:
        """Wait out the delay; False if the relay stopped meanwhile."""
        return not stopping.wait(max(0.0, self.delay - (time.monotonic() - started)))

    def _udp_loop(self, sock: socket.socket, stopping: threading.Event) -> None:
        with sock:
            while not stopping.is_set():
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                data, client = sock.recvfrom(65535)
                threading.Thread(
                    target=self._udp_one, args=(sock, data, client, stopping), daemon=True
                ).start()

    def _udp_one(self, sock: socket.socket, data: bytes, client: Any,
                 stopping: threading.Event) -> None:
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5.0)
            try:
                up.sendto(data, self.upstream)
                answer = up.recv(65535)
            except OSError:
                return
        if self._hold(started, stopping):
            with contextlib.suppress(OSError):
                sock.sendto(answer, client)

    def _tcp_loop(self, sock: socket.socket, stopping: threading.Event) -> None:
        with sock:
            while not stopping.is_set():
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                conn, _ = sock.accept()
                threading.Thread(
                    target=self._tcp_one, args=(conn, stopping), daemon=True
                ).start()

    def _tcp_one(self, conn: socket.socket, stopping: threading.Event) -> None:
        def read_message(s: socket.socket) -> bytes:
            head = _read_exactly(s, 2)
            return head + _read_exactly(s, struct.unpack("!H", head)[0])

        with conn, contextlib.suppress(OSError):
            conn.settimeout(10.0)
            while not stopping.is_set():
                query = read_message(conn)
                started = time.monotonic()
                with socket.create_connection(self.upstream, timeout=5.0) as up:
                    up.sendall(query)
                    answer = read_message(up)
                if not self._hold(started, stopping):
                    return
                conn.sendall(answer)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


# --- a policy host that misbehaves -------------------------------------------


@dataclass
class Exchange:
    """One connection to the faulty policy host, as the server saw it."""

    mode: str
    opened: float
    host: str = ""
    ended: float | None = None
    sent: int = 0
    outcome: str = "open"

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.opened


class FaultyPolicyHost:
    """
    HTTPS on ``address``:443 with the test CA, serving ``bodies`` (policy
    host name -> policy) by ``mode``: ``serve`` answers at once; ``slow``
    answers after ``slow_delay``; ``slowloris`` sends the response one byte
    a second; ``endless`` streams a body that never ends. ``stop()`` closes
    the listener (connections are refused). Each connection is recorded in
    ``exchanges``, with whether the client gave up (``peer closed``) and when.
    """

    def __init__(self, address: str, pair: Pair, slow_delay: float) -> None:
        self.address = address
        self.port = POLICY_PORT
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(str(pair.cert), str(pair.key))
        self.slow_delay = slow_delay
        self.bodies: dict[str, bytes] = {}
        self.mode = "serve"
        self.exchanges: list[Exchange] = []
        self._stopping = threading.Event()
        self._accepting: threading.Thread | None = None

    def start(self) -> None:
        ensure_free(self.address, self.port, "the faulty policy host of test_faults.py")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, self.port))
        sock.listen(32)
        self._stopping = threading.Event()
        self._accepting = threading.Thread(
            target=self._accept, args=(sock, self._stopping), daemon=True
        )
        self._accepting.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._accepting is not None:
            self._accepting.join(5.0)
            self._accepting = None

    def for_host(self, host: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.host == host]

    def _accept(self, sock: socket.socket, stopping: threading.Event) -> None:
        with sock:
            while not stopping.is_set():
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                conn, _ = sock.accept()
                exchange = Exchange(self.mode, time.monotonic())
                self.exchanges.append(exchange)
                threading.Thread(
                    target=self._serve, args=(conn, exchange, stopping), daemon=True
                ).start()

    def _serve(self, conn: socket.socket, exchange: Exchange,
               stopping: threading.Event) -> None:
        try:
            # A client that stops reading cannot block a write for long.
            conn.settimeout(5.0)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = tls.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed before the request ended")
                    request += chunk
                for line in request.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"host":
                        exchange.host = value.strip().decode("ascii", "replace")
                exchange.outcome = self._respond(tls, exchange, stopping)
        except (OSError, ValueError) as e:
            exchange.outcome = "peer closed" if _is_peer_gone(e) else f"error: {e!r}"
        finally:
            exchange.ended = time.monotonic()
            conn.close()

    def _respond(self, tls: ssl.SSLSocket, exchange: Exchange,
                 stopping: threading.Event) -> str:
        body = self.bodies.get(exchange.host)
        if body is None:
            response = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        else:
            response = (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
        mode = exchange.mode
        if mode == "slow" and _peer_closed_within(tls, self.slow_delay, stopping):
            return "peer closed"
        if mode in ("serve", "slow"):
            tls.sendall(response)
            exchange.sent = len(response)
            return "answered"
        if mode == "slowloris":
            for byte in response:
                tls.sendall(bytes([byte]))
                exchange.sent += 1
                if _peer_closed_within(tls, 1.0, stopping):
                    return "peer closed"
            return "answered"
        assert mode == "endless", mode
        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        line = b"x-padding: " + b"a" * 4000 + b"\n"
        while not stopping.is_set():
            tls.sendall(line)
            exchange.sent += len(line)
        return "stopped by the test"


def _peer_closed_within(tls: ssl.SSLSocket, seconds: float, stopping: threading.Event) -> bool:
    """Whether the client closed the connection within ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stopping.is_set():
            raise ConnectionAbortedError("stopped by the test")
        if select.select([tls], [], [], min(left, 0.1))[0]:
            try:
                return not tls.recv(1)
            except (OSError, ValueError):
                return True
    return False


def _is_peer_gone(error: BaseException) -> bool:
    return isinstance(error, (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError,
                              ssl.SSLZeroReturnError)) or "EOF" in str(error)


@dataclass(frozen=True)
class FaultDomains:
    """The domains of one HTTPS fault: one cached before it, one first asked during it."""

    kind: str

    @property
    def kept(self) -> str:
        return f"kept-{self.kind}.test"

    @property
    def new(self) -> str:
        return f"new-{self.kind}.test"


def _fault_records() -> dict[str, list[str]]:
    records: dict[str, list[str]] = {}
    for kind in HTTPS_FAULTS:
        names = FaultDomains(kind)
        for domain in (names.kept, names.new):
            label = domain[: -len(".test")]
            records[f"_mta-sts.{label}"] = txt(1)
            records[f"mta-sts.{label}"] = [f"A {FAULTY_POLICY_ADDRESS}"]
            records[label] = [f"MX 10 mx1.{domain}."]
            records[f"mx1.{label}"] = ["A 127.0.0.1"]
    return records


@pytest.fixture(scope="module")
def faulty_host(world: World) -> Iterator[FaultyPolicyHost]:
    """The faulty policy host, with its domains published in the test zone."""
    hosts = [
        f"mta-sts.{d}" for kind in HTTPS_FAULTS
        for d in (FaultDomains(kind).kept, FaultDomains(kind).new)
    ]
    pair = world.ca.issue(hosts, label="faulty-policy-host")
    host = FaultyPolicyHost(FAULTY_POLICY_ADDRESS, pair, slow_delay=FETCH_TIMEOUT + 2.0)
    records = _fault_records()
    world.nsd.update(records)
    host.start()
    try:
        yield host
    finally:
        host.stop()
        world.nsd.update({owner: [] for owner in records})


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module's own, which its test stops and starts again."""
    if not os.access(REDIS_SERVER, os.X_OK) or not os.access(REDIS_CLI, os.X_OK):
        pytest.fail(f"{REDIS_SERVER} and {REDIS_CLI} are needed (Debian package redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("faults-redis"))
    server.start()
    yield server
    server.stop()


class FaultTestCase(IntegrationTestCase):
    """Daemons with short deadlines, and the checks every fault test makes."""

    def faulty_daemon(self, *overrides: Mapping[str, Mapping[str, Any]],
                      state: Path | None = None) -> Daemon:
        base = {
            "lookup": {"deadline": LOOKUP_DEADLINE},
            "mta_sts": {"fetch_timeout": FETCH_TIMEOUT},
            "store": {"flush_interval": 0.2},
        }
        return self.start_daemon(state, base, *overrides)

    def assertAtOnce(self, daemon: Daemon, key: str, expected: str) -> None:
        """``key`` is answered ``expected`` from memory, without waiting on anything."""
        answer, seconds = timed_reply(daemon, key)
        self.assertEqual(answer, expected, key)
        self.assertLess(seconds, AT_ONCE, f"{key} took {seconds:.2f} s")

    def assertWithinDeadline(self, daemon: Daemon, key: str, expected: str) -> None:
        """A first lookup is answered ``expected`` no later than the lookup deadline."""
        answer, seconds = timed_reply(daemon, key)
        self.assertEqual(answer, expected, key)
        self.assertLess(seconds, LOOKUP_DEADLINE + SLACK, f"{key} took {seconds:.2f} s")

    def assertEventually(self, daemon: Daemon, key: str, expected: str,
                         timeout: float = 10.0) -> None:
        seen: list[str] = []

        def answered() -> bool:
            seen.append(reply(daemon, key))
            return seen[-1] == expected

        try:
            wait_until(answered, timeout, f"{key} to be answered {expected!r}", interval=0.2)
        except TimeoutError:
            self.fail(f"{key}: never {expected!r} within {timeout} s; saw {sorted(set(seen))}")

    def assertAlive(self, daemon: Daemon, fds: int | None = None) -> None:
        """Running, no traceback logged, and (given the count before the fault) no leaked descriptors."""
        self.assertTrue(daemon.running(), "the daemon is still running")
        self.assertEqual(log_lines(daemon, "Traceback"), [], "no traceback in the log")
        if fds is not None:
            # Sockets of the fault's queries and fetches close as they end.
            wait_until(lambda: open_fds(daemon) <= fds + 2, 5.0,
                       f"{daemon.directory.name} to close what the fault left open "
                       f"(had {fds} descriptors before it)")


# --- the resolver -------------------------------------------------------------


class ResolverFaultTests(FaultTestCase):
    """The resolver behind a relay the test can stop or slow down."""

    relay: DnsRelay

    def setUp(self) -> None:
        self.relay = DnsRelay(self.world.resolver)
        self.relay.start()
        self.addCleanup(self.relay.stop)

    def daemons(self) -> tuple[Daemon, Daemon]:
        """One daemon with DANE, one without, both asking the relay."""
        dane = self.faulty_daemon(self.relay.config())
        sts = self.faulty_daemon(self.relay.config(), self.world.no_dane_config())
        return dane, sts

    def warm(self, dane: Daemon, sts: Daemon) -> tuple[int, int]:
        """Cache a few domains; the daemons' descriptor counts afterwards."""
        self.assertEqual(reply(dane, "enforce.test"), ok(ENFORCE))
        self.assertEqual(reply(dane, "daneonly.test"), "OK dane-only")
        self.assertEqual(reply(sts, "enforce.test"), ok(ENFORCE))
        time.sleep(0.2)
        return open_fds(dane), open_fds(sts)

    def assertCachedAnswers(self, dane: Daemon, sts: Daemon, seconds: float) -> None:
        """
        For ``seconds`` (past every TTL floor, so each lookup of a due domain
        starts a re-check that fails) the cached answers come at once, unchanged.
        """
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.assertAtOnce(dane, "enforce.test", ok(ENFORCE))
            self.assertAtOnce(dane, "daneonly.test", "OK dane-only")
            self.assertAtOnce(sts, "enforce.test", ok(ENFORCE))
            time.sleep(0.25)

    def assertUncachedSafe(self, dane: Daemon, sts: Daemon) -> None:
        """
        A domain first asked while the resolver fails: TEMP with DANE on
        (its DANE state is unknown), NOTFOUND with MTA-STS alone, both within
        the lookup deadline, and still so once the evaluation has ended.
        """
        answer, seconds = timed_reply(dane, "danesome.test")
        self.assertTrue(answer.startswith("TEMP "), answer)
        self.assertLess(seconds, LOOKUP_DEADLINE + SLACK)
        self.assertWithinDeadline(sts, "crlf.test", NOTFOUND)
        wait_for_log(dane, "DANE evaluation of danesome.test failed", "answering TEMP")
        wait_for_log(sts, "MTA-STS discovery for crlf.test failed", "no cached policy")
        self.assertTrue(reply(dane, "danesome.test").startswith("TEMP "))
        self.assertEqual(reply(sts, "crlf.test"), NOTFOUND)

    def assertRecovered(self, dane: Daemon, sts: Daemon, fds: tuple[int, int]) -> None:
        """Fresh evaluations succeed again, with no restart and nothing left open."""
        self.assertEventually(dane, "danesome.test", "OK dane")
        self.assertEventually(sts, "crlf.test", ok(enforce_answer(mx_of("crlf.test"))))
        self.assertEqual(reply(dane, "notlsasts.test"),
                         ok(enforce_answer(mx_of("notlsasts.test"))))
        for daemon, before in zip((dane, sts), fds):
            self.assertAlive(daemon, before)

    def test_resolver_gone(self) -> None:
        """Nothing listening at the resolver: cached answers at once, new domains TEMP / NOTFOUND, then recovery."""
        dane, sts = self.daemons()
        fds = self.warm(dane, sts)
        self.relay.stop()
        self.assertCachedAnswers(dane, sts, 1.5)
        self.assertUncachedSafe(dane, sts)
        self.relay.start()
        self.assertRecovered(dane, sts, fds)

    def test_resolver_slow(self) -> None:
        """Every DNS answer 0.6 s late: cached answers at once, new domains TEMP / NOTFOUND at the deadline, then their real answers."""
        dane, sts = self.daemons()
        fds = self.warm(dane, sts)
        self.relay.delay = 0.6
        self.assertCachedAnswers(dane, sts, 1.5)
        answer, seconds = timed_reply(dane, "danesome.test")
        self.assertTrue(answer.startswith("TEMP "), answer)
        self.assertGreater(seconds, LOOKUP_DEADLINE - 0.1, "it waited for the evaluation")
        self.assertLess(seconds, LOOKUP_DEADLINE + SLACK)
        self.assertWithinDeadline(sts, "crlf.test", NOTFOUND)
        self.assertTrue(log_lines(dane, "First evaluation of danesome.test still running"))
        # Slow answers still count: the evaluations finish, still slow.
        self.assertEventually(dane, "danesome.test", "OK dane")
        self.assertEventually(sts, "crlf.test", ok(enforce_answer(mx_of("crlf.test"))))
        self.relay.delay = 0.0
        self.assertRecovered(dane, sts, fds)


# --- the policy host ----------------------------------------------------------


class HttpsFaultTests(FaultTestCase):
    """The policy host of some domains refuses, stalls, trickles or never ends."""

    host: FaultyPolicyHost

    @pytest.fixture(autouse=True)
    def _host(self, faulty_host: FaultyPolicyHost) -> None:
        self.host = faulty_host

    def publish_id(self, ids: dict[str, int]) -> None:
        """New policy ids, returning once the resolver sees them (unbound caches 1 s)."""
        self.world.nsd.update({f"_mta-sts.{d[: -len('.test')]}": txt(i) for d, i in ids.items()})

        def seen() -> bool:
            return all(
                self.rdata(self.resolve(f"_mta-sts.{d}", "TXT"), "TXT") == [f'"v=STSv1; id={i}"']
                for d, i in ids.items()
            )

        wait_until(seen, 5.0, f"unbound to serve the policy ids {ids}", interval=0.1)

    def check(self, kind: str, error: str, fault: Callable[[], Any],
              repair: Callable[[], Any]) -> None:
        names = FaultDomains(kind)
        kept, new = names.kept, names.new
        before = ok(enforce_answer(mx_of(kept)))
        after = ok(enforce_answer([f"mx2.{kept}"]))
        host = self.host
        host.mode = "serve"
        for domain in (kept, new):
            host.bodies[f"mta-sts.{domain}"] = policy("enforce", mx_of(domain)).encode()
        daemon = self.faulty_daemon()
        self.assertEqual(reply(daemon, kept), before)
        checked = time.monotonic()
        fds = open_fds(daemon)

        # The fault, and a new policy id for the cached domain: the daemon
        # wants to fetch it (the TXT TTL floor is 1 s).
        host.bodies[f"mta-sts.{kept}"] = policy("enforce", [f"mx2.{kept}"]).encode()
        fault()
        try:
            self.publish_id({kept: 2})
            time.sleep(max(0.0, checked + 1.1 - time.monotonic()))  # past the TTL floor
            started = time.monotonic()
            self.assertAtOnce(daemon, kept, before)  # starts the refetch
            self.assertWithinDeadline(daemon, new, NOTFOUND)
            wait_for_log(daemon, f"MTA-STS policy fetch for {kept} (id 2) failed",
                         error, "keeping the cached enforce policy", timeout=FETCH_TIMEOUT + 5)
            # (The exchanges below pin the fetch deadline down more closely.)
            self.assertLess(time.monotonic() - started, FETCH_TIMEOUT + SLACK + 1.0,
                            "the fetch ended by its deadline")
            wait_for_log(daemon, f"MTA-STS policy fetch for {new} (id 1) failed", error,
                         "no cached policy, treating as no MTA-STS", timeout=FETCH_TIMEOUT + 5)
            # Never weakened: the cached policy stands, the new domain is NOTFOUND.
            while time.monotonic() < started + FETCH_TIMEOUT + 0.5:
                self.assertAtOnce(daemon, kept, before)
                self.assertAtOnce(daemon, new, NOTFOUND)
                time.sleep(0.2)
            self.assertEqual(log_lines(daemon, "weakened"), [])
            for domain in (kept, new):
                exchanges = host.for_host(f"mta-sts.{domain}")[1 if domain == kept else 0:]
                if kind == "dead":
                    self.assertEqual(exchanges, [], "connections are refused")
                    continue
                self.assertEqual(len(exchanges), 1, exchanges)
                wait_until(lambda: exchanges[0].ended is not None, 5.0, "the connection to end")
                self.assertEqual(exchanges[0].outcome, "peer closed", exchanges[0])
                self.assertLess(exchanges[0].seconds, FETCH_TIMEOUT + SLACK,
                                "the daemon hung up by its deadline")
        finally:
            repair()
        host.mode = "serve"
        # RFC 8461 s3.3: no new fetch of a failed policy id for 5 minutes; a
        # new id is fetched at once, and so the recovery shows.
        self.publish_id({kept: 3, new: 2})
        self.assertEventually(daemon, kept, after)
        self.assertEventually(daemon, new, ok(enforce_answer(mx_of(new))))
        self.assertAlive(daemon, fds)

    def test_https_refused(self) -> None:
        """Policy host refusing connections: the cached policy is kept, a new domain is NOTFOUND, then fetched."""
        self.check("dead", "cannot connect", self.host.stop, self.host.start)

    def test_https_slow(self) -> None:
        """Policy host answering after the fetch timeout: the daemon hangs up at its deadline."""
        self.check("slow", "no complete response within",
                   lambda: setattr(self.host, "mode", "slow"), lambda: None)

    def test_https_slowloris(self) -> None:
        """Policy host sending its response a byte a second: cut off at the fetch deadline."""
        self.check("slowloris", "no complete response within",
                   lambda: setattr(self.host, "mode", "slowloris"), lambda: None)

    def test_https_endless_body(self) -> None:
        """Policy host streaming a body that never ends: cut off at the size cap."""
        self.check("endless", "byte limit",
                   lambda: setattr(self.host, "mode", "endless"), lambda: None)


# --- the SQLite store -----------------------------------------------------------


def stored_domains(path: Path) -> dict[str, str]:
    """Domain -> state JSON, read from the store file (WAL included)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT domain, state FROM domains").fetchall())
    finally:
        db.close()


class SQLiteFaultTests(FaultTestCase):

    def tmpfs(self, size: str) -> Path:
        directory = self.world.directory / "tmpfs" / self.id().rsplit(".", 1)[-1]
        directory.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                            str(directory)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs ({r.stderr.strip()}): needs CAP_SYS_ADMIN")
        self.addCleanup(subprocess.run, ["umount", "-l", str(directory)], check=False)
        return directory

    def test_disk_full(self) -> None:
        """A full disk under the store: answers from memory, one log line, then the writes land."""
        disk = self.tmpfs("1m")
        store = disk / "mxpolicyd.sqlite"
        daemon = self.faulty_daemon({"store": {"path": str(store), "flush_interval": 0.2}})
        self.addCleanup(daemon.stop)  # before the unmount
        self.assertEqual(reply(daemon, "enforce.test"), ok(ENFORCE))
        wait_until(lambda: "enforce.test" in stored_domains(store), 5.0, "the first write")
        filler = disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
        late = ["crlf.test", "split.test", "cname.test", "othertxt.test"]
        for domain in late:
            self.assertEqual(reply(daemon, domain), ok(enforce_answer(mx_of(domain))))
        wait_for_log(daemon, "Cannot write", str(store), "disk is full")
        time.sleep(2.0)  # ten more flushes, all failing
        for domain in ["enforce.test"] + late:
            self.assertAtOnce(daemon, domain, ok(enforce_answer(mx_of(domain))))
        self.assertEqual(len(log_lines(daemon, "Cannot write")), 1, "one log line per outage")
        self.assertAlive(daemon)
        filler.unlink()
        wait_for_log(daemon, "Wrote", str(store), "again")
        self.assertLessEqual(set(late), set(stored_domains(store)))
        self.assertAlive(daemon)

    def corrupt_start(self, state: Path, damage: Callable[[Path], object]) -> Daemon:
        """Damage the store file, start a daemon on it: it must start and evaluate afresh."""
        store = state / "mxpolicyd.sqlite"
        damage(store)
        damaged = store.read_bytes()
        daemon = self.faulty_daemon(state=state)
        lines = log_lines(daemon, "is unreadable", str(store), "corrupt-")
        self.assertEqual(len(lines), 1, daemon.log_text())
        aside = Path(lines[0].split("moving it to ")[1].split(" ")[0])
        self.assertEqual(aside.read_bytes(), damaged, "the damaged file is kept for a post-mortem")
        fetches = len(self.world.nginx.requests_for("enforce.test"))
        self.assertEqual(reply(daemon, "enforce.test"), ok(ENFORCE))
        self.assertEqual(len(self.world.nginx.requests_for("enforce.test")), fetches + 1,
                         "evaluated afresh")
        wait_until(lambda: "enforce.test" in stored_domains(store), 5.0, "a write to the new file")
        self.assertAlive(daemon)
        return daemon

    def test_garbage_store(self) -> None:
        """A store file of garbage bytes is moved aside, logged, and the daemon evaluates afresh."""
        state = self.world.directory / "garbage-state"
        state.mkdir()
        self.corrupt_start(state, lambda p: p.write_bytes(os.urandom(8192)))

    def test_truncated_store(self) -> None:
        """A real store cut short is moved aside, logged, and the daemon evaluates afresh."""
        first = self.faulty_daemon()
        state = first.directory / "state"
        domains = ["crlf.test", "split.test", "cname.test", "othertxt.test", "enforce.test"]
        for domain in domains:
            self.assertEqual(reply(first, domain), ok(enforce_answer(mx_of(domain))))
        self.assertEqual(first.stop(), 0)
        store = state / "mxpolicyd.sqlite"
        self.assertEqual(set(stored_domains(store)), set(domains))
        # Grown to a store of many pages, with copies of the daemon's rows.
        db = sqlite3.connect(store)
        rows = db.execute("SELECT domain, state, updated, used FROM domains").fetchall()
        db.executemany("INSERT INTO domains VALUES (?, ?, ?, ?)",
                       [(f"copy{i}.{r[0]}", *r[1:]) for i in range(100) for r in rows])
        db.commit()
        db.close()

        def truncate(path: Path) -> None:
            data = path.read_bytes()
            self.assertGreater(len(data), 100 * 4096, "a store of many pages")
            path.write_bytes(data[: len(data) // 2])

        self.corrupt_start(state, truncate)

    def test_kill_during_writes(self) -> None:
        """kill -9 amid heavy writes: the file passes integrity_check and flushed policies answer at once after restart."""
        first = self.faulty_daemon({"store": {"flush_interval": 0.05},
                                    "lookup": {"max_evaluations": 200}})
        state = first.directory / "state"
        store = state / "mxpolicyd.sqlite"
        cached = ["enforce.test", "crlf.test", "split.test"]
        for domain in cached:
            self.assertEqual(reply(first, domain), ok(enforce_answer(mx_of(domain))))
        wait_until(lambda: set(cached) <= set(stored_domains(store)), 5.0, "the first writes")

        stop = threading.Event()

        def load(worker: int) -> None:
            # Until the kill resets the connection.
            with contextlib.suppress(OSError), \
                    socket.create_connection(first.tcp_address, timeout=10.0) as s:
                for i in range(2000):
                    if stop.is_set():
                        return
                    s.sendall(netstring(b"postfix bulk%d-%d.nx.test" % (worker, i)))
                    if not s.recv(4096):
                        return

        workers = [threading.Thread(target=load, args=(w,), daemon=True) for w in range(6)]
        for worker in workers:
            worker.start()
        try:
            counts = [len(stored_domains(store))]

            def written() -> bool:
                counts.append(len(stored_domains(store)))
                return counts[-1] > counts[0] + 150

            wait_until(written, 20.0, "150 states written under load", interval=0.1)
            assert first.process is not None
            first.process.kill()
            first.process.wait(5.0)
        finally:
            stop.set()
            for worker in workers:
                worker.join(10.0)
        flushed = counts[-1]
        db = sqlite3.connect(store)
        try:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchall(), [("ok",)])
            rows = db.execute("SELECT count(*) FROM domains").fetchone()[0]
        finally:
            db.close()
        self.assertGreaterEqual(rows, flushed, "every state seen flushed before the kill is there")

        # The resolver is dead: only the store can answer.
        second = self.faulty_daemon(self.world.dead_dns_config(), state=state)
        for domain in cached:
            self.assertAtOnce(second, domain, ok(enforce_answer(mx_of(domain))))
        wait_for_log(second, f"Loaded {rows} domains")
        self.assertEqual(log_lines(second, "unreadable"), [])
        self.assertAlive(second)


# --- Redis -------------------------------------------------------------------


class RedisFaultTests(FaultTestCase):

    redis: RedisServer

    def test_redis_down_and_back(self) -> None:
        """Redis gone: cached answers go on, writes fail with one log line; back: reconnect and the writes land."""
        redis: RedisServer = self.redis
        prefix = "faults:"
        daemon = self.faulty_daemon({"store": {"backend": "redis", "redis": redis.endpoint,
                                               "key_prefix": prefix, "flush_interval": 0.2}})
        self.assertEqual(reply(daemon, "enforce.test"), ok(ENFORCE))
        wait_until(lambda: redis.state(f"{prefix}d:enforce.test") is not None, 5.0,
                   "the state in Redis")
        redis.stop()
        try:
            late = "crlf.test"
            self.assertEqual(reply(daemon, late), ok(enforce_answer(mx_of(late))))
            wait_for_log(daemon, "unreachable", "keeping")
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                self.assertAtOnce(daemon, "enforce.test", ok(ENFORCE))
                self.assertAtOnce(daemon, late, ok(enforce_answer(mx_of(late))))
                time.sleep(0.2)
            self.assertEqual(len(log_lines(daemon, "unreachable")), 1, "one log line per outage")
            self.assertAlive(daemon)
        finally:
            redis.start()
        wait_for_log(daemon, "is back; wrote", timeout=15.0)
        self.assertIsNotNone(redis.state(f"{prefix}d:{late}"))
        # And new states keep landing.
        self.assertEqual(reply(daemon, "split.test"), ok(enforce_answer(mx_of("split.test"))))
        wait_until(lambda: redis.state(f"{prefix}d:split.test") is not None, 5.0,
                   "a new state in Redis")
        self.assertAlive(daemon)

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server: RedisServer) -> None:
        self.redis = redis_server
