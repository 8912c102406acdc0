"""
Debian trixie's Postfix 3.10 for the TLSRPT profile's tests: a minbase trixie
tree made by debootstrap once and cached (``/var/cache/mxpolicyd-tests/trixie``,
or ``$MXPOLICYD_TRIXIE_TREE``), and a private Postfix instance run inside it
with chroot(8). The tree shares the host's network namespace, so Postfix in it
reaches the daemon on 127.0.0.1, the validating resolver and the SMTP sinks.

Building takes about a minute with a reachable Debian mirror; the tree is
rebuilt only when it is missing or incomplete (no ``.complete`` stamp).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Sequence

from .addresses import RESOLVER_ADDRESS
from .postfix import Postfix

DEBOOTSTRAP = "/usr/sbin/debootstrap"
CHROOT = "/usr/sbin/chroot"
MIRROR = os.environ.get("MXPOLICYD_TRIXIE_MIRROR", "http://deb.debian.org/debian")
DEFAULT_TREE = Path("/var/cache/mxpolicyd-tests/trixie")
STAMP = ".complete"


def tree_path() -> Path:
    return Path(os.environ.get("MXPOLICYD_TRIXIE_TREE") or DEFAULT_TREE)


def ensure_tree(tree: Path, timeout: float = 900.0) -> Path:
    """
    The trixie tree with Postfix, built now if missing. A lock serialises
    concurrent runs (worktrees share the cache); the tree is built beside its
    final path and renamed, so an interrupted build leaves no half tree.
    """
    if (tree / STAMP).exists():
        return tree
    tree.parent.mkdir(parents=True, exist_ok=True)
    with open(tree.parent / (tree.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (tree / STAMP).exists():
            return tree
        if not os.access(DEBOOTSTRAP, os.X_OK):
            raise RuntimeError(
                f"{DEBOOTSTRAP} is missing (Debian package debootstrap): run tests/run as root"
            )
        building = tree.parent / (tree.name + ".build")
        shutil.rmtree(building, ignore_errors=True)
        started = time.monotonic()
        r = subprocess.run(
            [DEBOOTSTRAP, "--variant=minbase", "--include=postfix", "trixie",
             str(building), MIRROR],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
        if r.returncode != 0:
            raise RuntimeError(
                f"debootstrap trixie into {building} failed ({r.returncode}):\n"
                + (r.stdout + r.stderr)[-3000:]
            )
        # Nothing in the tree may ask the host's resolver: only the test world's.
        resolv = building / "etc" / "resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text(f"nameserver {RESOLVER_ADDRESS}\noptions trust-ad\n")
        (building / STAMP).write_text(f"built in {time.monotonic() - started:.0f} s from {MIRROR}\n")
        shutil.rmtree(tree, ignore_errors=True)
        building.rename(tree)
    return tree


def in_tree(tree: Path, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside the tree (chroot(8)), capturing its output."""
    return subprocess.run(
        [CHROOT, str(tree), *argv], stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout,
    )


def postfix_version(tree: Path) -> str:
    r = in_tree(tree, ["/usr/sbin/postconf", "-dh", "mail_version"])
    return r.stdout.strip()


class TrixiePostfix(Postfix):
    """
    The delivering instance of postfix.py, run by trixie's Postfix inside the
    tree: ``directory`` must lie in the tree; the config names paths as
    seen from inside it, and every command runs through chroot(8). smtp(8) is
    chrooted again into the instance's queue directory, as Debian ships it.
    Mail sent with ``transport=PATTERNS_OFF`` goes through an smtp(8) with
    ``smtp_tls_enforce_sts_mx_patterns = no``, the control case.
    """

    PATTERNS_OFF = "smtp-patterns-off"

    def __init__(self, tree: Path, directory: Path, **kwargs: object) -> None:
        self.tree = tree.resolve()
        assert self.tree in directory.resolve().parents, (directory, tree)
        super().__init__(directory, **kwargs)  # type: ignore[arg-type]
        self.transports = {
            self.PATTERNS_OFF: {
                "smtp_tls_policy_maps": self.policy_maps,
                "smtp_tls_enforce_sts_mx_patterns": "no",
            }
        }

    def inner(self, text: str) -> str:
        """A host path (or a value holding them) as seen inside the tree."""
        return text.replace(str(self.tree), "")

    def main_cf(self) -> dict[str, str]:
        params = {key: self.inner(value) for key, value in super().main_cf().items()}
        # bookworm's default list; trixie's own default covers the same maps.
        params.pop("proxy_read_maps", None)
        params["smtp_tls_enforce_sts_mx_patterns"] = "yes"
        return params

    def _write_config(self) -> None:
        super()._write_config()
        uid, gid = self._tree_ids("postfix")
        os.chown(self.data_dir, uid, gid)

    def _tree_ids(self, user: str) -> tuple[int, int]:
        for line in (self.tree / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise KeyError(f"no user {user} in {self.tree}/etc/passwd")

    def _allow_traversal(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory.resolve()
        while path != self.tree:
            mode = path.stat().st_mode
            if not mode & 0o001:
                path.chmod((mode & 0o7777) | 0o011)
            path = path.parent

    def command(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Postfix command of the tree against this instance's config."""
        from .postfix import PostfixError

        inner_argv = [self.inner(a) for a in argv]
        env = dict(os.environ, MAIL_CONFIG=self.inner(str(self.config_dir)))
        r = subprocess.run(
            [CHROOT, str(self.tree), *inner_argv],
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, env=env, timeout=timeout,
        )
        if check and r.returncode != 0:
            raise PostfixError(
                f"chroot {self.tree} {' '.join(inner_argv)} exited {r.returncode}:\n"
                f"{r.stdout}{r.stderr}\nmaillog tail:\n{self.log_tail()}"
            )
        return r
