#!/usr/bin/env python3
"""
mxpolicyd under a flood of junk domains: is memory bounded?

Starts a daemon process whose resolver is a fast local responder answering
NXDOMAIN to every question (or, with --resolver dead, a socket that never
answers), then looks up N distinct, syntactically valid, nonexistent domains
through the socketmap listener over several Postfix-style connections (one
request at a time each).  Samples the daemon's resident memory from /proc
while it runs and prints it at the start, at its peak and at the end, with
the cache's size, evictions and shed lookups from the daemon's metrics.

    nice -n 10 taskset -c 1 python3 bench/flood.py [--domains 1000000]
        [--connections 20] [--max-negative N] [--max-waiting N]
        [--resolver nxdomain|dead] [--json]

Only loopback is used: the responder listens on 127.0.0.38.  The responder
and the client run in their own processes; pin them all to one core, as
above, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.integration.daemon import Daemon  # noqa: E402
from tests.integration.servers import DeadResolver, free_port  # noqa: E402

RESPONDER_ADDRESS = "127.0.0.38"
ZONE = "flood.test"

_HEADER = struct.Struct("!HHHHHH")
# The SOA of the root, carrying the negative TTL (RFC 2308): owner ".", type
# SOA, class IN, then the TTL, then empty MNAME and RNAME and five numbers.
_SOA = struct.Struct("!BHHIH")
_SOA_RDATA = struct.Struct("!BBIIIII")


def nxdomain(query: bytes, ttl: int) -> bytes | None:
    """The NXDOMAIN response to C{query}, built from its bytes; None if unparseable."""
    if len(query) < _HEADER.size:
        return None
    qid, flags, qdcount = struct.unpack_from("!HHH", query)
    if flags & 0x8000 or qdcount != 1:
        return None
    end = _HEADER.size
    while end < len(query) and query[end]:
        end += 1 + query[end]
    end += 5  # the root label, QTYPE, QCLASS
    if end > len(query):
        return None
    # QR, RD copied, RA, rcode 3.
    header = _HEADER.pack(qid, 0x8083 | (flags & 0x0100), 1, 0, 1, 0)
    soa = _SOA.pack(0, 6, 1, ttl, _SOA_RDATA.size) + _SOA_RDATA.pack(0, 0, 1, 3600, 600, 86400, ttl)
    return header + query[_HEADER.size:end] + soa


def serve_nxdomain(address: str, port: int, ttl: int) -> None:
    """Answer NXDOMAIN to every UDP query until killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((address, port))
    while True:
        data, peer = sock.recvfrom(4096)
        reply = nxdomain(data, ttl)
        if reply is not None:
            sock.sendto(reply, peer)


class Responder:
    """The NXDOMAIN responder in a process of its own, or a dead resolver."""

    def __init__(self, kind: str = "nxdomain", ttl: int = 3600,
                 address: str = RESPONDER_ADDRESS) -> None:
        self.address = address
        self.process: subprocess.Popen[bytes] | None = None
        self.dead: DeadResolver | None = None
        if kind == "dead":
            self.dead = DeadResolver(address)
            self.port = self.dead.port
            return
        self.port = free_port(address, udp_too=True)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve-dns",
             "%s:%d" % (address, self.port), "--ttl", str(ttl)],
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 10.0) -> None:
        query = _HEADER.pack(1, 0x0100, 1, 0, 0, 0) + b"\x05probe\x00\x00\x01\x00\x01"
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.1)
            while time.monotonic() < deadline:
                s.sendto(query, (self.address, self.port))
                try:
                    if s.recv(512)[:2] == query[:2]:
                        return
                except OSError:
                    pass
        self.close()
        raise RuntimeError("the NXDOMAIN responder did not answer on %s:%d"
                           % (self.address, self.port))

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
        if self.dead is not None:
            self.dead.close()
            self.dead = None


def daemon_config(state: Path, responder: Responder, metrics_port: int,
                  lookup: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "daemon": {"state_directory": str(state)},
        "control": {"socket": ""},
        "metrics": {"listen": ["tcp:%d:interface=127.0.0.1" % metrics_port]},
        # A dead resolver costs one timeout per query; a live one gets a
        # second try, as a query lost on a busy machine is no junk domain.
        "dns": {"nameservers": [responder.address], "port": responder.port,
                "timeout": 1.0, "attempts": 1 if responder.dead is not None else 2},
        "lookup": lookup,
    }


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS for process %d" % pid)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> dict[str, float]:
    """The daemon's unlabelled metrics, and labelled ones summed over labels."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m:
            values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(3))
    return values


def junk(n: int, zone: str = ZONE) -> Iterator[bytes]:
    for i in range(n):
        yield b"j%d.%s" % (i, zone.encode())


class Flood:
    """
    Drives C{connections} socketmap connections, each with one request in
    flight, through C{keys}; counts the replies by their first word.
    """

    def __init__(self, address: tuple[str, int], connections: int) -> None:
        self.address = address
        self.connections = connections
        self.replies: dict[str, int] = {}
        self.sent = 0

    def run(self, keys: Iterator[bytes], on_tick: Any = None, tick: float = 1.0,
            timeout: float = 120.0) -> None:
        sel = selectors.DefaultSelector()
        buffers: dict[socket.socket, bytes] = {}
        sent_at: dict[socket.socket, float] = {}

        def send(s: socket.socket) -> bool:
            key = next(keys, None)
            if key is None:
                return False
            payload = b"postfix " + key
            s.sendall(b"%d:%s," % (len(payload), payload))
            sent_at[s] = time.monotonic()
            self.sent += 1
            return True

        for _ in range(self.connections):
            s = socket.create_connection(self.address)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffers[s] = b""
            if send(s):
                sel.register(s, selectors.EVENT_READ)
            else:
                s.close()
                del buffers[s]
        next_tick = time.monotonic() + tick
        while sel.get_map():
            for ready, _ in sel.select(timeout=tick):
                conn = ready.fileobj
                assert isinstance(conn, socket.socket)
                data = conn.recv(65536)
                if not data:
                    raise RuntimeError("the daemon closed a connection mid-flood")
                buf = buffers[conn] + data
                head, _, rest = buf.partition(b":")
                if not rest or len(rest) <= int(head):
                    buffers[conn] = buf
                    continue
                reply = rest[: int(head)]
                buffers[conn] = rest[int(head) + 1:]
                word = reply.split(b" ", 1)[0].decode("ascii", "replace")
                self.replies[word] = self.replies.get(word, 0) + 1
                if not send(conn):
                    sel.unregister(conn)
                    conn.close()
            now = time.monotonic()
            for s, at in sent_at.items():
                if s.fileno() >= 0 and now - at > timeout:
                    raise RuntimeError("no reply within %d s" % timeout)
            if now >= next_tick:
                next_tick = now + tick
                if on_tick is not None:
                    on_tick()
        sel.close()


def run_flood(workdir: Path, domains: int, connections: int = 20,
              resolver: str = "nxdomain", ttl: int = 3600,
              lookup: dict[str, Any] | None = None, sample: float = 1.0,
              quiet: bool = True) -> dict[str, Any]:
    """
    One flood against a fresh daemon whose files live in C{workdir}; what
    was measured, as a dict (see C{main} for the meaning).
    """
    responder = Responder(resolver, ttl=ttl)
    metrics_port = free_port()
    daemon = Daemon(workdir / "daemon",
                    daemon_config(workdir / "state", responder, metrics_port, lookup or {}),
                    postfix_config=workdir)
    try:
        daemon.start(timeout=30)
        assert daemon.process is not None
        pid = daemon.process.pid
        time.sleep(1.0)
        start_rss = rss_kib(pid)
        samples: list[tuple[float, int, int]] = []
        cpu_start = cpu_seconds(pid)
        started = time.monotonic()
        client = Flood(daemon.tcp_address, connections)
        peak = {"cached": 0.0, "waiting": 0.0}

        def tick() -> None:
            elapsed = time.monotonic() - started
            rss = rss_kib(pid)
            samples.append((elapsed, rss, client.sent))
            m = scrape(metrics_port)
            peak["cached"] = max(peak["cached"], m.get("mxpolicyd_cached_domains", 0))
            peak["waiting"] = max(peak["waiting"], m.get("mxpolicyd_evaluations_waiting", 0))
            if len(samples) % 10 == 0:
                if not quiet:
                    print("%6.0f s  %8d sent  RSS %6.1f MiB  cached %d  evicted %d  shed %d"
                          % (elapsed, client.sent, rss / 1024,
                             m.get("mxpolicyd_cached_domains", 0),
                             m.get("mxpolicyd_cache_evictions_total", 0),
                             m.get("mxpolicyd_lookups_shed_total", 0)), flush=True)

        client.run(junk(domains), on_tick=tick, tick=sample)
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu_start
        # Evaluations still queued or running finish; then the end state.
        time.sleep(2.0)
        m = scrape(metrics_port)
        end_rss = rss_kib(pid)
        daemon.stop(timeout=60)
        db = sqlite3.connect(str(workdir / "state" / "mxpolicyd.sqlite"))
        stored = db.execute("SELECT count(*) FROM domains").fetchone()[0]
        db.close()
    finally:
        daemon.stop()
        responder.close()
    rss_values = [s[1] for s in samples] + [start_rss, end_rss]
    quarter = [s[1] for s in samples if s[2] >= domains // 4]
    return {
        "domains": domains,
        "connections": connections,
        "resolver": resolver,
        "elapsed": round(elapsed, 1),
        "lookups_per_second": round(domains / elapsed),
        "daemon_cpu": round(cpu, 1),
        "rss_start_kib": start_rss,
        "rss_quarter_kib": quarter[0] if quarter else end_rss,
        "rss_peak_kib": max(rss_values),
        "rss_end_kib": end_rss,
        "replies": client.replies,
        "cached": m.get("mxpolicyd_cached_domains", 0),
        "cached_peak": max(peak["cached"], m.get("mxpolicyd_cached_domains", 0)),
        "negative": m.get("mxpolicyd_cached_negative_domains", 0),
        "evicted": m.get("mxpolicyd_cache_evictions_total", 0),
        "shed": m.get("mxpolicyd_lookups_shed_total", 0),
        "waiting_peak": peak["waiting"],
        "evaluations": m.get("mxpolicyd_evaluations_total", 0),
        "refresh_queue": m.get("mxpolicyd_refresh_queue", 0),
        "stored": stored,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--domains", type=int, default=1_000_000)
    p.add_argument("--connections", type=int, default=20)
    p.add_argument("--resolver", choices=("nxdomain", "dead"), default="nxdomain")
    p.add_argument("--ttl", type=int, default=3600, help="the NXDOMAIN answers' negative TTL")
    p.add_argument("--max-negative", type=int, help="lookup.max_negative (daemon default)")
    p.add_argument("--max-waiting", type=int, help="lookup.max_waiting (daemon default)")
    p.add_argument("--max-evaluations", type=int, help="lookup.max_evaluations")
    p.add_argument("--deadline", type=float, help="lookup.deadline")
    p.add_argument("--sample", type=float, default=1.0, help="seconds between RSS samples")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--serve-dns", metavar="ADDRESS:PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_dns:
        address, port = args.serve_dns.rsplit(":", 1)
        serve_nxdomain(address, int(port), args.ttl)
        return
    lookup: dict[str, Any] = {}
    for key in ("max_negative", "max_waiting", "max_evaluations", "deadline"):
        if getattr(args, key) is not None:
            lookup[key] = getattr(args, key)
    with tempfile.TemporaryDirectory(prefix="mxpolicyd-flood-") as workdir:
        result = run_flood(Path(workdir), args.domains, args.connections, args.resolver,
                           args.ttl, lookup, args.sample, quiet=args.json)
    if args.json:
        print(json.dumps(result))
        return
    mib = lambda kib: kib / 1024  # noqa: E731
    print("flood: %d junk domains over %d connections against a %s resolver in %.1f s "
          "(%d lookups/s)" % (result["domains"], result["connections"], result["resolver"],
                              result["elapsed"], result["lookups_per_second"]))
    print("daemon CPU: %.1f s, %.0f us per lookup" % (
        result["daemon_cpu"], result["daemon_cpu"] * 1e6 / result["domains"]))
    print("replies: %s" % ", ".join("%s %d" % kv for kv in sorted(result["replies"].items())))
    print("RSS: start %.1f MiB, at 25%% %.1f MiB, peak %.1f MiB, end %.1f MiB" % (
        mib(result["rss_start_kib"]), mib(result["rss_quarter_kib"]),
        mib(result["rss_peak_kib"]), mib(result["rss_end_kib"])))
    print("cache: %d domains at the end (peak %d), %d evicted, %d lookups shed, "
          "%d evaluations; %d rows in the store; refresh queue %d" % (
              result["cached"], result["cached_peak"], result["evicted"], result["shed"],
              result["evaluations"], result["stored"], result["refresh_queue"]))


if __name__ == "__main__":
    main()
