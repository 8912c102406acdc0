"""
Issue 14, items 4 and 10, against a real daemon in the test world: a flood
of names under a DNSSEC-signed wildcard stays within lookup.max_negative,
and the safe defaults hold as a started process sees them (policy hosts on
private addresses refused, unix listeners 660, state files 0640 under
umask 000, a root daemon that warns, or that switches to daemon.user and
still answers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import socket
import sqlite3
import stat
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .case import NOT_FOUND, IntegrationTestCase
from .daemon import REPO_ROOT, Daemon
from .scenarios import ENFORCE
from .servers import free_port, wait_until

pytestmark = pytest.mark.integration

# The wildcard's names all have mx1.daneonly.test as their MX host, whose
# TLSA records are usable: each is "OK dane-only".
WILDCARD = "*.wild"
WILDCARD_MX = "MX 10 mx1.daneonly.test."
FLOOD = 1500
CAP = 200
USER = "nobody"


def _bench_flood() -> ModuleType:
    """bench/flood.py, whose socketmap flood client and metrics scraper the flood test uses."""
    name = "mxpolicyd_bench_flood"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / "flood.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def stored(path: Path) -> dict[str, dict[str, Any]]:
    """The SQLite store's states by domain (read with the daemon stopped)."""
    db = sqlite3.connect(str(path))
    try:
        return {d: json.loads(s) for d, s in db.execute("SELECT domain, state FROM domains")}
    finally:
        db.close()


def store_of(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return stored(Path(daemon.config["daemon"]["state_directory"]) / "mxpolicyd.sqlite")


def socketmap_query(path: Path, key: str, name: str = "postfix") -> bytes:
    """One socketmap request over a unix socket, as Postfix's proxymap sends it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10.0)
        sock.connect(str(path))
        payload = f"{name} {key}".encode()
        sock.sendall(b"%d:%s," % (len(payload), payload))
        data = b""
        while True:
            head, colon, rest = data.partition(b":")
            if colon and len(rest) > int(head):
                return rest[: int(head)]
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"the daemon closed the connection after {data!r}")
            data += chunk


def process_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of /proc/PID/status."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                found[key] = [int(v) for v in value.split()]
    return found


class SignedWildcardFloodTests(IntegrationTestCase):
    """Item 4: DANE entries are evicted like the rest."""

    def test_wildcard_flood_within_max_negative(self) -> None:
        """1,500 names under a signed wildcard, each dane-only: cache and store stay at max_negative."""
        self.world.nsd.update({WILDCARD: [WILDCARD_MX]})
        self.addCleanup(self.world.nsd.update, {WILDCARD: []})
        flood = _bench_flood()
        metrics_port = free_port()
        daemon = self.start_daemon(None, {
            "lookup": {"max_negative": CAP},
            "metrics": {"listen": [f"tcp:{metrics_port}:interface=127.0.0.1"]},
            # Due in an hour, not in a second: the refresher stays out of it.
            "dane": {"ttl_min": 3600},
            "mta_sts": {"txt_ttl_min": 3600},
        })
        self.assertAnswer("probe.wild.test", "dane-only", daemon=daemon)
        assert daemon.process is not None
        pid = daemon.process.pid
        samples: list[tuple[int, int]] = []
        client = flood.Flood(daemon.tcp_address, 10)

        def tick() -> None:
            samples.append((client.sent, flood.rss_kib(pid)))

        started = time.monotonic()
        keys = (b"n%d.wild.test" % i for i in range(FLOOD))
        client.run(keys, on_tick=tick, tick=0.25, timeout=30.0)
        elapsed = time.monotonic() - started
        # Lookups answered, their evaluations settled: the end state.
        time.sleep(1.0)
        m = flood.scrape(metrics_port)
        end_rss = flood.rss_kib(pid)
        names = FLOOD + 1
        quarter = next((rss for sent, rss in samples if sent >= FLOOD // 4), end_rss)
        print(f"\n{FLOOD} wildcard names in {elapsed:.1f} s ({FLOOD / elapsed:.0f}/s over 10 "
              f"connections): replies {client.replies}, cached {m.get('mxpolicyd_cached_domains')}, "
              f"evicted {m.get('mxpolicyd_cache_evictions_total', 0):.0f}; RSS "
              f"{samples[0][1] if samples else end_rss} KiB at the first sample, {quarter} KiB "
              f"a quarter in, {end_rss} KiB at the end")
        # A DNS answer lost on a busy machine makes a TEMP; never a weaker answer.
        self.assertLessEqual(set(client.replies), {"OK", "TEMP"}, client.replies)
        self.assertGreaterEqual(client.replies.get("OK", 0), FLOOD * 0.99, client.replies)
        self.assertEqual(m["mxpolicyd_cached_domains"], CAP, m)
        self.assertEqual(m["mxpolicyd_cached_negative_domains"], CAP, m)
        self.assertEqual(m.get("mxpolicyd_cache_evictions_total", 0), names - CAP, m)
        self.assertLessEqual(m["mxpolicyd_refresh_queue"], CAP, m)
        # Without the cap each name costs some 2.5 KB: about 2.8 MiB from a
        # quarter of the flood to its end; with it, the noise of a process.
        self.assertLess(end_rss - quarter, 2048, (quarter, end_rss))
        # An evicted name is evaluated again when asked: still dane-only.
        self.assertAnswer("n0.wild.test", "dane-only", daemon=daemon)
        self.assertEqual(daemon.stop(), 0)
        self.assertLessEqual(len(store_of(daemon)), CAP)


class SafeDefaultsTests(IntegrationTestCase):
    """Item 10: what a daemon started with nothing said does."""

    def test_private_policy_host_refused_by_default(self) -> None:
        """With mta_sts.block_private unset, a policy host on loopback is refused: NOTFOUND."""
        daemon = self.world.new_daemon()
        del daemon.config["mta_sts"]["block_private"]
        self.addCleanup(daemon.stop)
        daemon.start()
        self.assertEqual(self.answer("enforce.test", daemon=daemon), NOT_FOUND)
        self.assertEqual(daemon.stop(), 0)
        state = store_of(daemon)["enforce.test"]
        self.assertIn("only non-public addresses", state["sts"]["failure"])
        self.assertIsNone(state["sts"]["policy"])

    def test_files_and_sockets_under_umask_000(self) -> None:
        """Started as root under umask 000: store files 0640, unix sockets 660, a warning about root."""
        state = self.world.directory / "umask-state"
        state.mkdir()
        socket_path = state / "socketmap.sock"
        daemon = self.world.new_daemon(
            state, listen=[f"tcp:{free_port()}:interface=127.0.0.1", f"unix:{socket_path}"])
        self.addCleanup(daemon.stop)
        before = os.umask(0)
        try:
            daemon.start()
        finally:
            os.umask(before)
        self.assertEqual(self.answer("daneonly.test", daemon=daemon), "dane-only")
        store = state / "mxpolicyd.sqlite"
        wait_until(lambda: Path(f"{store}-wal").exists(), 10, "the store's WAL file")
        self.assertEqual({p.name: oct(mode(p)) for p in state.glob("mxpolicyd.sqlite*")}, {
            "mxpolicyd.sqlite": "0o640", "mxpolicyd.sqlite-wal": "0o640",
            "mxpolicyd.sqlite-shm": "0o640"})
        self.assertEqual(oct(mode(socket_path)), "0o660")
        self.assertEqual(oct(mode(state / "control.sock")), "0o660")
        self.assertIn("mxpolicyd runs as root", daemon.log_text())
        self.assertEqual(daemon.stop(), 0)

    def test_daemon_user(self) -> None:
        """Started as root with daemon.user = nobody: binds, switches to nobody, answers, stops cleanly."""
        account = pwd.getpwnam(USER)
        # Every directory above the state directory must let nobody through.
        base = Path(tempfile.mkdtemp(prefix="mxpolicyd-user-", dir="/tmp"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        state = base / "state"
        state.mkdir()
        socket_path = state / "socketmap.sock"
        daemon = self.world.new_daemon(
            state, {"daemon": {"user": USER}},
            listen=[f"tcp:{free_port()}:interface=127.0.0.1", f"unix:{socket_path}"])
        self.addCleanup(daemon.stop)
        daemon.start()
        assert daemon.process is not None
        pid = daemon.process.pid
        wait_until(lambda: process_ids(pid)["Uid"][0] != 0, 10, f"mxpolicyd to become {USER}")
        ids = process_ids(pid)
        self.assertEqual(ids["Uid"], [account.pw_uid] * 4, ids)
        self.assertEqual(ids["Gid"], [account.pw_gid] * 4, ids)
        self.assertEqual(ids["Groups"], [account.pw_gid], ids)
        self.assertIn(f"Switched to user {USER}", daemon.log_text())
        self.assertNotIn("mxpolicyd runs as root", daemon.log_text())
        # Still answering: DNS only, an HTTPS policy fetch, over TCP and the unix socket.
        self.assertEqual(self.answer("daneonly.test", daemon=daemon), "dane-only")
        self.assertEqual(self.answer("enforce.test", daemon=daemon), ENFORCE)
        self.assertEqual(socketmap_query(socket_path, "enforce.test"), ("OK " + ENFORCE).encode())
        for path in (state, state / "mxpolicyd.sqlite", socket_path, state / "control.sock"):
            self.assertEqual(os.lstat(path).st_uid, account.pw_uid, path)
        self.assertEqual(oct(mode(socket_path)), "0o660")
        # The store is written as nobody: flushed, then read back after a clean stop.
        self.assertEqual(daemon.stop(), 0)
        self.assertIn("enforce.test", store_of(daemon))
        self.assertNotIn("Traceback", daemon.log_text())
        self.assertFalse(socket_path.exists(), "the socket nobody bound is removed at stop")
