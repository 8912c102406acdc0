"""
Tests for L{mxpolicyd.cli}: global options reach every subcommand, and the
daemon's log carries its own words, not Twisted's routine lines.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, cast

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import log as legacy
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd import cli
from mxpolicyd.net.redis import RedisClient

# Each command with what it needs besides the global options.
COMMANDS: dict[str, list[str]] = {
    "run": ["run"],
    "query": ["query", "example.test"],
    "explain": ["explain", "example.test"],
    "cache": ["cache", "list"],
    "check-config": ["check-config"],
    "import-config": ["import-config", "in.yml"],
}


class GlobalOptionTests(SynchronousTestCase):
    """--config and --debug mean the same before and after the subcommand."""

    def parse(self, *argv: str) -> Any:
        return cli.parser().parse_args(list(argv))

    def test_config_before_command(self) -> None:
        """`mxpolicyd --config F COMMAND` gives every command the file F."""
        for name, argv in COMMANDS.items():
            self.assertEqual(self.parse("--config", "F", *argv).config, "F", name)

    def test_config_after_command(self) -> None:
        """`mxpolicyd COMMAND --config F` gives every command the file F."""
        for name, argv in COMMANDS.items():
            self.assertEqual(self.parse(*argv, "--config", "F").config, "F", name)
            self.assertEqual(self.parse(*argv, "-c", "F").config, "F", name)

    def test_later_config_wins(self) -> None:
        """Given both ways, the --config after the subcommand wins."""
        for name, argv in COMMANDS.items():
            args = self.parse("--config", "A", *argv, "--config", "B")
            self.assertEqual(args.config, "B", name)

    def test_debug_both_ways(self) -> None:
        """--debug counts whether it comes before or after the subcommand."""
        for name, argv in COMMANDS.items():
            self.assertTrue(self.parse("--debug", *argv).debug, name)
            self.assertTrue(self.parse(*argv, "--debug").debug, name)

    def test_defaults(self) -> None:
        """With neither option, no file is named and debug is off."""
        for name, argv in COMMANDS.items():
            args = self.parse(*argv)
            self.assertEqual((args.config, args.debug), (None, False), name)
        args = self.parse()
        self.assertIs(args.func, cli.cmd_run)


class CommandConfigTests(SynchronousTestCase):
    """Each command acts on the file --config names, in either position."""

    def setUp(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir(parents=True)
        self.socket = str(directory / "socketmap.sock")
        self.control = str(directory / "control.sock")
        self.path = str(directory / "mxpolicyd.toml")
        Path(self.path).write_text(
            '[socketmap]\nlisten = ["unix:%s"]\n[control]\nsocket = "%s"\n'
            '[daemon]\nstate_directory = "%s"\n' % (self.socket, self.control, directory)
        )
        self.broken = str(directory / "broken.toml")
        Path(self.broken).write_text("[dns]\ntimeout = 'soon'\n")

    def main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(list(argv))
            except SystemExit as e:
                return int(e.code or 0), out.getvalue(), err.getvalue()
        raise AssertionError("cli.main returned without SystemExit")

    def both_ways(self, path: str, *argv: str) -> list[tuple[int, str, str]]:
        return [self.main("--config", path, *argv), self.main(*argv, "--config", path)]

    def test_check_config(self) -> None:
        """check-config reports the named file's listener, either way round."""
        for code, out, err in self.both_ways(self.path, "check-config"):
            self.assertEqual(code, cli.EXIT_FOUND, err)
            self.assertIn(self.path, out)
            self.assertIn("unix:" + self.socket, out)

    def test_query_asks_configured_listener(self) -> None:
        """query connects to the named file's socketmap listener, either way round."""
        asked: list[Any] = []

        def request(family: int, address: Any, name: str, key: bytes) -> bytes:
            asked.append(address)
            return b"OK secure"

        self.patch(cli, "socketmap_request", request)
        for code, out, err in self.both_ways(self.path, "query", "example.test"):
            self.assertEqual((code, out), (cli.EXIT_FOUND, "example.test\tsecure\n"), err)
        self.assertEqual(asked, [self.socket, self.socket])

    def test_cache_uses_configured_control_socket(self) -> None:
        """cache talks to the named file's control socket, either way round."""
        asked: list[str] = []

        def request(path: str, request: dict[str, Any]) -> dict[str, Any]:
            asked.append(path)
            return {"count": 0, "domains": []}

        self.patch(cli, "control_request", request)
        for code, out, err in self.both_ways(self.path, "cache", "list", "--json"):
            self.assertEqual(code, cli.EXIT_FOUND, err)
            self.assertEqual(json.loads(out)["count"], 0)
        self.assertEqual(asked, [self.control, self.control])

    def test_explain_reads_the_file(self) -> None:
        """explain refuses a broken --config file, either way round, naming its key."""
        for code, out, err in self.both_ways(self.broken, "explain", "example.test"):
            self.assertEqual(code, cli.EXIT_ERROR, out)
            self.assertIn("timeout", err)
            self.assertIn(self.broken, err)

    def test_query_debug_shows_exchange(self) -> None:
        """query --debug, either way round, shows where it asked and the reply."""
        self.patch(cli, "socketmap_request", lambda *a: b"NOTFOUND ")
        self.patch(cli, "_begin_logging", lambda level: None)
        for argv in (["--debug", "query", "x.test"], ["query", "x.test", "--debug"]):
            code, out, err = self.main("--config", self.path, *argv)
            self.assertEqual(code, cli.EXIT_NOTFOUND)
            self.assertIn(self.socket, err)
            self.assertIn("NOTFOUND", err)

    def test_import_config_refuses_config(self) -> None:
        """import-config says it does not read --config instead of ignoring it."""
        for code, out, err in self.both_ways(self.path, "import-config", "in.yml"):
            self.assertEqual(code, cli.EXIT_ERROR)
            self.assertIn("does not read", err)


class ControlServer:
    """A unix socket server in a thread that answers one connection with C{reply}, then closes."""

    def __init__(self, path: str, reply: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.settimeout(10)
        self.reply = reply
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            if self.reply:
                conn.recv(4096)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.thread.join(10)
        self.sock.close()


class ControlClientTests(SynchronousTestCase):
    """What `mxpolicyd cache` says when the daemon closes the control connection."""

    def setUp(self) -> None:
        # A short directory: a unix socket's path has room for 107 bytes.
        directory = tempfile.mkdtemp(prefix="mxpolicyd-cli-")
        self.addCleanup(shutil.rmtree, directory)
        self.control = os.path.join(directory, "control.sock")
        self.path = os.path.join(directory, "mxpolicyd.toml")
        Path(self.path).write_text('[control]\nsocket = "%s"\n[daemon]\nstate_directory = "%s"\n'
                                   % (self.control, directory))

    main = CommandConfigTests.main

    def serve(self, reply: bytes) -> None:
        server = ControlServer(self.control, reply)
        self.addCleanup(server.close)

    def test_closed_without_answer(self) -> None:
        """A connection closed unanswered (the daemon at its limit) is explained, not a JSON error."""
        self.serve(b"")
        code, out, err = self.main("--config", self.path, "cache", "list")
        self.assertEqual(code, cli.EXIT_ERROR)
        self.assertIn("control socket %s: the daemon closed the connection without "
                      "answering; it may be at its limit of 16 control connections" % self.control,
                      err)
        self.assertNotIn("Expecting value", err)

    def test_reply_cut_off(self) -> None:
        """A reply without its end is reported as cut off."""
        self.serve(b'{"count": 1, "dom')
        code, out, err = self.main("--config", self.path, "cache", "list")
        self.assertEqual(code, cli.EXIT_ERROR)
        self.assertIn("closed the connection in the middle of its reply (17 bytes received)",
                      err)

    def test_whole_reply(self) -> None:
        """A whole reply is read and shown."""
        self.serve(b'{"count": 0, "domains": []}\n')
        code, out, err = self.main("--config", self.path, "cache", "list", "--json")
        self.assertEqual((code, json.loads(out)), (cli.EXIT_FOUND, {"count": 0, "domains": []}))

    def test_no_daemon(self) -> None:
        """No daemon at all is still 'cannot reach'."""
        code, out, err = self.main("--config", self.path, "cache", "list")
        self.assertEqual(code, cli.EXIT_ERROR)
        self.assertIn("cannot reach the daemon at %s" % self.control, err)


class TwistedChatterTests(SynchronousTestCase):
    """Twisted's routine lines stay out of the log; the daemon's own lines stay in."""

    def lines(self, *legacy_messages: str) -> list[str]:
        out = io.StringIO()
        publisher = LogPublisher(cli._observer(out, LogLevel.info))
        old = legacy.LogPublisher(observerPublisher=publisher, publishPublisher=publisher)
        for message in legacy_messages:
            old.msg(message)
        Logger(observer=publisher, namespace="mxpolicyd").info("SocketmapFactory starting on 1")
        return out.getvalue().splitlines()

    def test_listener_and_shutdown_lines_dropped(self) -> None:
        """Port start and close lines and the reactor's shutdown lines are dropped."""
        self.assertEqual(self.lines(
            "SocketmapFactory starting on 8461",
            "ControlFactory starting on '/run/mxpolicyd/control.sock'",
            "_DatagramQuery starting on 40001",
            "(TCP Port 8461 Closed)",
            "(UNIX Port /run/mxpolicyd/control.sock Closed)",
            "(UDP Port 40001 Closed)",
            "Received SIGTERM, shutting down.",
            "Main loop terminated.",
        ), ["SocketmapFactory starting on 1"])

    def test_client_service_retries_dropped(self) -> None:
        """ClientService's line per retry is dropped; the Redis client's own outage line stays."""
        events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        reactor = MemoryReactorClock()
        RedisClient(reactor, "tcp:127.0.0.1:6390").start()
        _, _, factory, _, _ = reactor.tcpClients[-1]
        factory.clientConnectionFailed(reactor.connectors[-1], Failure(ConnectionRefusedError()))
        retries = [e for e in events if formatEvent(e).startswith("Scheduling retry 1 ")]
        self.assertEqual(len(retries), 1, "this Twisted's ClientService says it retries")
        self.assertEqual(retries[0]["log_level"], LogLevel.info)
        out = io.StringIO()
        daemon = cli._observer(out, LogLevel.info)
        for event in events:
            daemon(event)
        lines = out.getvalue().splitlines()
        self.assertEqual([line for line in lines if "Scheduling retry" in line], [])
        self.assertEqual(len([line for line in lines
                              if line.startswith("Cannot connect to Redis at tcp:127.0.0.1:6390")]), 1)

    def test_other_legacy_lines_kept(self) -> None:
        """Other lines from Twisted, and the same words from the daemon, are kept."""
        self.assertEqual(
            self.lines("Unhandled error in Deferred", "starting on fire"),
            ["Unhandled error in Deferred", "starting on fire", "SocketmapFactory starting on 1"],
        )

    def test_newer_twisted_shutdown_lines_dropped(self) -> None:
        """Newer Twisted logs its shutdown lines from twisted.internet: dropped too."""
        out = io.StringIO()
        publisher = LogPublisher(cli._observer(out, LogLevel.info))
        base = Logger(observer=publisher, namespace="twisted.internet.base")
        base.info("Received SIGTERM, shutting down.")
        base.info("Main loop terminated.")
        base.error("Unexpected error in main loop.")
        self.assertEqual(out.getvalue().splitlines(), ["Unexpected error in main loop."])
