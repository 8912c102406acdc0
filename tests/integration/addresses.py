"""
The loopback addresses and ports the test world takes, all in one place.
Most servers and daemons get a free port from the kernel; these cannot,
because Postfix's smtp(8) names its nameserver in resolv.conf (no port) and
connects to MX hosts on port 25, and MTA-STS fetches go to port 443. A second
test run on the same machine (or a stale server of an earlier one) collides
here, so every server taking one of them calls ``ensure_free`` (or
``bind_error``) and the run fails at once, naming the address and its holder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
from pathlib import Path

# unbound, the validating resolver, on UDP and TCP.
RESOLVER_ADDRESS = "127.0.0.35"
RESOLVER_PORT = 53
# nginx, every ``mta-sts.<domain>.test`` policy host.
POLICY_ADDRESS = "127.0.0.44"
POLICY_PORT = 443
# test_faults.py's policy host that misbehaves on demand (refuses, stalls,
# trickles, streams forever), also on port 443: the daemon fetches only there.
# (bench/compare takes 127.0.0.45:443 and 127.0.0.36:53.)
FAULTY_POLICY_ADDRESS = "127.0.0.46"
# test_hostile_servers.py's own servers: a TLS policy host that streams
# headers or cuts its body without close_notify (on POLICY_PORT), and a DNS
# server sending UDP replies over 8 KiB and junk (on port 53).
# (test_load.py and bench/flood.py take 127.0.0.38.)
HOSTILE_POLICY_ADDRESS = "127.0.0.47"
HOSTILE_DNS_ADDRESS = "127.0.0.39"
# The SMTP sinks of the delivery tests, one MX address per test.
SINK_ADDRESSES = tuple(f"127.0.0.{i}" for i in range(61, 71))
SMTP_PORT = 25
# The daemon's default socketmap listener, which test_install.py's daemons
# (started as README.md and the .deb start them) take, as does packaging/smoke-test.
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8461
# Where nothing listens: servfail.test's nameserver and unbound's root hint.
DEAD_ADDRESS = "127.0.0.99"

_TCP_LISTEN = "0A"


def ensure_free(address: str, port: int, what: str, *, udp: bool = False) -> None:
    """
    Fail unless ``what`` could bind ``address``:``port`` over TCP (and UDP):
    the message names the process holding it.
    """
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                # TIME_WAIT leftovers of an earlier run do not stop a server.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as e:
                raise bind_error(e, address, port, what, udp=kind == socket.SOCK_DGRAM) from None


def bind_error(
    error: OSError, address: str, port: int, what: str, *, udp: bool = False
) -> Exception:
    """The exception to raise for ``what`` failing to bind: who holds the address, if taken."""
    proto = "udp" if udp else "tcp"
    if error.errno != errno.EADDRINUSE:
        return RuntimeError(f"{what} cannot bind {address}:{port}/{proto}: {error}")
    return RuntimeError(
        f"{address}:{port}/{proto}, which {what} needs, is held by "
        f"{holder(address, port, udp=udp)}: another test run, or a stale server of "
        "an earlier one? (the fixed addresses are listed in tests/integration/addresses.py)"
    )


def holder(address: str, port: int, *, udp: bool = False) -> str:
    """The processes whose sockets bind ``address``:``port`` (or the wildcard), as text."""
    inodes = _socket_inodes(address, port, udp)
    owners: list[str] = []
    if inodes:
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            links = set()
            try:
                for fd in fd_dir.iterdir():
                    with contextlib.suppress(OSError):
                        links.add(os.readlink(fd))
            except OSError:
                continue
            if any(f"socket:[{inode}]" in links for inode in inodes):
                owners.append(_describe(fd_dir.parent))
    if owners:
        return ", ".join(sorted(owners))
    return "a process this test run cannot see (try `ss -ltnup`)"


def _socket_inodes(address: str, port: int, udp: bool) -> set[str]:
    wanted = {_proc_address(address), _proc_address("0.0.0.0"), "0" * 32}
    inodes = set()
    for name in ("udp", "udp6") if udp else ("tcp", "tcp6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_address, local_port = fields[1].split(":")
            if int(local_port, 16) != port or local_address not in wanted:
                continue
            if udp or fields[3] == _TCP_LISTEN:
                inodes.add(fields[9])
    return inodes


def _proc_address(address: str) -> str:
    """An IPv4 address as /proc/net/tcp writes it: a native-order 32-bit hex word."""
    packed = socket.inet_aton(address)
    return (packed[::-1] if sys.byteorder == "little" else packed).hex().upper()


def _describe(proc: Path) -> str:
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        command = "?"
    return f"pid {proc.name} ({command[:200]})"
