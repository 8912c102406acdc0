"""
Hostile servers against a real daemon (issue 14, items 2, 6 and 9): a TLS
policy host that streams response headers forever, one that sends a
short-lived policy without Content-Length and drops TCP without TLS
close_notify, and a DNS server whose UDP reply is over 8 KiB without TC (or
comes after a junk datagram with the right id). Each test asserts the bound
or the unchanged answer, and that the daemon still answers others.

The servers are this module's own, threaded, on fixed loopback addresses
(addresses.py): the policy host on 127.0.0.47:443 with a certificate from
the world's test CA, the DNS server on 127.0.0.39:53 (UDP and TCP).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from mxpolicyd.cli import socketmap_request

from .addresses import (
    HOSTILE_DNS_ADDRESS,
    HOSTILE_POLICY_ADDRESS,
    POLICY_PORT,
    ensure_free,
)
from .case import IntegrationTestCase
from .daemon import Daemon
from .pki import Pair
from .scenarios import ENFORCE, enforce_answer, mx_of, policy
from .servers import wait_until
from .world import World

pytestmark = pytest.mark.integration

LOOKUP_DEADLINE = 1.0
# Long enough that a fetch cut at the byte limit is told apart from one
# ended by its deadline.
FETCH_TIMEOUT = 10.0
# An answer from memory: a fresh connection and a dict lookup.
AT_ONCE = 0.5

# Header streams at once (each one fetch), and the growth they may cause.
STREAMS = 6
RSS_BOUND_KIB = 8 * 1024
# Past this the test stops the streams itself, so that a daemon without the
# cap cannot take the machine down; the test then fails.
RSS_CEILING_KIB = 256 * 1024

HEADER_LINE = b"X-Padding: " + b"a" * 4000 + b"\r\n"
# Sent 64 KiB at a time: a stream as fast as this process can push it.
HEADER_CHUNK = HEADER_LINE * 16

STREAM_DOMAINS = [f"streamheaders{i}.test" for i in range(STREAMS)]
CUT_DOMAIN = "cutoff.test"
# Served by the hostile DNS server only.
BIG_TXT_DOMAIN = "bigtxt.test"
JUNK_FIRST_DOMAIN = "junkfirst.test"
PLAIN_DOMAIN = "plain.test"
DNS_DOMAINS = (BIG_TXT_DOMAIN, JUNK_FIRST_DOMAIN, PLAIN_DOMAIN)


def ok(value: str) -> str:
    return "OK " + value


def reply(daemon: Daemon, key: str) -> str:
    """The daemon's raw socketmap reply (``OK ...``, ``NOTFOUND ``, ``TEMP ...``)."""
    data = socketmap_request(socket.AF_INET, daemon.tcp_address, "postfix", key.encode(), 30.0)
    return data.decode("ascii", "replace")


def log_lines(daemon: Daemon, *needles: str) -> list[str]:
    try:
        text = daemon.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if all(n in line for n in needles)]


def wait_for_log(daemon: Daemon, *needles: str, timeout: float) -> None:
    wait_until(lambda: bool(log_lines(daemon, *needles)), timeout,
               f"a log line with {needles!r}", interval=0.05)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssPeak:
    """
    Samples a process's VmRSS every 10 ms in a thread; past ``ceiling`` KiB
    of growth it calls ``on_ceiling`` once.
    """

    def __init__(self, pid: int, ceiling: int, on_ceiling: Any) -> None:
        self.pid = pid
        self.before = rss_kib(pid)
        self.peak = self.before
        self.ceiling_hit = False
        self._ceiling = ceiling
        self._on_ceiling = on_ceiling
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, rss_kib(self.pid))
            if not self.ceiling_hit and self.peak - self.before > self._ceiling:
                self.ceiling_hit = True
                self._on_ceiling()

    @property
    def growth(self) -> int:
        return self.peak - self.before


# --- the policy host ------------------------------------------------------------


@dataclass
class Exchange:
    """One connection to the hostile policy host, as it saw it."""

    opened: float
    host: str = ""
    mode: str = ""
    ended: float | None = None
    sent: int = 0
    outcome: str = "open"

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.opened


class HostilePolicyHost:
    """
    HTTPS on ``address``:443 with the test CA. ``behaviour`` maps a policy
    host name to ``(mode, body)``: ``serve`` answers with Content-Length;
    ``headers`` sends a 200 whose headers never end; ``cut`` sends the body
    without Content-Length and ends TCP with no TLS close_notify;
    ``close_notify`` sends it the same way but ends TLS properly. Clearing
    ``streaming`` ends every header stream.
    """

    def __init__(self, address: str, pair: Pair) -> None:
        self.address = address
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(str(pair.cert), str(pair.key))
        self.behaviour: dict[str, tuple[str, bytes]] = {}
        self.exchanges: list[Exchange] = []
        self.streaming = threading.Event()
        self._stopping = threading.Event()
        self._accepting: threading.Thread | None = None

    def start(self) -> None:
        ensure_free(self.address, POLICY_PORT, "the hostile policy host of test_hostile_servers.py")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, POLICY_PORT))
        sock.listen(32)
        self.streaming.set()
        self._accepting = threading.Thread(target=self._accept, args=(sock,), daemon=True)
        self._accepting.start()

    def stop(self) -> None:
        self._stopping.set()
        self.streaming.clear()
        if self._accepting is not None:
            self._accepting.join(5.0)

    def for_host(self, domain: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.host == f"mta-sts.{domain}"]

    def _accept(self, sock: socket.socket) -> None:
        with sock:
            while not self._stopping.is_set():
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                conn, _ = sock.accept()
                exchange = Exchange(time.monotonic())
                self.exchanges.append(exchange)
                threading.Thread(target=self._serve, args=(conn, exchange), daemon=True).start()

    def _serve(self, conn: socket.socket, exchange: Exchange) -> None:
        try:
            conn.settimeout(5.0)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = tls.recv(4096)
                    if not chunk:
                        raise ConnectionError("closed before the request ended")
                    request += chunk
                for line in request.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"host":
                        exchange.host = value.strip().decode("ascii", "replace")
                exchange.mode, body = self.behaviour.get(exchange.host, ("missing", b""))
                exchange.outcome = self._respond(tls, exchange, body)
        except (OSError, ValueError) as e:
            exchange.outcome = f"peer closed ({type(e).__name__})"
        finally:
            exchange.ended = time.monotonic()
            conn.close()

    def _respond(self, tls: ssl.SSLSocket, exchange: Exchange, body: bytes) -> str:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
        mode = exchange.mode
        if mode == "serve":
            tls.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return "answered"
        if mode == "headers":
            tls.sendall(head)
            while self.streaming.is_set():
                tls.sendall(HEADER_CHUNK)
                exchange.sent += len(HEADER_CHUNK)
            return "stopped streaming"
        if mode in ("cut", "close_notify"):
            tls.sendall(head + b"\r\n" + body)
            exchange.sent = len(body)
            if mode == "cut":
                # A TCP FIN with no close_notify (SSLSocket.shutdown skips TLS).
                tls.shutdown(socket.SHUT_RDWR)
                return "cut"
            with contextlib.suppress(OSError, ValueError):
                tls.unwrap()
            return "closed with close_notify"
        tls.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return "404"


# --- the DNS server -------------------------------------------------------------


class HostileDns:
    """
    DNS on ``address``:53, UDP and TCP, answering from ``zone`` ((name,
    type) -> rdata texts; other types of a known name are NODATA, unknown
    names NXDOMAIN). UDP replies go out whole, however long, without TC;
    for a name in ``junk_first`` a junk datagram with the query's id comes
    0.1 s before the answer. Every query is recorded in ``queries`` as
    (transport, name, type), the last UDP reply for each name in ``udp_replies``.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 53
        self.zone: dict[tuple[str, str], list[str]] = {}
        self.junk_first: set[str] = set()
        self.queries: list[tuple[str, str, str]] = []
        self.udp_replies: dict[str, bytes] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        ensure_free(self.address, self.port, "the hostile DNS server of test_hostile_servers.py",
                    udp=True)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((self.address, self.port))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.address, self.port))
        tcp.listen(16)
        self._threads = [
            threading.Thread(target=self._udp_loop, args=(udp,), daemon=True),
            threading.Thread(target=self._tcp_loop, args=(tcp,), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(5.0)

    def asked(self, transport: str, name: str, rdtype: str) -> bool:
        return (transport, name, rdtype) in self.queries

    def answer(self, transport: str, data: bytes) -> tuple[str, bytes] | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((transport, name, rdtype))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        rdatas = self.zone.get((name, rdtype))
        if rdatas:
            # One RRset per record keeps them in this order on the wire (an
            # RRset's own order is a set's); the client merges them again.
            for rdata in rdatas:
                response.answer.append(dns.rrset.from_text(question.name, 60, "IN", rdtype, rdata))
        elif not any(owner == name for owner, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return name, response.to_wire(max_size=65535)

    def _udp_loop(self, sock: socket.socket) -> None:
        with sock:
            while not self._stopping.is_set():
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                data, client = sock.recvfrom(65535)
                answered = self.answer("udp", data)
                if answered is None:
                    continue
                name, wire = answered
                self.udp_replies[name] = wire
                if name in self.junk_first:
                    # Our id, QR, one answer announced; cut short.
                    junk = data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x04junk"
                    sock.sendto(junk, client)
                    timer = threading.Timer(0.1, sock.sendto, (wire, client))
                    timer.daemon = True
                    timer.start()
                else:
                    sock.sendto(wire, client)

    def _tcp_loop(self, sock: socket.socket) -> None:
        with sock:
            while not self._stopping.is_set():
                if not select.select([sock], [], [], 0.1)[0]:
                    continue
                conn, _ = sock.accept()
                threading.Thread(target=self._tcp_one, args=(conn,), daemon=True).start()

    def _tcp_one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(5.0)
            while not self._stopping.is_set():
                head = _read_exactly(conn, 2)
                answered = self.answer("tcp", _read_exactly(conn, struct.unpack("!H", head)[0]))
                if answered is None:
                    return
                conn.sendall(struct.pack("!H", len(answered[1])) + answered[1])


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def big_txt_rrset(domain: str) -> list[str]:
    """
    About 13 KB of TXT records at ``_mta-sts.<domain>``: 59 that are not
    MTA-STS records, then the one that is, beyond the first 8192 bytes.
    """
    fillers = [f'"filler{i:02d}={"x" * 190}"' for i in range(59)]
    return fillers + ['"v=STSv1; id=1"']


# --- fixtures -------------------------------------------------------------------


def _nsd_records() -> dict[str, list[str]]:
    """The test zone's records of the policy host domains, owners relative to test."""
    records: dict[str, list[str]] = {}
    for domain in [*STREAM_DOMAINS, CUT_DOMAIN]:
        label = domain[: -len(".test")]
        records[f"_mta-sts.{label}"] = ['TXT "v=STSv1; id=1"']
        records[f"mta-sts.{label}"] = [f"A {HOSTILE_POLICY_ADDRESS}"]
    return records


@pytest.fixture(scope="module")
def hostile_servers(world: World) -> Iterator[tuple[HostilePolicyHost, HostileDns]]:
    """Both servers started, their domains published (in nsd, or in the hostile DNS)."""
    domains = [*STREAM_DOMAINS, CUT_DOMAIN, *DNS_DOMAINS]
    pair = world.ca.issue([f"mta-sts.{d}" for d in domains], label="hostile-policy-host")
    host = HostilePolicyHost(HOSTILE_POLICY_ADDRESS, pair)
    resolver = HostileDns(HOSTILE_DNS_ADDRESS)
    for domain in DNS_DOMAINS:
        txt = big_txt_rrset(domain) if domain == BIG_TXT_DOMAIN else ['"v=STSv1; id=1"']
        resolver.zone[(f"_mta-sts.{domain}", "TXT")] = txt
        resolver.zone[(f"mta-sts.{domain}", "A")] = [HOSTILE_POLICY_ADDRESS]
        host.behaviour[f"mta-sts.{domain}"] = ("serve", policy("enforce", mx_of(domain)).encode())
    resolver.junk_first.add(f"_mta-sts.{JUNK_FIRST_DOMAIN}")
    records = _nsd_records()
    world.nsd.update(records)
    with contextlib.ExitStack() as stack:
        stack.callback(world.nsd.update, {owner: [] for owner in records})
        host.start()
        stack.callback(host.stop)
        resolver.start()
        stack.callback(resolver.stop)
        yield host, resolver


class HostileServerTestCase(IntegrationTestCase):

    host: HostilePolicyHost
    dns_server: HostileDns

    @pytest.fixture(autouse=True)
    def _servers(self, hostile_servers: tuple[HostilePolicyHost, HostileDns]) -> None:
        self.host, self.dns_server = hostile_servers

    def hostile_daemon(self, *overrides: Mapping[str, Mapping[str, Any]]) -> Daemon:
        base = {
            "lookup": {"deadline": LOOKUP_DEADLINE},
            "mta_sts": {"fetch_timeout": FETCH_TIMEOUT},
        }
        return self.start_daemon(None, base, self.world.no_dane_config(), *overrides)

    def assertAtOnce(self, daemon: Daemon, key: str, expected: str) -> None:
        started = time.monotonic()
        self.assertEqual(reply(daemon, key), expected, key)
        seconds = time.monotonic() - started
        self.assertLess(seconds, AT_ONCE, f"{key} took {seconds:.2f} s")

    def assertEventually(self, daemon: Daemon, key: str, expected: str,
                         timeout: float = 5.0) -> None:
        seen: list[str] = []

        def answered() -> bool:
            seen.append(reply(daemon, key))
            return seen[-1] == expected

        try:
            wait_until(answered, timeout, f"{key} to be answered {expected!r}", interval=0.2)
        except TimeoutError:
            self.fail(f"{key}: never {expected!r} within {timeout} s; saw {sorted(set(seen))}")

    def assertAlive(self, daemon: Daemon) -> None:
        self.assertTrue(daemon.running(), "the daemon is still running")
        self.assertEqual(log_lines(daemon, "Traceback"), [], "no traceback in the log")


class PolicyHostTests(HostileServerTestCase):
    """A policy host that never ends its headers, or cuts its body short."""

    def test_endless_headers(self) -> None:
        """Six policy hosts streaming headers at once: each fetch is cut at the byte limit, RSS barely grows, others are answered at once."""
        daemon = self.hostile_daemon()
        self.assertEqual(reply(daemon, "enforce.test"), ok(ENFORCE))
        for domain in STREAM_DOMAINS:
            self.host.behaviour[f"mta-sts.{domain}"] = ("headers", b"")
        assert daemon.process is not None
        self.host.streaming.set()
        with RssPeak(daemon.process.pid, RSS_CEILING_KIB, self.host.streaming.clear) as rss, \
                concurrent.futures.ThreadPoolExecutor(STREAMS) as pool:
            started = time.monotonic()
            answers = list(pool.map(lambda d: reply(daemon, d), STREAM_DOMAINS))
            self.assertAtOnce(daemon, "enforce.test", ok(ENFORCE))
            for domain in STREAM_DOMAINS:
                wait_for_log(daemon, f"MTA-STS policy fetch for {domain} (id 1) failed",
                             timeout=FETCH_TIMEOUT + 3.0)
            ended = time.monotonic() - started
            time.sleep(0.2)  # what the cut fetches leave behind settles
        self.host.streaming.clear()
        sent = sum(e.sent for d in STREAM_DOMAINS for e in self.host.for_host(d))
        print(f"\nRSS of the daemon: {rss.before} KiB before, {rss.peak} KiB at peak "
              f"(+{rss.growth} KiB) with {STREAMS} header streams; fetches ended after "
              f"{ended:.2f} s; the streams sent {sent // 1024} KiB")
        self.assertFalse(rss.ceiling_hit, f"RSS grew past {RSS_CEILING_KIB} KiB: streams stopped")
        self.assertLessEqual(rss.growth, RSS_BOUND_KIB,
                             f"RSS {rss.before} -> {rss.peak} KiB during the header streams")
        self.assertEqual(answers, ["NOTFOUND "] * STREAMS)
        for domain in STREAM_DOMAINS:
            [line] = log_lines(daemon, f"MTA-STS policy fetch for {domain} (id 1) failed")
            self.assertIn("byte limit on headers and body", line)
            self.assertIn("no cached policy", line)
            [exchange] = self.host.for_host(domain)
            wait_until(lambda: exchange.ended is not None, 5.0, "the stream to end")
            self.assertTrue(exchange.outcome.startswith("peer closed"), exchange)
            self.assertLess(exchange.seconds, FETCH_TIMEOUT - 1.0,
                            "cut at the byte limit, not at the deadline")
        self.assertLess(ended, FETCH_TIMEOUT, "every fetch ended before its deadline")
        # Still answering: from memory, and a fresh evaluation.
        self.assertAtOnce(daemon, "enforce.test", ok(ENFORCE))
        self.assertEqual(reply(daemon, "crlf.test"), ok(enforce_answer(mx_of("crlf.test"))))
        self.assertAlive(daemon)

    def publish_id(self, domain: str, policy_id: int) -> None:
        """A new policy id, returning once the resolver serves it (unbound caches 1 s)."""
        owner = f"_mta-sts.{domain[: -len('.test')]}"
        self.world.nsd.update({owner: [f'TXT "v=STSv1; id={policy_id}"']})

        def seen() -> bool:
            answer = self.resolve(f"_mta-sts.{domain}", "TXT")
            return self.rdata(answer, "TXT") == [f'"v=STSv1; id={policy_id}"']

        wait_until(seen, 5.0, f"unbound to serve id {policy_id} for {domain}", interval=0.1)

    def test_body_cut_without_close_notify(self) -> None:
        """A refetched short-lived policy without Content-Length, ended by a TCP FIN without close_notify, is refused: the cached policy stays."""
        domain = CUT_DOMAIN
        name = f"mta-sts.{domain}"
        before = ok(enforce_answer(mx_of(domain)))
        self.host.behaviour[name] = ("serve", policy("enforce", mx_of(domain)).encode())
        daemon = self.hostile_daemon()
        self.assertEqual(reply(daemon, domain), before)
        checked = time.monotonic()

        # An attacker's new id makes the daemon refetch; the answer is cut.
        cut = policy("enforce", [f"mx2.{domain}"], max_age=8).encode()
        self.host.behaviour[name] = ("cut", cut)
        self.publish_id(domain, 2)
        time.sleep(max(0.0, checked + 1.1 - time.monotonic()))  # past the TXT TTL floor
        self.assertAtOnce(daemon, domain, before)  # starts the refetch
        wait_for_log(daemon, f"MTA-STS policy fetch for {domain} (id 2) failed",
                     timeout=FETCH_TIMEOUT)
        [line] = log_lines(daemon, f"MTA-STS policy fetch for {domain} (id 2) failed")
        self.assertIn("close_notify", line)
        self.assertIn("keeping the cached enforce policy", line)
        [_, exchange] = self.host.for_host(domain)
        self.assertEqual((exchange.outcome, exchange.sent), ("cut", len(cut)),
                         "the whole body went out before the FIN")
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            self.assertAtOnce(daemon, domain, before)
            time.sleep(0.2)
        self.assertEqual(log_lines(daemon, "weakened"), [])

        # The same body ended with close_notify is a policy (a new id: the
        # failed one is not fetched again for 5 minutes).
        marked = policy("enforce", [f"mx3.{domain}"]).encode()
        self.host.behaviour[name] = ("close_notify", marked)
        self.publish_id(domain, 3)
        self.assertEventually(daemon, domain, ok(enforce_answer([f"mx3.{domain}"])))
        self.assertEqual(self.host.for_host(domain)[-1].outcome, "closed with close_notify")
        self.assertAlive(daemon)


class DnsTests(HostileServerTestCase):
    """A DNS server whose UDP replies are over-long or preceded by junk."""

    def dns_daemon(self) -> Daemon:
        return self.hostile_daemon({
            "lookup": {"deadline": 3.0},
            "dns": {"nameservers": [HOSTILE_DNS_ADDRESS], "port": 53,
                    "timeout": 1.0, "attempts": 2},
        })

    def test_over_long_udp_reply(self) -> None:
        """A 13 KB UDP reply without TC, whose MTA-STS record lies past byte 8192, is asked again over TCP and its whole RRset used."""
        daemon = self.dns_daemon()
        self.assertEqual(reply(daemon, PLAIN_DOMAIN), ok(enforce_answer(mx_of(PLAIN_DOMAIN))))
        self.assertEventually(daemon, BIG_TXT_DOMAIN, ok(enforce_answer(mx_of(BIG_TXT_DOMAIN))))
        qname = f"_mta-sts.{BIG_TXT_DOMAIN}"
        sent = self.dns_server.udp_replies[qname]
        self.assertGreater(len(sent), 12000)
        self.assertGreater(sent.find(b"v=STSv1"), 8192, "the record lies past what the reactor reads")
        self.assertTrue(self.dns_server.asked("tcp", qname, "TXT"), self.dns_server.queries)
        self.assertFalse(self.dns_server.asked("tcp", f"_mta-sts.{PLAIN_DOMAIN}", "TXT"))
        self.assertAlive(daemon)

    def test_junk_before_the_answer(self) -> None:
        """A junk datagram with the query's id, then the answer 0.1 s later: the answer is used, over UDP."""
        daemon = self.dns_daemon()
        self.assertEventually(daemon, JUNK_FIRST_DOMAIN,
                              ok(enforce_answer(mx_of(JUNK_FIRST_DOMAIN))))
        qname = f"_mta-sts.{JUNK_FIRST_DOMAIN}"
        self.assertEqual(
            [q for q in self.dns_server.queries if q[1] == qname], [("udp", qname, "TXT")],
            "one UDP query, answered by the datagram after the junk",
        )
        self.assertEqual(reply(daemon, PLAIN_DOMAIN), ok(enforce_answer(mx_of(PLAIN_DOMAIN))))
        self.assertAlive(daemon)
