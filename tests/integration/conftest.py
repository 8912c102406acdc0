"""
Session fixtures for the integration tests: the real servers start once per
pytest run (root is needed for the fixed addresses of addresses.py), daemons
start per test or per class, and a failing test shows the logs of the
daemons and servers it used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest

from .addresses import POLICY_ADDRESS, POLICY_PORT, RESOLVER_ADDRESS, RESOLVER_PORT
from .daemon import POSTMAP, Daemon
from .dnssec import KEYGEN, SIGNZONE
from .postfix import Postfix
from .servers import free_port
from .world import World, running_world

REQUIRED = {
    "/usr/sbin/nsd": "nsd",
    "/usr/sbin/unbound": "unbound",
    KEYGEN: "ldnsutils",
    SIGNZONE: "ldnsutils",
    "/usr/sbin/nginx": "nginx-light",
    POSTMAP: "postfix",
}

StartDaemon = Callable[..., Daemon]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """nsd, unbound, nginx, the test CA and a dead resolver, started once per session."""
    if os.geteuid() != 0:
        pytest.skip(
            f"integration tests need root (nginx listens on {POLICY_ADDRESS}:{POLICY_PORT}, "
            f"unbound on {RESOLVER_ADDRESS}:{RESOLVER_PORT}); run tests/run as root"
        )
    missing = [
        f"{path} (Debian package {pkg})"
        for path, pkg in REQUIRED.items()
        if not os.access(path, os.X_OK)
    ]
    if missing:
        pytest.fail(
            "integration tests need " + ", ".join(missing)
            + ": run tests/run as root to install them"
        )
    directory = tmp_path_factory.mktemp("world")
    with running_world(directory) as w:
        yield w


@pytest.fixture(scope="session")
def postfix(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postfix]:
    """
    One delivering Postfix instance for the session, resolving through the
    world's validating resolver and trusting the test CA; its policy tables
    point at a fixed TCP port and unix socket, where a daemon started with
    ``listen=postfix.policy_listen()`` answers.
    """
    address, port = world.resolver
    assert port == 53, f"smtp(8) reads resolv.conf, which cannot name port {port}"
    directory = tmp_path_factory.mktemp("postfix-delivery")
    instance = Postfix(
        directory,
        ca_file=world.ca.cert_path,
        nameserver=address,
        policy_port=free_port(),
        policy_socket=directory / "policy" / "mxpolicyd.sock",
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def start_daemon(world: World) -> Iterator[StartDaemon]:
    """
    ``start_daemon(state_directory=None, *overrides, listen=None)`` starts a
    daemon with the world's config plus overrides, listening on ``listen``
    (endpoint strings; by default a free port); every one is stopped after
    the test.
    """
    daemons: list[Daemon] = []

    def start(
        state_directory: Path | None = None,
        *overrides: Mapping[str, Mapping[str, Any]],
        listen: Sequence[str] | None = None,
    ) -> Daemon:
        daemon = world.new_daemon(state_directory, *overrides, listen=listen)
        daemons.append(daemon)
        return daemon.start()

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture(scope="class")
def shared_daemon(world: World) -> Iterator[Daemon]:
    """One daemon with a fresh store for all the tests of a class."""
    daemon = world.new_daemon().start()
    yield daemon
    daemon.stop()


# Tests of Debian trees rather than of the Python stack: tests/run runs them
# once, in its debian leg.
DEBIAN_LEG_ONLY = ("trixie", "pristine")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    MXPOLICYD_LEG=pypi (tests/run's pypi leg) deselects the tests marked
    with a DEBIAN_LEG_ONLY marker: trixie's Postfix 3.10 and the pristine
    installs test Debian, not the newest PyPI releases, so once is enough.
    """
    if os.environ.get("MXPOLICYD_LEG") != "pypi":
        return
    kept = [
        item for item in items
        if not any(item.get_closest_marker(m) for m in DEBIAN_LEG_ONLY)
    ]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


_first_daemon = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_first_daemon] = len(Daemon.started)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """
    Attach the logs of the daemons a failed test used, unbound's log,
    nginx's access log and, if it used Postfix, the maillog.
    """
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    first = item.stash.get(_first_daemon, len(Daemon.started))
    for i, daemon in enumerate(Daemon.started):
        if i >= first or daemon.running():
            report.sections.append(
                (f"mxpolicyd log {daemon.directory.name} ({report.when})", daemon.log_text())
            )
    funcargs = getattr(item, "funcargs", {})
    world = funcargs.get("world")
    if isinstance(world, World):
        unbound_log = world.unbound.log_text().splitlines()[-40:]
        report.sections.append(("unbound log (tail)", "\n".join(unbound_log)))
        report.sections.append(("nginx access log (tail)", world.nginx.access_log_tail()))
    postfix = funcargs.get("postfix")
    if isinstance(postfix, Postfix):
        report.sections.append(("postfix maillog (tail)", postfix.log_tail()))
