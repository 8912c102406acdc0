#!/usr/bin/env python3
"""
mxpolicyd at scale: a million domains in the store.

Measures, against a real daemon process on loopback:
  - resident memory per cached domain (RSS with N domains loaded, minus RSS
    with an empty store, divided by N);
  - time from start to the first cached answer, and until every domain is
    answerable from memory (the daemon's "Loaded N domains" log line);
  - refresher throughput: every domain overdue at start, re-checked against
    a local nsd serving a wildcard zone (the daily TXT check: one TXT and one
    MX query per domain, no policy fetch as the id is unchanged).

    python3 bench/scale.py [--domains 1000000] [--policy-fraction 0.2]
                           [--refresh-seconds 20] [--concurrency 100]

Needs Debian's nsd.  Only loopback is used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from mxpolicyd.evidence.dane import DaneState
from mxpolicyd.evidence.state import DomainState, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.store.sqlite import SQLiteStore

ZONE = "bench.test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(path: str, n: int, policy_fraction: float, overdue: bool) -> list[str]:
    """Write n domain states straight into a fresh store, as a daemon would."""
    store = SQLiteStore(path, lambda f, *a: None)  # type: ignore[arg-type,return-value]
    store.open()
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    now = time.time()
    rng = random.Random(1)
    names = []
    rows = []
    for i in range(n):
        # Domains with a policy live under p.bench.test, where a wildcard
        # publishes the _mta-sts record; the others under n.bench.test,
        # which has none (NXDOMAIN), as most domains on the internet.
        with_policy = rng.random() < policy_fraction
        domain = "d%d.%s.%s" % (i, "p" if with_policy else "n", ZONE)
        names.append(domain)
        # Times spread like a live daemon's, so floats are not shared.
        checked = now - rng.uniform(0, 3000)
        due = now - 1 if overdue else checked + rng.uniform(3600, 7200) + 86400
        if with_policy:
            sts = StsState(
                policy=StsPolicy("enforce", 604800, ("mx1." + domain, "*.mx." + domain)),
                policy_id="1", fetched_at=checked, expires_at=checked + 604800,
                record="v=STSv1; id=1", checked_at=checked, due_at=due,
            )
        else:
            sts = StsState(checked_at=checked, due_at=due)
        dane = DaneState("none", "the MX RRset is not DNSSEC-signed", False, False, (),
                         checked, due)
        state = DomainState(sts=sts, dane=dane)
        rows.append((domain, json.dumps(state.to_json(), separators=(",", ":")), now, now))
        if len(rows) == 50000:
            db.executemany("INSERT INTO domains VALUES (?, ?, ?, ?)", rows)
            rows = []
    db.executemany("INSERT INTO domains VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return names


def start_nsd(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    zone = os.path.join(workdir, "bench.zone")
    with open(zone, "w") as f:
        f.write(
            "$ORIGIN %s.\n$TTL 3600\n"
            "@ IN SOA ns.%s. h.%s. 1 3600 600 86400 3600\n"
            "@ IN NS ns.%s.\nns IN A 127.0.0.1\n"
            '*.p.%s. IN TXT "v=STSv1; id=1"\n' % (ZONE, ZONE, ZONE, ZONE, ZONE)
        )
    conf = os.path.join(workdir, "nsd.conf")
    with open(conf, "w") as f:
        f.write(
            "server:\n  ip-address: 127.0.0.1@%d\n  port: %d\n  username: \"\"\n"
            "  zonesdir: \"%s\"\n  database: \"\"\n  pidfile: \"%s/nsd.pid\"\n"
            "  xfrdfile: \"%s/xfrd.state\"\n  zonelistfile: \"%s/zone.list\"\n"
            "  logfile: \"%s/nsd.log\"\n  server-count: 1\n  verbosity: 0\n"
            "  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n  minimal-responses: yes\n"
            "remote-control:\n  control-enable: no\n"
            "zone:\n  name: %s\n  zonefile: \"%s\"\n"
            % (port, port, workdir, workdir, workdir, workdir, workdir, ZONE, zone)
        )
    proc = subprocess.Popen(["nsd", "-d", "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, port


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def query(port: int, key: str) -> bytes | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            payload = ("postfix " + key).encode()
            s.sendall(b"%d:%s," % (len(payload), payload))
            data = s.recv(4096)
            return data
    except OSError:
        return None


class Daemon:
    def __init__(self, workdir: str, state_dir: str, dns_port: int, concurrency: int,
                 spread: float, refresh: bool) -> None:
        self.port = free_port()
        self.log = os.path.join(workdir, "daemon-%d.log" % self.port)
        config = os.path.join(workdir, "daemon-%d.toml" % self.port)
        with open(config, "w") as f:
            f.write(
                '[daemon]\nstate_directory = "%s"\n'
                '[socketmap]\nlisten = ["tcp:%d:interface=127.0.0.1"]\n'
                '[dns]\nnameservers = ["127.0.0.1"]\nport = %d\ntimeout = 2.0\n'
                '[lookup]\nmax_evaluations = %d\n'
                '[refresh]\nenabled = %s\nconcurrency = %d\nstartup_spread = %s\n'
                '[dane]\nttl_min = 3600\n'
                # The policy hosts, if any were fetched, are on loopback.
                '[mta_sts]\ntxt_ttl_min = 3600\nblock_private = false\n'
                % (state_dir, self.port, dns_port, max(concurrency * 2, 100),
                   "true" if refresh else "false", concurrency, spread)
            )
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mxpolicyd", "--config", config],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
        )

    def wait_first_answer(self, key: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = query(self.port, key)
            if reply and b"OK secure" in reply or reply and b"NOTFOUND" in reply:
                return time.monotonic() - self.started
            time.sleep(0.01)
        raise SystemExit("no answer from the daemon within %d s" % timeout)

    def wait_loaded(self, timeout: float = 600) -> tuple[int, float]:
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"Loaded (\d+) domains from .* in ([\d.]+) s")
        while time.monotonic() < deadline:
            with open(self.log) as f:
                m = pattern.search(f.read())
            if m:
                return int(m.group(1)), time.monotonic() - self.started
            time.sleep(0.1)
        raise SystemExit("the daemon did not finish loading within %d s" % timeout)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--domains", type=int, default=1_000_000)
    p.add_argument("--policy-fraction", type=float, default=0.2)
    p.add_argument("--refresh-seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=100)
    args = p.parse_args()
    if not shutil.which("nsd"):
        raise SystemExit("bench/scale.py needs Debian's nsd")

    with tempfile.TemporaryDirectory(prefix="mxpolicyd-scale-") as workdir:
        nsd, dns_port = start_nsd(workdir)
        try:
            empty = os.path.join(workdir, "empty")
            os.makedirs(empty)
            d = Daemon(workdir, empty, dns_port, args.concurrency, 1.0, refresh=False)
            d.wait_loaded()
            time.sleep(1.0)
            base = rss_kib(d.proc.pid)
            d.stop()

            full = os.path.join(workdir, "full")
            os.makedirs(full)
            t = time.monotonic()
            names = fill(os.path.join(full, "mxpolicyd.sqlite"), args.domains,
                         args.policy_fraction, overdue=False)
            print("filled a store of %d domains in %.1f s (%.0f%% with an enforce policy)"
                  % (len(names), time.monotonic() - t, args.policy_fraction * 100))

            d = Daemon(workdir, full, dns_port, args.concurrency, 1.0, refresh=False)
            first = d.wait_first_answer(names[len(names) * 3 // 4])
            count, loaded = d.wait_loaded()
            time.sleep(2.0)
            rss = rss_kib(d.proc.pid)
            d.stop()
            print("restart: first cached answer after %.2f s; all %d domains in memory "
                  "after %.1f s" % (first, count, loaded))
            print("memory: RSS %d MiB with the store loaded, %d MiB empty: %.0f bytes "
                  "per cached domain" % (rss / 1024, base / 1024,
                                         (rss - base) * 1024 / max(count, 1)))

            overdue = os.path.join(workdir, "overdue")
            os.makedirs(overdue)
            fill(os.path.join(overdue, "mxpolicyd.sqlite"), args.domains,
                 args.policy_fraction, overdue=True)
            d = Daemon(workdir, overdue, dns_port, args.concurrency, 1.0, refresh=True)
            d.wait_loaded()
            # Count refreshes through the store: each rewrites its row.
            db = sqlite3.connect(os.path.join(overdue, "mxpolicyd.sqlite"))
            start_mark = time.time()
            time.sleep(args.refresh_seconds)
            done = db.execute("SELECT count(*) FROM domains WHERE updated > ?",
                              (start_mark,)).fetchone()[0]
            elapsed = time.time() - start_mark
            db.close()
            d.stop()
            print("refresher: %d domains re-checked in %.0f s against local nsd: %.0f "
                  "domains/s (concurrency %d)" % (done, elapsed, done / elapsed,
                                                  args.concurrency))
        finally:
            nsd.terminate()
            nsd.wait(10)


if __name__ == "__main__":
    main()
