"""
Debian trixie's Postfix 3.10 for the TLSRPT profile's tests: a minbase trixie
tree with Postfix, made by debootstrap once and cached by debian_tree.py
(``/var/cache/mxpolicyd-tests/trixie``, or ``$MXPOLICYD_TRIXIE_TREE``; the
pristine install tests use copies of it), and a private Postfix instance run inside it
with chroot(8). The tree shares the host's network namespace, so Postfix in it
reaches the daemon on 127.0.0.1, the validating resolver and the SMTP sinks.

Building takes about a minute with a reachable Debian mirror; the tree is
rebuilt only when it is missing or incomplete (no ``.complete`` stamp).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

from . import debian_tree
from .debian_tree import CHROOT, in_tree
from .postfix import Postfix

__all__ = ["TrixiePostfix", "ensure_tree", "in_tree", "postfix_version", "tree_path"]

DEFAULT_TREE = debian_tree.CACHE / "trixie"


def tree_path() -> Path:
    return Path(os.environ.get("MXPOLICYD_TRIXIE_TREE") or DEFAULT_TREE)


def ensure_tree(tree: Path, timeout: float = 900.0) -> Path:
    """The trixie tree with Postfix (debian_tree.py), built now if missing."""
    return debian_tree.ensure_tree("trixie", tree, include=["postfix"], timeout=timeout)


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
