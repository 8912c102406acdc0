"""
mxpolicyd as a real subprocess, configured by a TOML file the tests write,
and Postfix's own ``postmap -q`` as the client that queries it over
socketmap, so the answers are checked the way Postfix reads them.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from .servers import accepts_connections, die_with_parent, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
POSTMAP = "/usr/sbin/postmap"


def _toml_value(value: Any) -> str:
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
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
    """Tables of scalars (dates too) and lists, which is all mxpolicyd's config uses."""
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


class Listener(NamedTuple):
    """Where a ``socketmap.listen`` entry accepts connections: a TCP address or a unix path."""

    family: int
    address: tuple[str, int] | str

    @classmethod
    def parse(cls, description: str) -> Listener:
        """
        A ``tcp:PORT:interface=IP`` or ``unix:PATH[:options]`` endpoint string;
        a TCP listener must name a loopback interface, as no test may listen
        beyond the machine.
        """
        kind, *parts = description.split(":")
        options = dict(p.split("=", 1) for p in parts if "=" in p)
        positional = [p for p in parts if "=" not in p]
        if kind == "unix" and (positional or "address" in options):
            return cls(socket.AF_UNIX, positional[0] if positional else options["address"])
        if kind == "tcp" and (positional or "port" in options):
            interface = options.get("interface", "")
            try:
                loopback = ipaddress.ip_address(interface).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise ValueError(
                    f"listen entry {description!r} must name a loopback interface "
                    "(interface=127.0.0.1)"
                )
            port = int(positional[0] if positional else options["port"])
            return cls(socket.AF_INET, (interface, port))
        raise ValueError(
            f"listen entry {description!r}: the harness knows only tcp:PORT:interface=IP "
            "and unix:PATH"
        )

    def accepts_connections(self) -> bool:
        if isinstance(self.address, tuple):
            return accepts_connections(*self.address)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.connect(self.address)
            except OSError:
                return False
            return True

    def __str__(self) -> str:
        if isinstance(self.address, tuple):
            return "{}:{}".format(*self.address)
        return self.address


class Daemon:
    """
    One ``python -m mxpolicyd --config FILE`` process, listening where
    ``listen`` (endpoint strings) says, by default on 127.0.0.1 at a free
    port. Several may share a state directory one after the other, to test
    restarts with a warm store.
    """

    # Every Daemon started; conftest shows their logs when a test fails.
    started: list["Daemon"] = []

    def __init__(
        self,
        directory: Path,
        config: Mapping[str, Mapping[str, Any]],
        postfix_config: Path,
        listen: Sequence[str] | None = None,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        if listen is None:
            listen = [f"tcp:{free_port()}:interface=127.0.0.1"]
        self.listeners = [Listener.parse(entry) for entry in listen]
        self.config = merge(config, {"socketmap": {"listen": list(listen)}})
        self.config_path = directory / "mxpolicyd.toml"
        self.log_path = directory / "mxpolicyd.log"
        self.postfix_config = postfix_config
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def tcp_address(self) -> tuple[str, int]:
        """The first TCP listener, which ``postmap`` and the CLI ask."""
        for listener in self.listeners:
            if isinstance(listener.address, tuple):
                return listener.address
        raise ValueError(f"{self.directory.name} has no TCP listener")

    @property
    def port(self) -> int:
        return self.tcp_address[1]

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
        while waiting := [str(x) for x in self.listeners if not x.accepts_connections()]:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mxpolicyd exited with {self.process.returncode} before listening:\n"
                    + self.log_text()
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"mxpolicyd did not listen on {', '.join(waiting)} within "
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
        host, port = self.tcp_address
        return postmap(key, name, host=host, port=port, config_dir=self.postfix_config)

    def postmap_many(self, keys: Iterable[str], name: str = "postfix") -> PostmapResult:
        host, port = self.tcp_address
        return postmap_many(keys, name, host=host, port=port, config_dir=self.postfix_config)

    def cli(
        self,
        *args: str,
        config_path: Path | None = None,
        config_first: bool = False,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run ``python -m mxpolicyd ARGS --config FILE`` (this daemon's config by
        default), or ``python -m mxpolicyd --config FILE ARGS`` with ``config_first``.
        """
        if config_path is None:
            config_path = self.config_path
            config_path.write_text(toml_text(self.config))
        option = ["--config", str(config_path)]
        argv = [*option, *args] if config_first else [*args, *option]
        return subprocess.run(
            [sys.executable, "-m", "mxpolicyd", *argv],
            cwd=REPO_ROOT,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
