#!/usr/bin/env python3
"""
Cached socketmap lookups over Postfix-style persistent connections.

Starts the daemon on a store pre-filled with enforce policies (so no DNS or
HTTPS is involved), then drives it with C connections, each sending one
request at a time and waiting for the reply, as Postfix's smtp(8) does.
Reports throughput and p50/p99 latency, the median over several runs.

    python3 bench/lookups.py [--connections 1 100] [--runs 5] [--seconds 5]

Only loopback is used.  The client is one Python process with a selector
loop; on a 2-core machine it shares the CPU with the daemon, so the figures
are for comparing builds side by side, not absolute capacity.
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from twisted.internet.defer import maybeDeferred  # noqa: E402

from mxpolicyd.evidence.state import DomainState, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.store.sqlite import SQLiteStore


def fill_store(path: str, domains: int) -> list[bytes]:
    store = SQLiteStore(path, maybeDeferred)
    store.open()
    now = time.time()
    year = 365 * 86400.0
    keys = []
    for i in range(domains):
        domain = "d%d.bench.test" % i
        store.put(domain, DomainState(sts=StsState(
            policy=StsPolicy("enforce", 31557600, ("mx1.%s" % domain, "*.mx.%s" % domain)),
            policy_id="1", fetched_at=now, expires_at=now + year,
            record="v=STSv1; id=1", checked_at=now, due_at=now + year)))
        keys.append(domain.encode())
    store.flush()
    store.close()
    return keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(python: str, workdir: str, port: int) -> subprocess.Popen[bytes]:
    config = os.path.join(workdir, "bench.toml")
    with open(config, "w") as f:
        f.write(
            '[daemon]\nstate_directory = "%s"\n'
            '[socketmap]\nlisten = ["tcp:%d:interface=127.0.0.1"]\nmax_connections = 2000\n'
            '[dns]\nnameservers = ["127.0.0.1"]\nport = 9\ntimeout = 0.2\nattempts = 1\n'
            % (workdir, port)
        )
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [python, "-m", "mxpolicyd", "--config", config],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("daemon did not start listening on port %d" % port)


def drive(port: int, connections: int, keys: list[bytes], seconds: float) -> tuple[float, float, float]:
    """One run: returns (lookups per second, p50 ms, p99 ms)."""
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(connections):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        conns.append(s)
    requests = [b"%d:postfix %s," % (len(k) + 8, k) for k in keys]
    latencies: list[float] = []
    state = {}
    index = 0

    def send(s: socket.socket) -> None:
        nonlocal index
        req = requests[index % len(requests)]
        index += 1
        state[s] = (time.perf_counter(), b"")
        s.sendall(req)

    for s in conns:
        sel.register(s, selectors.EVENT_READ)
        send(s)
    # Warm up the connections, then measure.
    start = time.perf_counter()
    end = start + seconds
    warm = start + min(1.0, seconds / 5)
    count = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj  # type: ignore[assignment]
            sent, buf = state[s]
            buf += s.recv(65536)  # type: ignore[union-attr]
            head, colon, rest = buf.partition(b":")
            if not colon or len(rest) <= int(head):
                state[s] = (sent, buf)
                continue
            t = time.perf_counter()
            if t >= warm:
                latencies.append(t - sent)
                count += 1
            send(s)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - warm
    for s in conns:
        s.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    return count / elapsed, p50, p99


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--connections", type=int, nargs="+", default=[1, 100])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--domains", type=int, default=1000)
    p.add_argument("--python", default=sys.executable, help="interpreter for the daemon")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="mxpolicyd-bench-") as workdir:
        keys = fill_store(os.path.join(workdir, "mxpolicyd.sqlite"), args.domains)
        port = free_port()
        daemon = start_daemon(args.python, workdir, port)
        try:
            drive(port, 1, keys[:10], 1.0)  # load every path once
            print("cached lookups, %d domains, %d runs of %.0f s, daemon on %s"
                  % (args.domains, args.runs, args.seconds, args.python))
            print("%12s %14s %10s %10s" % ("connections", "lookups/s", "p50 ms", "p99 ms"))
            for c in args.connections:
                runs = [drive(port, c, keys, args.seconds) for _ in range(args.runs)]
                print("%12d %14.0f %10.3f %10.3f" % (
                    c,
                    statistics.median(r[0] for r in runs),
                    statistics.median(r[1] for r in runs),
                    statistics.median(r[2] for r in runs),
                ))
        finally:
            daemon.terminate()
            daemon.wait(10)


if __name__ == "__main__":
    main()
