#!/usr/bin/env python3
"""
Instructions per cached lookup, counted by callgrind: a figure that does not
move with the machine's load, for comparing two builds side by side.

    python3 bench/instructions.py [TREE ...] [--lookups 2000 12000]

For each source tree (this one by default; e.g. a git worktree of an earlier
commit as a second), the daemon runs under ``valgrind --tool=callgrind`` on
a store pre-filled with enforce policies (no DNS, no HTTPS), answers N
lookups over one Postfix-style connection and stops; done for two values of
N, the difference of the whole process's instruction counts divided by the
difference of N is the cost of one cached lookup, start-up and shutdown
cancelling out.  Needs Debian's valgrind; takes a few minutes.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from lookups import fill_store, free_port  # noqa: E402


def count(tree: str, python: str, lookups: int, domains: int, work: str) -> int:
    """The daemon's total instructions for start, C{lookups} lookups and stop."""
    state = tempfile.mkdtemp(dir=work)
    store = os.path.join(state, "mxpolicyd.sqlite")
    keys = fill_store(store, domains)
    port = free_port()
    config = os.path.join(state, "mxpolicyd.toml")
    with open(config, "w") as f:
        f.write('[daemon]\nstate_directory = "%s"\n[socketmap]\nlisten = '
                '["tcp:%d:interface=127.0.0.1"]\n[control]\nsocket = ""\n'
                '[dns]\nnameservers = ["127.0.0.1"]\nport = 9\n'
                '[refresh]\nenabled = false\n' % (state, port))
    out = os.path.join(state, "callgrind.out")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
         python, "-m", "mxpolicyd", "--config", config],
        cwd=tree, env=dict(os.environ, PYTHONPATH=tree),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=600)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the daemon in %s did not start" % tree)
                time.sleep(0.5)
        with s:
            # Every domain once, so that every memo entry exists, then the count.
            for i in range(len(keys) + lookups):
                key = keys[i % len(keys)]
                payload = b"postfix " + key
                s.sendall(b"%d:%s," % (len(payload), payload))
                data = b""
                while not data.endswith(b","):
                    chunk = s.recv(65536)
                    if not chunk:
                        raise SystemExit("connection closed")
                    data += chunk
                if not data.split(b":", 1)[1].startswith(b"OK "):
                    raise SystemExit("not a cached enforce answer: %r" % data)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(600)
    with open(out) as f:
        for line in f:
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                return int(m.group(1))
    raise SystemExit("no totals in %s" % out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs="*", default=[ROOT])
    p.add_argument("--lookups", type=int, nargs=2, default=[2000, 12000])
    p.add_argument("--domains", type=int, default=200)
    p.add_argument("--python", default="/usr/bin/python3")
    args = p.parse_args()
    low, high = args.lookups
    with tempfile.TemporaryDirectory() as work:
        for tree in args.trees:
            a = count(os.path.abspath(tree), args.python, low, args.domains, work)
            b = count(os.path.abspath(tree), args.python, high, args.domains, work)
            print("%s: %.0f instructions per cached lookup (%d and %d lookups: %d, %d)"
                  % (tree, (b - a) / (high - low), low, high, a, b), flush=True)


if __name__ == "__main__":
    main()
