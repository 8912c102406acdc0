"""
Session fixtures for the integration tests: the real servers start once per
pytest run (root is needed for nginx on port 443), daemons start per test or
per class, and a failing test shows the logs of the daemons it used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import pytest

from .daemon import POSTMAP, Daemon
from .dnssec import KEYGEN, SIGNZONE
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
            "integration tests need root (nginx listens on 127.0.0.44:443, "
            "unbound on 127.0.0.35:53); run tests/run as root"
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


@pytest.fixture
def start_daemon(world: World) -> Iterator[StartDaemon]:
    """
    ``start_daemon(state_directory=None, *overrides)`` starts a daemon with
    the world's config plus overrides; every one is stopped after the test.
    """
    daemons: list[Daemon] = []

    def start(
        state_directory: Path | None = None, *overrides: Mapping[str, Mapping[str, Any]]
    ) -> Daemon:
        daemon = world.new_daemon(state_directory, *overrides)
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


_first_daemon = pytest.StashKey[int]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_first_daemon] = len(Daemon.started)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the logs of the daemons a failed test used, unbound's log and nginx's access log."""
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
    world = getattr(item, "funcargs", {}).get("world")
    if isinstance(world, World):
        unbound_log = world.unbound.log_text().splitlines()[-40:]
        report.sections.append(("unbound log (tail)", "\n".join(unbound_log)))
        report.sections.append(("nginx access log (tail)", world.nginx.access_log_tail()))
