"""
Hostile clients against a real daemon (issue 14, items 1 and 5): clients
that pipeline requests and never read the replies, on the socketmap, Exim
and control listeners; clients that drip a request one byte a second; and
silent clients holding the control socket's few connection slots.  Each
test measures the daemon's RSS (/proc/PID/status) or how long it holds a
connection, and the latency of a normal client's lookups meanwhile.

Run with ``-s`` to see the measurements.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .case import IntegrationTestCase
from .daemon import Daemon
from .scenarios import ENFORCE, mx_of, tlsrpt_answer
from .servers import free_port, wait_until
from .world import World

pytestmark = pytest.mark.integration

MB = 1000 * 1000
MiB = 1024 * 1024
MAX_CONNECTIONS = 20
REQUEST_TIMEOUT = 2.0
IDLE_TIMEOUT = 10.0
# What a client pipelines, at most: far more than any buffer.
FLOOD = 64 * MiB
# An administrator's forced answer with many MX patterns: a reply of 6 KB
# for a request of 21 bytes.
LONG_DOMAIN = "long.test"
LONG = "secure match=%s servername=hostname" % ":".join(
    f"mx{i}.{LONG_DOMAIN}" for i in range(400))
CONTROL_LIMIT = 16
CONTROL_TIMEOUT = 10.0


def netstring(text: str) -> bytes:
    data = text.encode()
    return b"%d:%s," % (len(data), data)


def rss(pid: int) -> int:
    """The resident set of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def abort_close(sock: socket.socket) -> None:
    """Close with a reset: nothing unsent lingers in the kernel for the next test."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


# The other client, in a process of its own so that the test's busy loops do
# not delay it: over one persistent connection, as Postfix keeps, a lookup
# every 20 ms until its stdin closes; then its latencies and failures as JSON.
PROBE = r"""
import json, select, socket, sys, time
host, port, request, reply = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4].encode()
latencies, failures, sock = [], [], None
deadline = time.monotonic() + 60
print("ready", flush=True)
while time.monotonic() < deadline and not select.select([sys.stdin], [], [], 0.02)[0]:
    started = time.monotonic()
    try:
        if sock is None:
            sock = socket.create_connection((host, port), timeout=2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        data = b""
        while len(data) < len(reply):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the daemon")
            data += chunk
        if data != reply:
            raise ValueError("unexpected reply %r" % data[:80])
    except (OSError, ValueError) as e:
        failures.append("%s: %s" % (e.__class__.__name__, e))
        if sock is not None:
            sock.close()
        sock = None
        continue
    latencies.append(time.monotonic() - started)
print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)
"""


class Monitor:
    """
    Until stopped: the daemon's RSS (first sample and peak), sampled in a
    thread, and the latencies of another client's lookups of a cached
    domain (PROBE).
    """

    def __init__(self, daemon: Daemon, key: str = "enforce.test",
                 expected: str = "OK " + ENFORCE, probe: bool = True) -> None:
        assert daemon.process is not None
        self.pid = daemon.process.pid
        self.base = rss(self.pid)
        self.peak = self.base
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._probe: subprocess.Popen[str] | None = None
        if probe:
            host, port = daemon.tcp_address
            self._probe = subprocess.Popen(
                [sys.executable, "-c", PROBE, host, str(port),
                 netstring("postfix " + key).decode(), netstring(expected).decode()],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert self._probe.stdout is not None
            assert self._probe.stdout.readline() == "ready\n"
            # The probe's connection is open and answered before anything else.
            time.sleep(0.1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def growth(self) -> int:
        return self.peak - self.base

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.peak = max(self.peak, rss(self.pid))
            self._stop.wait(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._probe is not None:
            out, _ = self._probe.communicate("stop\n", timeout=10)
            result = json.loads(out)
            self.latencies, self.failures = result["latencies"], result["failures"]

    def summary(self) -> str:
        worst = max(self.latencies, default=float("nan")) * 1000
        return (f"RSS {self.base / MiB:.1f} MiB before, {self.peak / MiB:.1f} MiB at peak "
                f"(+{self.growth / MB:.1f} MB); {len(self.latencies)} lookups by another "
                f"client, slowest {worst:.1f} ms, {len(self.failures)} failed")


def flood(sockets: list[socket.socket], data: bytes, total: int, seconds: float,
          give_up: Callable[[], bool], stall: float = 1.0) -> list[int]:
    """
    Send ``data`` over and over on every socket, never reading, until each
    has sent ``total`` bytes, or nothing was taken for ``stall`` seconds,
    or ``seconds`` have passed, or ``give_up()``; the bytes sent on each.
    """
    chunk = data * max(1, 65536 // len(data))
    sent = {s: 0 for s in sockets}
    sel = selectors.DefaultSelector()
    for s in sockets:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_WRITE)
    end = time.monotonic() + seconds
    progress = time.monotonic()
    try:
        while sel.get_map() and time.monotonic() < end and not give_up():
            if time.monotonic() - progress > stall:
                break
            for key, _ in sel.select(timeout=0.1):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    n = conn.send(chunk)
                except BlockingIOError:
                    continue
                except OSError:
                    sel.unregister(conn)
                    continue
                sent[conn] += n
                progress = time.monotonic()
                if sent[conn] >= total:
                    sel.unregister(conn)
    finally:
        sel.close()
    return [sent[s] for s in sockets]


@pytest.fixture(scope="module")
def hostile_daemon(world: World) -> Iterator[Daemon]:
    """
    One daemon with few socketmap connections (so that every one can be
    hostile in a short test), a short request deadline, and a domain with a
    long forced answer; both it and enforce.test (the other client's
    lookups) cached.
    """
    d = world.new_daemon(None, {
        "socketmap": {"max_connections": MAX_CONNECTIONS, "idle_timeout": IDLE_TIMEOUT,
                      "request_timeout": REQUEST_TIMEOUT},
        f'domain."{LONG_DOMAIN}"': {"postfix": LONG},
    }).start()
    try:
        wait_until(lambda: d.postmap("enforce.test").stdout == ENFORCE + "\n", 15,
                   "enforce.test cached")
        wait_until(lambda: d.postmap("enforce.test", "postfix-tlsrpt").code == 0, 15,
                   "enforce.test cached for postfix-tlsrpt")
        # Cached too: pipelined requests for a domain still being evaluated
        # are refused as data sent ahead of the reply, not back-pressured.
        wait_until(lambda: d.postmap(LONG_DOMAIN).stdout == LONG + "\n", 15,
                   f"{LONG_DOMAIN} cached")
        yield d
    finally:
        d.stop()


def connect(daemon: Daemon) -> socket.socket:
    return socket.create_connection(daemon.tcp_address, timeout=5)


class HostileTestCase(IntegrationTestCase):
    """The module's daemon as C{self.daemon}."""

    @pytest.fixture(autouse=True)
    def _hostile(self, hostile_daemon: Daemon) -> None:
        self.daemon = hostile_daemon

    def assertAnsweredWithin(self, monitor: Monitor, seconds: float) -> None:
        self.assertEqual(monitor.failures, [])
        self.assertTrue(monitor.latencies, "no lookup by the other client")
        self.assertLess(max(monitor.latencies), seconds, monitor.summary())


class PipeliningTests(HostileTestCase):
    """Clients that pipeline socketmap requests and never read the replies."""

    def pipeline_one(self, name: str, key: str, reply: str) -> None:
        # The daemon answers what the test thinks it does.
        with connect(self.daemon) as s:
            s.sendall(netstring(f"{name} {key}"))
            data = b""
            while len(data) < len(netstring(reply)):
                chunk = s.recv(65536)
                self.assertTrue(chunk, "closed by the daemon")
                data += chunk
            self.assertEqual(data, netstring(reply))
        monitor = Monitor(self.daemon)
        attacker = connect(self.daemon)
        try:
            [sent] = flood([attacker], netstring(f"{name} {key}"), FLOOD, 8.0,
                           lambda: monitor.growth > 4 * 32 * MB)
            time.sleep(0.5)  # the daemon paused: others are answered meanwhile
        finally:
            monitor.stop()
            abort_close(attacker)
        print(f"\none connection pipelining {name} {key} ({len(netstring(reply))}-byte "
              f"replies): {sent / MiB:.1f} MiB of requests taken; {monitor.summary()}")
        self.assertLessEqual(monitor.growth, 32 * MB, monitor.summary())
        self.assertLess(sent, FLOOD, "the daemon read every byte: no back-pressure")
        self.assertAnsweredWithin(monitor, 0.1)
        self.assertTrue(self.daemon.running())

    def test_long_answer(self) -> None:
        """64 MiB of requests for a 6 KB answer on one connection: RSS grows by 32 MB at most, others answered in 100 ms."""
        self.pipeline_one("postfix", LONG_DOMAIN, "OK " + LONG)

    def test_tlsrpt_answer(self) -> None:
        """The same for enforce.test's TLSRPT answer, as evaluated from DNS and HTTPS."""
        self.pipeline_one("postfix-tlsrpt", "enforce.test",
                          "OK " + tlsrpt_answer("enforce.test", mx_of("enforce.test")))

    def test_every_connection(self) -> None:
        """Every connection but the other client's pipelining: RSS grows by 64 MB at most, others answered in 100 ms."""
        monitor = Monitor(self.daemon)
        # The monitor's connection is the last of max_connections.
        attackers = [connect(self.daemon) for _ in range(MAX_CONNECTIONS - 1)]
        try:
            sent = flood(attackers, netstring(f"postfix {LONG_DOMAIN}"), FLOOD, 10.0,
                         lambda: monitor.growth > 4 * 64 * MB)
            time.sleep(0.5)
        finally:
            monitor.stop()
            for s in attackers:
                abort_close(s)
        print(f"\n{len(attackers)} connections pipelining postfix {LONG_DOMAIN}: "
              f"{sum(sent) / MiB:.1f} MiB of requests taken in all; {monitor.summary()}")
        self.assertLessEqual(monitor.growth, 64 * MB, monitor.summary())
        self.assertAnsweredWithin(monitor, 0.1)
        self.assertTrue(self.daemon.running())


def drip(sockets: list[socket.socket], data: bytes, seconds: float) -> dict[socket.socket, tuple[float, bytes]]:
    """
    Send ``data`` one byte a second on every socket, reading what comes
    back, for at most ``seconds``; when each was closed by the daemon
    (seconds after the first byte) and what it received.
    """
    started = time.monotonic()
    received = {s: b"" for s in sockets}
    closed: dict[socket.socket, tuple[float, bytes]] = {}
    sel = selectors.DefaultSelector()
    for s in sockets:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    try:
        for i in range(int(seconds)):
            for s in sockets:
                if s not in closed and i < len(data):
                    try:
                        s.send(data[i:i + 1])
                    except OSError:
                        pass
            next_byte = started + i + 1
            while len(closed) < len(sockets) and time.monotonic() < next_byte:
                for key, _ in sel.select(timeout=max(0.0, next_byte - time.monotonic())):
                    conn = key.fileobj
                    assert isinstance(conn, socket.socket)
                    try:
                        chunk = conn.recv(65536)
                    except OSError:
                        chunk = b""
                    if chunk:
                        received[conn] += chunk
                        continue
                    closed[conn] = (time.monotonic() - started, received[conn])
                    sel.unregister(conn)
            if len(closed) == len(sockets):
                break
    finally:
        sel.close()
    return closed


class SlowDripTests(HostileTestCase):
    """Clients that send a request one byte a second (slowloris)."""

    def test_one_connection(self) -> None:
        """A request dripped one byte a second is cut off at its deadline with PERM; others are answered in 100 ms."""
        monitor = Monitor(self.daemon)
        dripper = connect(self.daemon)
        try:
            # Longer than the deadline, shorter than the idle timeout.
            closed = drip([dripper], netstring(f"postfix {LONG_DOMAIN}"), IDLE_TIMEOUT - 2)
        finally:
            monitor.stop()
            dripper.close()
        held = closed[dripper][0] if dripper in closed else float("inf")
        print(f"\na connection dripping one byte a second held {held:.1f} s "
              f"(request_timeout {REQUEST_TIMEOUT} s); {monitor.summary()}")
        self.assertIn(dripper, closed, f"still open after {IDLE_TIMEOUT - 2} s")
        self.assertLessEqual(held, REQUEST_TIMEOUT + 1.0)
        self.assertEqual(closed[dripper][1], netstring("PERM no complete request within 2 s"))
        self.assertAnsweredWithin(monitor, 0.1)

    def test_every_connection(self) -> None:
        """max_connections drippers hold the listener no longer than the request deadline."""
        drippers = [connect(self.daemon) for _ in range(MAX_CONNECTIONS)]
        try:
            closed = drip(drippers, netstring(f"postfix {LONG_DOMAIN}"), IDLE_TIMEOUT - 2)
        finally:
            for s in drippers:
                s.close()
        held = sorted(t for t, _ in closed.values())
        print(f"\n{len(drippers)} connections dripping: {len(closed)} cut off, the last "
              f"after {max(held, default=float('nan')):.1f} s")
        self.assertEqual(len(closed), len(drippers), f"{len(drippers) - len(closed)} still open")
        self.assertLessEqual(held[-1], REQUEST_TIMEOUT + 1.5)
        self.assertEqual({r for _, r in closed.values()},
                         {netstring("PERM no complete request within 2 s")})
        # The slots are free again: a normal client is answered.
        monitor = Monitor(self.daemon)
        time.sleep(0.2)
        monitor.stop()
        self.assertAnsweredWithin(monitor, 0.1)


class EximTests(IntegrationTestCase):
    """The Exim listener: one request per connection, and nothing read after it."""

    def test_data_after_request(self) -> None:
        """64 MiB sent after a request whose lookup is slow: not read, RSS grows by 32 MB at most."""
        port = free_port()
        # Every lookup waits out the deadline: the resolver never answers.
        daemon = self.start_daemon(None, self.world.dead_dns_config(), {
            "lookup": {"deadline": 4.0},
            "exim": {"listen": [f"tcp:{port}:interface=127.0.0.1"]},
        })
        monitor = Monitor(daemon, probe=False)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            client.sendall(b"slow.test\n")
            [sent] = flood([client], b"junk.test\n" * 100, FLOOD, 3.0,
                           lambda: monitor.growth > 4 * 32 * MB)
        finally:
            monitor.stop()
            abort_close(client)
        print(f"\nExim client sending after its request: {sent / MiB:.1f} MiB taken; "
              f"{monitor.summary()}")
        self.assertLessEqual(monitor.growth, 32 * MB, monitor.summary())
        # Only the kernel's socket buffers took any of it.
        self.assertLess(sent, 16 * MiB, f"the daemon read {sent / MiB:.1f} MiB after the request")
        self.assertTrue(daemon.running())


class ControlTests(HostileTestCase):
    """The control socket: one command per connection, and a deadline to send it."""

    def control_path(self) -> str:
        return str(Path(self.daemon.config["daemon"]["state_directory"]) / "control.sock")

    def test_silent_connections(self) -> None:
        """16 silent connections: the CLI says the daemon is at its limit; 10 s later commands work again."""
        path = self.control_path()
        silent = []
        for _ in range(CONTROL_LIMIT):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            silent.append(s)
        started = time.monotonic()
        try:
            # Each connection is accepted (and counted) before the CLI's.
            time.sleep(0.3)
            refused = self.daemon.cli("cache", "show", "enforce.test")
            self.assertEqual(refused.returncode, 2, refused)
            self.assertIn("the daemon closed the connection without answering; it may be at "
                          "its limit of 16 control connections", refused.stderr)
            self.assertNotIn("Expecting value", refused.stderr)
            replies = []
            for s in silent:
                s.settimeout(CONTROL_TIMEOUT + 3 - (time.monotonic() - started))
                replies.append(s.recv(4096))
            held = time.monotonic() - started
        finally:
            for s in silent:
                s.close()
        print(f"\n{CONTROL_LIMIT} silent control connections closed after {held:.1f} s")
        self.assertEqual(set(replies), {b'{"error": "no complete request within 10 s"}\n'})
        self.assertLessEqual(held, CONTROL_TIMEOUT + 1.5)
        shown = self.daemon.cli("cache", "show", "enforce.test")
        self.assertEqual(shown.returncode, 0, shown)

    def test_pipelined_commands(self) -> None:
        """Pipelined refresh commands: one is run, the rest not read; RSS grows by 32 MB at most."""
        path = self.control_path()
        before = self.daemon.log_text(10**9).count("Control command")
        monitor = Monitor(self.daemon)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(path)
        try:
            [sent] = flood([client], b'{"command": "refresh", "domain": "enforce.test"}\n',
                           FLOOD, 5.0, lambda: monitor.growth > 4 * 32 * MB)
        finally:
            monitor.stop()
            abort_close(client)
        time.sleep(0.5)
        commands = self.daemon.log_text(10**9).count("Control command") - before
        print(f"\npipelined control commands: {sent / MiB:.1f} MiB taken, {commands} run; "
              f"{monitor.summary()}")
        self.assertLessEqual(monitor.growth, 32 * MB, monitor.summary())
        self.assertEqual(commands, 1)
        self.assertLess(sent, 16 * MiB)
        self.assertAnsweredWithin(monitor, 0.1)
