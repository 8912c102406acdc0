"""
Debian root trees for the tests that need a Debian other than the host's own
packages: trixie's Postfix 3.10 (trixie.py) and the pristine install tests
(test_install.py). ``ensure_tree`` makes a minbase tree with debootstrap once
and caches it under ``/var/cache/mxpolicyd-tests/<suite>``; ``scratch_copy``
gives a test a throwaway copy, for tests that install into the tree. Commands
run in a tree with chroot(8), in the host's network namespace.

Every tree's resolv.conf names the test world's validating resolver (which
answers nothing outside ``test.``), so nothing in a tree asks the host's
resolver; a copy that must reach the Debian mirror gets the mirror's address,
resolved on the host, pinned in its /etc/hosts (``pin_mirror``).

A tree's apt runs on Debian's defaults: it needs none of the host's
``Acquire::*`` settings (the host's ``Check-Valid-Until "false"`` is for its
own snapshot sources), since a tree lists only the suite's main archive,
whose Release file has no Valid-Until.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from .addresses import RESOLVER_ADDRESS

DEBOOTSTRAP = "/usr/sbin/debootstrap"
CHROOT = "/usr/sbin/chroot"
MIRROR = (
    os.environ.get("MXPOLICYD_DEBIAN_MIRROR")
    or os.environ.get("MXPOLICYD_TRIXIE_MIRROR")
    or "http://deb.debian.org/debian"
)
CACHE = Path("/var/cache/mxpolicyd-tests")
STAMP = ".complete"
# Inside a tree: a clean environment, as a root login shell would have.
TREE_ENV = {
    "HOME": "/root",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def ensure_tree(
    suite: str,
    path: Path,
    *,
    include: Sequence[str] = (),
    mirror: str = MIRROR,
    timeout: float = 900.0,
) -> Path:
    """
    The minbase ``suite`` tree at ``path`` with ``include`` installed, built
    now if missing. A lock serialises concurrent runs (worktrees share the
    cache); the tree is built beside its final path and renamed, so an
    interrupted build leaves no half tree.
    """
    if (path / STAMP).exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / (path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (path / STAMP).exists():
            return path
        if not os.access(DEBOOTSTRAP, os.X_OK):
            raise RuntimeError(
                f"{DEBOOTSTRAP} is missing (Debian package debootstrap): run tests/run as root"
            )
        building = path.parent / (path.name + ".build")
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        argv = [DEBOOTSTRAP, "--variant=minbase"]
        if include:
            argv.append("--include=" + ",".join(include))
        r = subprocess.run(
            [*argv, suite, str(building), mirror],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"debootstrap {suite} into {building} failed ({r.returncode}):\n"
                + (r.stdout + r.stderr)[-3000:]
            )
        # Nothing in the tree may ask the host's resolver: only the test world's.
        resolv = building / "etc" / "resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text(f"nameserver {RESOLVER_ADDRESS}\noptions trust-ad\n")
        (building / STAMP).write_text(
            f"{' '.join(argv)} {suite}: built in {time.monotonic() - started:.0f} s "
            f"from {mirror}\n"
        )
        shutil.rmtree(path, ignore_errors=True)
        building.rename(path)
    return path


def in_tree(
    tree: Path,
    argv: Sequence[str],
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the tree (chroot(8)), capturing its output."""
    return subprocess.run(
        [CHROOT, str(tree), *argv], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout, env=env,
    )


@contextlib.contextmanager
def scratch_copy(tree: Path, destination: Path) -> Iterator[Path]:
    """
    A copy of the cached ``tree`` at ``destination`` (reflinked where the file
    system can), removed afterwards: tests that install packages must never
    change the cache.
    """
    if destination.exists():
        raise RuntimeError(f"{destination} already exists")
    subprocess.run(
        ["cp", "-a", "--reflink=auto", str(tree), str(destination)],
        stdin=subprocess.DEVNULL, check=True, capture_output=True,
    )
    try:
        yield destination
    finally:
        shutil.rmtree(destination, ignore_errors=True)


def pin_mirror(tree: Path, mirror: str = MIRROR) -> list[str]:
    """
    Write the mirror host's addresses, as the host's resolver gives them now,
    into the tree's /etc/hosts, so that apt in the tree reaches the mirror
    while its resolv.conf names only the test resolver. Returns the addresses.
    """
    host = urlsplit(mirror).hostname
    if not host:
        raise ValueError(f"no host name in mirror URL {mirror!r}")
    addresses = sorted({
        str(info[4][0])
        for info in socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    })
    if not addresses:
        raise RuntimeError(f"the host's resolver gives no address for {host}")
    with (tree / "etc" / "hosts").open("a") as hosts:
        for address in addresses:
            hosts.write(f"{address}\t{host}\n")
    return addresses


def forbid_service_starts(tree: Path) -> None:
    """A policy-rc.d that exits 101, so no package installed in the tree starts a service."""
    policy = tree / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
