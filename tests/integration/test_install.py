"""
The README's two ways to install mxpolicyd, proven in pristine Debian roots
(debian_tree.py): README.md's command 1, copied verbatim, in a fresh bookworm
minbase tree, and the .deb that packaging/build-deb makes, installed with apt
in a fresh trixie tree and started as its unit's ExecStart. Each test works on
a throwaway copy of a cached tree, so a missing package, a broken pip step or
a wrong dependency of the package fails CI here rather than on a user's machine.

The daemons take the default listener, 127.0.0.1:8461. The trees' resolv.conf
names the test world's validating resolver, so the daemons' own lookups stay on
loopback (and a DANE domain of the world gets its real answer); apt reaches the
Debian mirror through its address pinned in the copy's /etc/hosts.

Marked ``pristine``: tests/run runs them in its debian leg only (they test the
install, not the Python stack); ``tests/run -m pristine`` runs just them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

import pytest
from twisted.trial.unittest import SynchronousTestCase

from . import trixie
from .addresses import DEFAULT_ADDRESS, DEFAULT_PORT, ensure_free, holder
from .daemon import POSTMAP, REPO_ROOT, make_postfix_config, toml_text
from .debian_tree import (
    CACHE,
    CHROOT,
    TREE_ENV,
    ensure_tree,
    forbid_service_starts,
    in_tree,
    pin_mirror,
    scratch_copy,
)
from .servers import accepts_connections, die_with_parent
from .world import World

pytestmark = [pytest.mark.integration, pytest.mark.pristine]

BOOKWORM_TREE = CACHE / "bookworm"
# Where command 1 runs: "from this directory", the project's source.
SOURCE = "/root/mxpolicyd"
# A key the daemon answers NOTFOUND without any lookup.
NO_LOOKUP_KEY = "[192.0.2.1]"
# A DANE domain of the test world, answered through its validating resolver.
DANE_DOMAIN, DANE_ANSWER = "daneonly.test", "dane-only"
MAP = f"socketmap:inet:{DEFAULT_ADDRESS}:{DEFAULT_PORT}:postfix"
# mxpolicyd query's exit statuses.
FOUND, NOT_FOUND = 0, 1
# The libraries command 1 must take from Debian, by import name.
DEBIAN_LIBRARIES = ("twisted", "treq", "dns", "OpenSSL", "service_identity", "idna",
                    "prometheus_client")
DIST_PACKAGES = "/usr/lib/python3/dist-packages/"
# What `python3 -m venv` itself puts in a venv (ensurepip), besides what pip installs.
VENV_OWN = {"pip", "setuptools"}


def readme_commands(text: str) -> list[str]:
    """
    The commands of README.md's first ``sh`` block: each line that is neither
    blank nor a comment. The shape is checked so that a reworded README fails
    here, loudly, instead of running something else.
    """
    block = re.search(r"^```sh\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    if block is None:
        raise ValueError("README.md has no ```sh block; test_install.py runs its command 1")
    commands = [
        line for line in block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if (
        len(commands) != 2
        or any(c.rstrip().endswith("\\") for c in commands)
        or not re.search(r"&& \.venv/bin/mxpolicyd( [^&|;<>]*)?$", commands[0].rstrip())
        or "tests/run" not in commands[1]
    ):
        raise ValueError(
            "README.md's first ```sh block changed shape: test_install.py expects two "
            "one-line commands, 1 installing and running the daemon in the foreground "
            "(ending with `&& .venv/bin/mxpolicyd [options]`) and 2 running tests/run; found "
            f"{commands!r}"
        )
    return commands


def copy_source(tree: Path) -> Path:
    """
    The project's files as git sees them in the working tree (tracked and
    untracked, less the ignored: so uncommitted edits count, and no .venv or
    .git), copied to ``SOURCE`` in the tree.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    destination = tree / SOURCE.lstrip("/")
    for name in filter(None, listed):
        source = REPO_ROOT / name
        if not os.path.lexists(source):
            continue  # deleted in the working tree, not yet in git
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return destination


def processes_rooted_in(tree: Path) -> list[int]:
    """The processes whose root directory is ``tree``: what runs chrooted in it."""
    root = str(tree.resolve())
    pids = []
    for link in Path("/proc").glob("[0-9]*/root"):
        with contextlib.suppress(OSError):
            if os.readlink(link) == root:
                pids.append(int(link.parent.name))
    return pids


def tree_command(env: dict[str, str], argv: Sequence[str]) -> list[str]:
    """chroot(8) argv that runs ``argv`` with exactly ``env``, nothing of the test run's."""
    return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


class TreeProcess:
    """
    A long-running command in a tree, in its own process group (as a shell
    runs a foreground job), its output in a log file.
    """

    def __init__(self, tree: Path, argv: Sequence[str], log: Path) -> None:
        self.tree = tree
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [CHROOT, str(tree), *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )

    def log_text(self, limit: int = 12000) -> str:
        try:
            return self.log.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_listening(self, timeout: float, what: str) -> None:
        """Until the default listener accepts; fails with the log if the command exits first."""
        deadline = time.monotonic() + timeout
        while not accepts_connections(DEFAULT_ADDRESS, DEFAULT_PORT):
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{what} exited {self.process.returncode} before listening on "
                    f"{DEFAULT_ADDRESS}:{DEFAULT_PORT}:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} did not listen on {DEFAULT_ADDRESS}:{DEFAULT_PORT} within "
                    f"{timeout:.0f} s:\n{self.log_text()}"
                )
            time.sleep(0.2)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the process group; the exit status, or None if it outlives ``timeout``."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL to the group and to anything else still running in the tree."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in processes_rooted_in(self.tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


@pytest.fixture(scope="session")
def mxpolicyd_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The .deb tests/run built once for the whole run ($MXPOLICYD_DEB, which
    packaging/smoke-test installs too), or one packaging/build-deb builds now.
    """
    given = os.environ.get("MXPOLICYD_DEB")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"MXPOLICYD_DEB={given} is not a file")
        return Path(given)
    out = tmp_path_factory.mktemp("deb")
    r = subprocess.run(
        [str(REPO_ROOT / "packaging" / "build-deb"), str(out)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900,
    )
    if r.returncode != 0:
        pytest.fail(f"packaging/build-deb failed ({r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    debs = sorted(out.glob("mxpolicyd_*_all.deb"))
    if len(debs) != 1:
        pytest.fail(f"packaging/build-deb left {debs} in {out}, not one .deb")
    return debs[0]


class PristineTestCase(SynchronousTestCase):
    """A test on a scratch copy of a cached Debian tree, with the default port to itself."""

    world: World
    tmp_path: Path

    @pytest.fixture(autouse=True)
    def _pristine(self, world: World, tmp_path: Path) -> None:
        self.world = world
        self.tmp_path = tmp_path

    @contextlib.contextmanager
    def scratch(self, cached: Path) -> Iterator[Path]:
        """
        A copy of ``cached`` whose apt reaches the mirror and whose resolv.conf
        names the world's resolver; the default port must be free before.
        """
        ensure_free(DEFAULT_ADDRESS, DEFAULT_PORT, "the daemon of a pristine install test")
        with scratch_copy(cached, self.tmp_path / cached.name) as tree:
            address, port = self.world.resolver
            assert port == 53, f"resolv.conf cannot name port {port}"
            (tree / "etc" / "resolv.conf").write_text(
                f"nameserver {address}\noptions trust-ad\n"
            )
            pin_mirror(tree)
            try:
                yield tree
            finally:
                # Whatever a failed command left behind goes before the copy does.
                for pid in processes_rooted_in(tree):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    def assertHeldByTree(self, tree: Path) -> None:
        """The default listener belongs to a process in ``tree``, not to someone else's daemon."""
        held = holder(DEFAULT_ADDRESS, DEFAULT_PORT)
        pids = {int(p) for p in re.findall(r"pid (\d+)", held)}
        self.assertTrue(pids and pids <= set(processes_rooted_in(tree)), held)

    def assertQueries(
        self, query: Sequence[str], postmap: Sequence[str], env: dict[str, str], tree: Path
    ) -> None:
        """
        ``query KEY`` (mxpolicyd query in the tree) and ``postmap KEY``: NOTFOUND
        for a key that needs no lookup, and the world's answer for a DANE
        domain (after its first evaluation, which may still be pending).
        """
        r = in_tree(tree, tree_command(env, [*query, NO_LOOKUP_KEY]))
        self.assertEqual((r.returncode, r.stdout, r.stderr), (NOT_FOUND, "", ""))
        p = subprocess.run(
            [*postmap, NO_LOOKUP_KEY, MAP], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((p.returncode, p.stdout, p.stderr), (1, "", ""), "postmap: NOTFOUND")
        deadline = time.monotonic() + 20
        while True:
            r = in_tree(tree, tree_command(env, [*query, DANE_DOMAIN]))
            if r.returncode == FOUND or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        self.assertEqual(
            (r.returncode, r.stdout, r.stderr), (FOUND, f"{DANE_DOMAIN}\t{DANE_ANSWER}\n", "")
        )
        p = subprocess.run(
            [*postmap, DANE_DOMAIN, MAP], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual((p.returncode, p.stdout, p.stderr), (0, f"{DANE_ANSWER}\n", ""))

    def assertStops(self, daemon: TreeProcess, what: str) -> None:
        """
        SIGTERM to the group, as a terminal's job control or a service manager
        sends it: ``what`` exits 0 within 10 s, leaving nothing running in the
        tree and nothing on the port.
        """
        code = daemon.terminate(10.0)
        self.assertEqual(code, 0, f"{what} on SIGTERM (None: still running after 10 s):\n"
                         + daemon.log_text())
        self.assertEqual(processes_rooted_in(daemon.tree), [], "left running in the tree")
        self.assertFalse(
            accepts_connections(DEFAULT_ADDRESS, DEFAULT_PORT),
            f"{DEFAULT_ADDRESS}:{DEFAULT_PORT} still accepts: {holder(DEFAULT_ADDRESS, DEFAULT_PORT)}",
        )


class ReadmeCommandTests(PristineTestCase):
    """README.md's command 1, verbatim, as root in a fresh Debian bookworm minbase tree."""

    def test_command_1(self) -> None:
        """Command 1 installs from the mirror, runs the daemon on Debian's libraries, and it answers."""
        command = readme_commands((REPO_ROOT / "README.md").read_text())[0]
        try:
            cached = ensure_tree("bookworm", BOOKWORM_TREE)
        except RuntimeError as e:
            pytest.fail(str(e))
        with self.scratch(cached) as tree:
            copy_source(tree)
            # As typed into a root shell: the trap plays the interactive shell,
            # which SIGTERM does not kill, so that the job's status is the
            # daemon's. No PIP_* or proxy settings come in: pip can reach no
            # index (the tree resolves only test. names), so it must need
            # nothing from PyPI.
            script = f"trap : TERM; cd {SOURCE} && {command}"
            daemon = TreeProcess(
                tree, tree_command(TREE_ENV, ["/bin/bash", "-c", script]),
                self.tmp_path / "command-1.log",
            )
            try:
                daemon.wait_listening(600, "README command 1")
                self.assertHeldByTree(tree)
                self.assertVenvOnDebian(tree)
                self.assertQueries(
                    [f"{SOURCE}/.venv/bin/mxpolicyd", "query"],
                    [POSTMAP, "-c", str(make_postfix_config(self.tmp_path / "postfix")), "-q"],
                    TREE_ENV, tree,
                )
                self.assertStops(daemon, "the daemon of README command 1")
            except BaseException:
                print(f"README command 1 (its log, tail):\n{daemon.log_text()}")
                raise
            finally:
                daemon.kill()

    def assertVenvOnDebian(self, tree: Path) -> None:
        """The venv imports Debian's libraries, and pip installed mxpolicyd alone into it."""
        python = f"{SOURCE}/.venv/bin/python"
        names = ", ".join(DEBIAN_LIBRARIES + ("mxpolicyd",))
        r = in_tree(tree, tree_command(TREE_ENV, [
            python, "-c",
            f"import json, {names}; "
            f"print(json.dumps({{m.__name__: m.__file__ for m in ({names})}}))",
        ]))
        self.assertEqual(r.returncode, 0, r.stderr)
        paths = json.loads(r.stdout)
        elsewhere = {
            name: path for name, path in paths.items()
            if name in DEBIAN_LIBRARIES and not path.startswith(DIST_PACKAGES)
        }
        self.assertEqual(elsewhere, {}, f"not Debian's packages (under {DIST_PACKAGES})")
        self.assertTrue(paths["mxpolicyd"].startswith(f"{SOURCE}/.venv/lib/"), paths["mxpolicyd"])
        sites = list((tree / SOURCE.lstrip("/") / ".venv" / "lib").glob("python3*/site-packages"))
        self.assertEqual(len(sites), 1, sites)
        env = dict(TREE_ENV, PIP_DISABLE_PIP_VERSION_CHECK="1")
        r = in_tree(tree, tree_command(env, [
            python, "-m", "pip", "list", "--format", "json",
            "--path", "/" + str(sites[0].relative_to(tree)),
        ]))
        self.assertEqual(r.returncode, 0, r.stderr)
        installed = {entry["name"].lower() for entry in json.loads(r.stdout)}
        self.assertEqual(installed - VENV_OWN, {"mxpolicyd"})


class DebianPackageTests(PristineTestCase):
    """The .deb, installed with apt into a fresh Debian trixie tree and started as its unit does."""

    deb: Path

    @pytest.fixture(autouse=True)
    def _deb(self, mxpolicyd_deb: Path) -> None:
        self.deb = mxpolicyd_deb

    def test_package(self) -> None:
        """apt installs the .deb with its dependencies; ExecStart runs as _mxpolicyd on trixie and answers."""
        deb = self.deb
        try:
            cached = trixie.ensure_tree(trixie.tree_path())
        except RuntimeError as e:
            pytest.fail(str(e))
        with self.scratch(cached) as tree:
            forbid_service_starts(tree)
            shutil.copyfile(deb, tree / "root" / deb.name)
            apt_env = dict(TREE_ENV, DEBIAN_FRONTEND="noninteractive")
            r = in_tree(tree, tree_command(apt_env, [
                "/bin/bash", "-c",
                f"cd /root && apt-get update && apt-get install -y ./{shlex.quote(deb.name)}",
            ]), timeout=600)
            self.assertEqual(r.returncode, 0, f"apt-get install:\n{(r.stdout + r.stderr)[-6000:]}")
            python = self.assertTrixieStack(tree)

            r = in_tree(tree, ["/bin/sed", "-n", "s/^ExecStart=//p",
                               "/lib/systemd/system/mxpolicyd.service"])
            exec_start = shlex.split(r.stdout.strip())
            self.assertTrue(exec_start, f"no ExecStart in mxpolicyd.service: {r.stderr}")
            address, port = self.world.resolver
            (tree / "etc" / "mxpolicyd" / "conf.d" / "50-pristine-test.toml").write_text(toml_text(
                {"dns": {"nameservers": [address], "port": port, "timeout": 1.0}}
            ))
            # What systemd does for StateDirectory= and RuntimeDirectory=.
            r = in_tree(tree, ["install", "-d", "-o", "_mxpolicyd", "-g", "_mxpolicyd",
                               "-m", "0750", "/var/lib/mxpolicyd", "/run/mxpolicyd"])
            self.assertEqual(r.returncode, 0, r.stderr)
            service_env = dict(
                TREE_ENV, STATE_DIRECTORY="/var/lib/mxpolicyd",
                RUNTIME_DIRECTORY="/run/mxpolicyd",
            )
            del service_env["HOME"]
            daemon = TreeProcess(tree, tree_command(service_env, [
                "setpriv", "--reuid=_mxpolicyd", "--regid=_mxpolicyd", "--init-groups",
                "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", *exec_start,
            ]), self.tmp_path / "daemon.log")
            try:
                daemon.wait_listening(30, "the packaged daemon")
                self.assertHeldByTree(tree)
                executable = os.readlink(f"/proc/{daemon.process.pid}/exe")
                self.assertEqual(os.path.basename(executable), f"python{python}", executable)
                make_postfix_config(tree / "root" / "postfix")
                self.assertQueries(
                    ["/usr/bin/mxpolicyd", "query"],
                    [CHROOT, str(tree), "/usr/sbin/postmap", "-c", "/root/postfix", "-q"],
                    TREE_ENV, tree,
                )
                self.assertStops(daemon, "the packaged daemon")
            except BaseException:
                print(f"the packaged daemon's log (tail):\n{daemon.log_text()}")
                raise
            finally:
                daemon.kill()

    def assertTrixieStack(self, tree: Path) -> str:
        """
        The tree's python3 is trixie's 3.13, whose Twisted is python3-twisted's;
        returns the "3.13" the daemon's interpreter is named by.
        """
        r = in_tree(tree, tree_command(TREE_ENV, [
            "/usr/bin/python3", "-c",
            "import sys, twisted; print('%d.%d' % sys.version_info[:2], twisted.__version__)",
        ]))
        self.assertEqual(r.returncode, 0, r.stderr)
        python, twisted_version = r.stdout.split()
        self.assertEqual(python, "3.13")
        r = in_tree(tree, ["dpkg-query", "-W", "-f", "${Version}", "python3-twisted"])
        self.assertEqual(r.stdout.split("-")[0], twisted_version, r.stderr)
        return python
