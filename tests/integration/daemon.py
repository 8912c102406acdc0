"""
mxpolicyd as a real subprocess, configured by a TOML file the tests write,
and Postfix's own ``postmap -q`` as the client that queries it over
socketmap, so the answers are checked the way Postfix reads them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple

from .servers import accepts_connections, die_with_parent, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTMAP = "/usr/sbin/postmap"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(config: Mapping[str, Mapping[str, Any]]) -> str:
    """Tables of scalars and lists, which is all mxpolicyd's config uses."""
    out = []
    for table, values in config.items():
        out.append(f"[{table}]")
        out += [f"{key} = {_toml_value(v)}" for key, v in values.items()]
        out.append("")
    return "\n".join(out)


def merge(
    base: Mapping[str, Mapping[str, Any]], *overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Merge config tables key by key; later overrides win."""
    merged = {table: dict(values) for table, values in base.items()}
    for override in overrides:
        for table, values in override.items():
            merged.setdefault(table, {}).update(values)
    return merged


class PostmapResult(NamedTuple):
    code: int
    stdout: str
    stderr: str


def postmap(
    key: str,
    name: str = "postfix",
    *,
    port: int,
    config_dir: Path,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
) -> PostmapResult:
    """
    ``postmap -q KEY socketmap:inet:HOST:PORT:NAME``. Found: the value alone
    on stdout, exit 0; NOTFOUND: silent, exit 1; TEMP/PERM: warning and
    "fatal: ... query error" on stderr, exit 1.
    """
    return _run_postmap(key, name, port, config_dir, host, None, timeout)


def postmap_many(
    keys: Iterable[str],
    name: str = "postfix",
    *,
    port: int,
    config_dir: Path,
    host: str = "127.0.0.1",
    timeout: float = 60.0,
) -> PostmapResult:
    """
    ``postmap -q - MAP < keys``: every key over one socketmap connection;
    each found key prints ``KEY<TAB>value``; exit 0 if any was found.
    """
    stdin = "".join(k + "\n" for k in keys)
    return _run_postmap("-", name, port, config_dir, host, stdin, timeout)


def _run_postmap(
    key: str,
    name: str,
    port: int,
    config_dir: Path,
    host: str,
    stdin: str | None,
    timeout: float,
) -> PostmapResult:
    table = f"socketmap:inet:{host}:{port}:{name}"
    r = subprocess.run(
        [POSTMAP, "-c", str(config_dir), "-q", key, table],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return PostmapResult(r.returncode, r.stdout, r.stderr)


def make_postfix_config(directory: Path) -> Path:
    """
    A private Postfix config directory for postmap: it never reads
    /etc/postfix and nothing here starts Postfix.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        "inet_protocols = ipv4\n"
    )
    return directory


class Daemon:
    """
    One ``python -m mxpolicyd --config FILE`` process. Several may share a
    state directory one after the other, to test restarts with a warm store.
    """

    # Every Daemon started; conftest shows their logs when a test fails.
    started: list["Daemon"] = []

    def __init__(
        self,
        directory: Path,
        config: Mapping[str, Mapping[str, Any]],
        postfix_config: Path,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = merge(
            config, {"socketmap": {"listen": [f"tcp:{self.port}:interface=127.0.0.1"]}}
        )
        self.config_path = directory / "mxpolicyd.toml"
        self.log_path = directory / "mxpolicyd.log"
        self.postfix_config = postfix_config
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def environment() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float = 15.0) -> "Daemon":
        self.config_path.write_text(toml_text(self.config))
        Daemon.started.append(self)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mxpolicyd", "--config", str(self.config_path)],
                cwd=REPO_ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not accepts_connections("127.0.0.1", self.port):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mxpolicyd exited with {self.process.returncode} before listening:\n"
                    + self.log_text()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mxpolicyd did not listen on 127.0.0.1:{self.port} within "
                    f"{timeout} s:\n" + self.log_text()
                )
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL; returns the exit status."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout)
        return process.returncode

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self, limit: int = 30000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def postmap(self, key: str, name: str = "postfix") -> PostmapResult:
        return postmap(key, name, port=self.port, config_dir=self.postfix_config)

    def postmap_many(self, keys: Iterable[str], name: str = "postfix") -> PostmapResult:
        return postmap_many(keys, name, port=self.port, config_dir=self.postfix_config)

    def cli(
        self, *args: str, config_path: Path | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m mxpolicyd ARGS --config FILE`` (this daemon's config by default)."""
        if config_path is None:
            config_path = self.config_path
            config_path.write_text(toml_text(self.config))
        return subprocess.run(
            [sys.executable, "-m", "mxpolicyd", *args, "--config", str(config_path)],
            cwd=REPO_ROOT,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
