"""
The command line: run the daemon, ask it, or evaluate a domain directly.

C{mxpolicyd} with no subcommand runs the daemon.  The administrator's
subcommands print for people by default and for scripts with C{--json}; exit
codes follow postmap where they can (0 found, 1 not found) and sysexits
otherwise (75 temporary failure, 2 usage or configuration error).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import time
from typing import Any, Sequence, TextIO, cast

from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)

from mxpolicyd import __version__
from mxpolicyd.config.load import Config, ConfigError, load
from mxpolicyd.evidence.names import normalise
from mxpolicyd.ops.times import utc
from mxpolicyd.protocols.control import MAX_CONNECTIONS as CONTROL_CONNECTIONS
from mxpolicyd.protocols.control import REQUEST_TIMEOUT as CONTROL_REQUEST_TIMEOUT
from mxpolicyd.protocols.socketmap import netstring

EXIT_FOUND = 0
EXIT_NOTFOUND = 1
EXIT_ERROR = 2
EXIT_TEMPFAIL = 75


def _observer(stream: TextIO, level: LogLevel) -> FilteringLogObserver:
    """
    One line per event: level and text, no timestamp (journald and
    syslog add their own), tracebacks indented under it.
    """

    def emit(event: dict[str, Any]) -> None:
        text = formatEvent(event)
        if _twisted_chatter(event, text):
            return
        if "log_failure" in event:
            text += "\n" + event["log_failure"].getTraceback().rstrip()
        ev_level = event.get("log_level", LogLevel.info)
        prefix = "<%d>" % _SYSLOG.get(ev_level, 6) if _journald(stream) else ""
        for i, line in enumerate(text.splitlines() or [""]):
            stream.write("%s%s%s\n" % (prefix, "" if i == 0 else "    ", line))
        stream.flush()

    return FilteringLogObserver(
        cast(ILogObserver, emit), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )


# What Twisted logs unconditionally (through its legacy log.msg, or from
# twisted.internet in newer releases): every port's
# opening and closing (one pair per DNS query over UDP, which would drown the
# log), and its own words on shutdown.  The daemon says once, in its own
# words, where it listens and that it stops.  ClientService (the Redis
# client's reconnection) says at info when it retries, every time: the
# client says it once per outage.
_TWISTED_CHATTER = re.compile(
    r".+ starting on (?:\d+|b?'.*')"
    r"|\((?:TCP |UDP |UNIX )?Port .+ Closed\)"
    r"|Received SIG[A-Z]+, shutting down\."
    r"|Main loop terminated\."
    r"|Scheduling retry \d+ to connect .+ in \S+ seconds\."
)


def _twisted_chatter(event: dict[str, Any], text: str) -> bool:
    """Whether C{event} is one of Twisted's routine lines (never one of ours)."""
    namespace = event.get("log_namespace") or ""
    return ((namespace == "log_legacy"
             or namespace.startswith(("twisted.internet.", "twisted.application.")))
            and "log_failure" not in event
            and not event.get("isError")
            and _TWISTED_CHATTER.fullmatch(text) is not None)

_SYSLOG = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


def _journald(stream: TextIO) -> bool:
    import os

    return stream is sys.stderr and bool(os.environ.get("JOURNAL_STREAM"))


def _begin_logging(level: LogLevel) -> None:
    globalLogBeginner.beginLoggingTo([_observer(sys.stderr, level)], redirectStandardIO=False)


def _debug(args: argparse.Namespace, what: str, data: Any) -> None:
    """With --debug, an administrator's command shows what it exchanged."""
    if args.debug:
        print("mxpolicyd: %s %s" % (what, data if isinstance(data, str) else repr(data)),
              file=sys.stderr)


def _load(args: argparse.Namespace) -> Config:
    try:
        return load(args.config)
    except ConfigError as e:
        print("mxpolicyd: configuration error: %s" % (e,), file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def _check_listeners(config: Config, reactor: Any) -> None:
    from twisted.internet import endpoints

    for key, descriptions in (("socketmap.listen", config.socketmap.listen),
                              ("exim.listen", config.exim.listen)):
        for description in descriptions:
            if description.startswith("systemd:") and "LISTEN_FDS" not in os.environ:
                # Socket activation: only the service has the descriptors.
                continue
            try:
                endpoints.serverFromString(reactor, description)
            except Exception as e:
                raise ConfigError(
                    "%s: %s entry %r is not a valid endpoint: %s"
                    % (config.source, key, description, e)
                )


def cmd_run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor, task

    from mxpolicyd.ops.systemd import Notifier, NotifyService
    from mxpolicyd.tap import leave_root, make_daemon, restrict_umask

    config = _load(args)
    _begin_logging(LogLevel.debug if args.debug else LogLevel.info)
    try:
        _check_listeners(config, reactor)
    except ConfigError as e:
        print("mxpolicyd: configuration error: %s" % (e,), file=sys.stderr)
        return EXIT_ERROR
    restrict_umask()

    def main(reactor: Any) -> Deferred[None]:
        try:
            daemon = make_daemon(config, reactor)
        except ConfigError as e:
            print("mxpolicyd: configuration error: %s" % (e,), file=sys.stderr)
            raise SystemExit(EXIT_ERROR)
        daemon.service.startService()
        reactor.addSystemEventTrigger("before", "shutdown", daemon.service.stopService)
        # The listeners are bound and the store is open: root is needed no
        # more (daemon.user), or the administrator is told it is kept.
        try:
            leave_root(config)
        except OSError as e:
            print("mxpolicyd: cannot switch to daemon.user %s: %s" % (config.user, e),
                  file=sys.stderr)
            raise SystemExit(EXIT_ERROR)
        # The last child: READY=1 once the listeners are up, STOPPING=1 first.
        notify = NotifyService(
            Notifier.from_environ(), reactor,
            lambda: "serving; %d domains cached" % len(daemon.cache),
        )
        notify.setServiceParent(daemon.service)
        # SIGHUP: re-read the file; a bad one is refused and the old kept.
        signal.signal(
            signal.SIGHUP,
            lambda signum, frame: reactor.callFromThread(
                notify.reload, lambda: daemon.reload(args.config)),
        )
        _announce(config, daemon.store.path, reactor)
        return Deferred()

    try:
        task.react(main)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def _announce(config: Config, store: str, reactor: Any) -> None:
    """
    The daemon's own start and stop lines, in place of Twisted's one line per
    listener: where it listens, and on a signal, what stopping involves.
    """
    from twisted.logger import Logger

    log = Logger(namespace="mxpolicyd")
    listeners = [
        "%s on %s" % (what, ", ".join(where))
        for what, where in (
            ("socketmap", config.socketmap.listen),
            ("exim", config.exim.listen),
            ("metrics", config.metrics.listen),
            ("control", [config.control.socket] if config.control.socket else []),
        )
        if where
    ]
    log.info(
        "mxpolicyd {version} serving {listeners}; reading the store {path} in the "
        "background",
        version=__version__, listeners="; ".join(listeners), path=store,
    )

    def say_stopping(signum: int) -> None:
        log.info("mxpolicyd received {signal}: closing the listeners and flushing "
                 "the store", signal=signal.Signals(signum).name)

    def wrap_handlers() -> None:
        # Twisted installs its handlers as the reactor starts; ours run first
        # and leave the shutdown itself to them.
        for signum in (signal.SIGTERM, signal.SIGINT):
            twisted_handler = signal.getsignal(signum)
            if not callable(twisted_handler):
                continue

            def handler(number: int, frame: Any, then: Any = twisted_handler) -> None:
                reactor.callFromThread(say_stopping, number)
                then(number, frame)

            signal.signal(signum, handler)

    reactor.callWhenRunning(wrap_handlers)
    reactor.addSystemEventTrigger("after", "shutdown", lambda: log.info("mxpolicyd stopped"))


def _client_address(config: Config, override: str | None) -> tuple[int, Any]:
    """Where a socketmap client reaches the daemon, from its listen strings."""
    candidates = [override] if override else list(config.socketmap.listen)
    for description in candidates:
        parts = description.split(":")
        kind = parts[0]
        if kind == "unix" and len(parts) > 1:
            path = [p for p in parts[1:] if "=" not in p]
            options = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
            return socket.AF_UNIX, (path[0] if path else options["address"])
        if kind in ("tcp", "tcp6") or description.isdigit():
            rest = parts[1:] if not description.isdigit() else [description]
            options = dict(p.split("=", 1) for p in rest if "=" in p)
            positional = [p for p in rest if "=" not in p]
            if override and len(positional) >= 2:
                host, port = positional[0], positional[1]
            else:
                port = options.get("port", positional[0] if positional else "8461")
                host = options.get("interface", "127.0.0.1")
            if host in ("0.0.0.0", ""):
                host = "127.0.0.1"
            if host == "::":
                host = "::1"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            return family, (host, int(port))
    raise ConfigError(
        "no tcp: or unix: listener in socketmap.listen to connect to; "
        "use --socket tcp:HOST:PORT or --socket unix:PATH"
    )


def _where(address: Any) -> str:
    return address if isinstance(address, str) else "%s:%d" % tuple(address[:2])


def socketmap_request(family: int, address: Any, name: str, key: bytes,
                      timeout: float = 100.0) -> bytes:
    """One blocking socketmap exchange, as Postfix would do it."""
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        s.sendall(netstring(name.encode("ascii") + b" " + key))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, colon, rest = data.partition(b":")
            if colon and head.isdigit() and len(rest) > int(head):
                return rest[: int(head)]
    raise OSError("connection closed before a complete reply")


def cmd_query(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        family, address = _client_address(config, args.socket)
        _debug(args, "asking", "%s map %s for %r" % (_where(address), args.map, args.domain))
        reply = socketmap_request(family, address, args.map, args.domain.encode("utf-8"))
        _debug(args, "reply", reply)
    except (OSError, ConfigError) as e:
        print("mxpolicyd: cannot query the daemon: %s" % (e,), file=sys.stderr)
        return EXIT_ERROR
    status, _, value = reply.decode("utf-8", "replace").partition(" ")
    code = {"OK": EXIT_FOUND, "NOTFOUND": EXIT_NOTFOUND, "TEMP": EXIT_TEMPFAIL,
            "TIMEOUT": EXIT_TEMPFAIL}.get(status, EXIT_ERROR)
    if args.json:
        print(json.dumps({"domain": args.domain, "map": args.map,
                          "status": status, "value": value}))
    elif status == "OK":
        print("%s\t%s" % (args.domain, value))
    elif status != "NOTFOUND":
        print("%s: %s %s" % (args.domain, status, value), file=sys.stderr)
    return code


def cmd_explain(args: argparse.Namespace) -> int:
    from twisted.internet import task

    from mxpolicyd.answers.render import exim_reply, postfix_reply
    from mxpolicyd.policy.judge import administration, judge
    from mxpolicyd.policy.verdict import decide
    from mxpolicyd.tap import build_evaluator

    config = _load(args)
    domain = normalise(args.domain.encode("utf-8"))
    if domain is None:
        result: dict[str, Any] = {
            "domain": args.domain,
            "rule": "not a plain domain name: answered NOTFOUND with no lookup",
            "action": "none",
            "postfix": "NOTFOUND",
            "steps": [],
        }
        _print_explain(result, args.json)
        return EXIT_NOTFOUND
    outcome: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        evaluator = build_evaluator(config, reactor)
        trace: list[dict[str, Any]] = []
        state = await evaluator.evaluate(domain, None, trace)
        now = reactor.seconds()
        evidence = decide(domain, state, now)
        # The administrator's policy as the daemon applies it; the downgrade
        # memory lives in the daemon's store, so it is not consulted here.
        verdict, _ = judge(evidence, state, config.admin, now)
        profile = config.profiles.get(args.map) or config.profiles["postfix"]
        reply = postfix_reply(verdict, profile).decode("ascii")
        policy = evidence.policy or state.sts.policy
        outcome.update(
            domain=domain,
            action=verdict.action.value,
            rule=verdict.rule,
            postfix=reply.strip(),
            exim=exim_reply(verdict).decode("ascii").strip(),
            admin=dict(administration(evidence, state, verdict, config.admin, now),
                       memory_consulted=False),
            map=profile.name,
            mta_sts={
                "record": state.sts.record,
                "policy_id": state.sts.policy_id,
                "policy": None if policy is None else {
                    "mode": policy.mode,
                    "max_age": policy.max_age,
                    "mx": list(policy.mx),
                    "text": "\n".join(policy.canonical_lines()),
                },
                "failure": state.sts.failure,
            },
            dane=None if state.dane is None else state.dane.to_json(),
            steps=trace,
        )

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code:
            return EXIT_ERROR
    _print_explain(outcome, args.json)
    return EXIT_FOUND if outcome["postfix"].startswith("OK") else (
        EXIT_TEMPFAIL if outcome["postfix"].startswith("TEMP") else EXIT_NOTFOUND)


def _print_explain(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    print("domain:  %s" % result["domain"])
    for step in result.get("steps", []):
        kind = step.get("step")
        details = ", ".join(
            "%s=%s" % (k, v) for k, v in step.items() if k not in ("step", "body")
        )
        print("  %-7s %s" % (kind, details))
        if "body" in step:
            for line in step["body"].splitlines():
                print("          | %s" % line)
    dane = result.get("dane")
    if dane:
        print("  dane    MX %s%s: %s" % (
            {True: "secure (AD)", False: "insecure", None: "unknown"}[dane["mx_secure"]],
            ", implicit (no MX record)" if dane["implicit_mx"] else "",
            dane["status"]))
        for host in dane["hosts"]:
            print("          host %s (preference %d): %s%s" % (
                host["name"], host["preference"], host["state"],
                "" if host["address_secure"] is None else
                ", addresses %s" % ("secure" if host["address_secure"] else "insecure")))
            for t in host["tlsa"]:
                print("            %s TLSA %d %d %d %s... %s" % (
                    host["tlsa_name"], t["usage"], t["selector"], t["mtype"], t["data"][:16],
                    "usable" if t["usable"] else "unusable"))
            if host["error"]:
                print("            %s" % host["error"])
    admin = result.get("admin")
    if admin:
        _print_admin(admin)
    print("rule:    %s" % result["rule"])
    print("verdict: %s" % result["action"])
    print("postfix: %s" % result["postfix"])
    if admin and (admin.get("override") or admin.get("note")):
        print("exim:    %s" % result["exim"])


def _print_admin(admin: dict[str, Any]) -> None:
    """The administrator's policy for one domain (explain, cache show)."""
    if admin.get("mx_level") is None:
        print("levels:  unknown (the evidence is TEMP)")
    else:
        print("levels:  MX %s, TLS %s (evidence: %s)" % (
            admin["mx_level"], admin["tls_level"], admin["evidence"]))
    minimum = admin["minimum"]
    if minimum["mx"] != "none" or minimum["tls"] != "none":
        print("minimum: MX %s (%s), TLS %s (%s)" % (
            minimum["mx"], minimum["mx_key"], minimum["tls"], minimum["tls_key"]))
    override = admin.get("override")
    if override:
        forced = "exempt" if override.get("exempt") else ", ".join(
            "%s %s" % (k, override[k]) for k in ("postfix", "exim") if k in override)
        print("override: %s: %s%s%s" % (
            override["entry"], forced,
            " (and subdomains)" if override.get("subdomains") else "",
            " until %s" % override["expires"] if override.get("expires") else ""))
    remembered = admin.get("remembered")
    if remembered:
        print("memory:  %s, last seen %s, remembered until %s (policy.downgrade = %s)" % (
            remembered["action"], utc(remembered["seen_at"]), utc(remembered["until"]),
            admin["downgrade"]))
    elif admin.get("memory_consulted") is False:
        if admin.get("downgrade") not in (None, "off"):
            print("memory:  not consulted: explain evaluates afresh; the daemon's "
                  "remembered verdict is in: mxpolicyd cache show DOMAIN")
    elif admin.get("downgrade") not in (None, "off"):
        print("memory:  nothing remembered (policy.downgrade = %s)" % admin["downgrade"])
    if admin.get("held"):
        print("held:    yes: %s" % admin["note"])
    elif admin.get("note") and admin.get("note_kind") != "override":
        print("note:    %s" % admin["note"])



class ControlClosed(Exception):
    """The daemon closed the control connection without a whole reply."""


def control_request(path: str, request: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """One exchange on the daemon's control socket."""
    chunks: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(json.dumps(request).encode("utf-8") + b"\n")
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                # The reply is one line; the daemon closes after it.
                if chunk.endswith(b"\n"):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the daemon: said below
    data = b"".join(chunks)
    if not data:
        raise ControlClosed(
            "the daemon closed the connection without answering; it may be at its "
            "limit of %d control connections (other commands or scripts hold them, "
            "or silent clients for up to %g s): try again in a moment"
            % (CONTROL_CONNECTIONS, CONTROL_REQUEST_TIMEOUT))
    if not data.endswith(b"\n"):
        raise ControlClosed("the daemon closed the connection in the middle of its reply "
                            "(%d bytes received)" % len(data))
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ValueError("the daemon sent no JSON object")
    return reply


def cmd_cache(args: argparse.Namespace) -> int:
    config = _load(args)
    path = args.socket or config.control.socket
    if not path:
        print("mxpolicyd: the control socket is off (control.socket); use --socket",
              file=sys.stderr)
        return EXIT_ERROR
    request: dict[str, Any] = {"command": args.action}
    if args.action == "list":
        request["limit"] = args.limit
    else:
        if not args.domain:
            print("mxpolicyd: cache %s needs a DOMAIN" % args.action, file=sys.stderr)
            return EXIT_ERROR
        request["domain"] = args.domain
    _debug(args, "control request to %s:" % path, json.dumps(request))
    try:
        reply = control_request(path, request)
        _debug(args, "control reply:", json.dumps(reply))
    except ControlClosed as e:
        print("mxpolicyd: control socket %s: %s" % (path, e), file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError) as e:
        print("mxpolicyd: cannot reach the daemon at %s: %s" % (path, e), file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif "error" in reply:
        print("mxpolicyd: %s" % reply["error"], file=sys.stderr)
    elif args.action == "list":
        for item in reply["domains"]:
            print("%-40s %-12s %s" % (item["domain"], item["action"], item["rule"]))
        shown = len(reply["domains"])
        if shown < reply["count"]:
            print("(%d of %d domains; --limit N for more)" % (shown, reply["count"]))
    elif args.action == "forget":
        print("%s: %s" % (reply["domain"], "forgotten" if reply["forgotten"] else "was not cached"))
    else:
        if args.action == "ack":
            print("%s: acknowledged" % reply["domain"])
        print("domain:  %s" % reply["domain"])
        print("verdict: %s (%s)" % (reply["action"], reply["rule"]))
        if "evidence" in reply:
            _print_admin(reply)
        for key in ("due_at", "used_at"):
            if reply.get(key):
                print("%-8s %s" % (key.split("_")[0] + ":",
                                   utc(reply[key])))
        print(json.dumps(reply.get("state"), indent=2, sort_keys=True))
    if "error" in reply:
        return EXIT_NOTFOUND if "not cached" in reply["error"] else EXIT_ERROR
    if args.action == "forget" and not reply["forgotten"]:
        return EXIT_NOTFOUND
    return EXIT_FOUND


def cmd_check_config(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    try:
        config = load(args.config)
        _check_listeners(config, reactor)
    except ConfigError as e:
        print("mxpolicyd: configuration error: %s" % (e,), file=sys.stderr)
        return EXIT_ERROR
    print("%s: OK" % (config.source,))
    print("  socketmap: %s" % ", ".join(config.socketmap.listen))
    print("  exim:      %s" % (", ".join(config.exim.listen) or "off"))
    print("  maps:      %s" % ", ".join(sorted(config.profiles)))
    if config.store.backend == "redis":
        print("  store:     Redis at %s (prefix %s)" % (config.store.redis, config.store.key_prefix))
    else:
        print("  store:     %s" % config.store_path)
    print("  resolver:  %s" % (", ".join(config.dns.nameservers) or "from /etc/resolv.conf"))
    admin = config.admin
    print("  policy:    minimum MX level %s, TLS level %s; downgrade %s" % (
        admin.min_mx_level, admin.min_tls_level, admin.downgrade))
    if admin.rules:
        print("  domains:   %s" % ", ".join(
            r.key for r in sorted(admin.rules.values(), key=lambda r: r.domain)))
    for warning in admin.warnings(time.time()):
        print("mxpolicyd: warning: %s" % (warning,), file=sys.stderr)
    return EXIT_FOUND


def cmd_import_config(args: argparse.Namespace) -> int:
    import os

    from mxpolicyd.config.migrate import (
        DEFAULT_SOURCES,
        MigrateError,
        convert,
        read_yaml,
    )

    if args.config is not None:
        print("mxpolicyd import-config: --config names mxpolicyd's own file, which "
              "import-config does not read; give the YAML file as the argument and "
              "the TOML to write with --output", file=sys.stderr)
        return EXIT_ERROR
    source = args.file
    if source is None:
        found = [path for path in DEFAULT_SOURCES if os.path.exists(path)]
        source = found[0] if found else DEFAULT_SOURCES[0]
    try:
        conversion = convert(read_yaml(source), source)
    except MigrateError as e:
        print("mxpolicyd import-config: %s" % (e,), file=sys.stderr)
        return EXIT_ERROR
    for warning in conversion.warnings:
        print("mxpolicyd import-config: warning: %s" % (warning,), file=sys.stderr)
    if args.output is None:
        sys.stdout.write(conversion.toml)
        return EXIT_FOUND
    try:
        with open(args.output, "x" if not args.force else "w") as f:
            f.write(conversion.toml)
    except OSError as e:
        print("mxpolicyd import-config: cannot write %s: %s%s" % (
            args.output, e.strerror,
            " (use --force to replace it)" if isinstance(e, FileExistsError) else ""),
            file=sys.stderr)
        return EXIT_ERROR
    print("mxpolicyd import-config: wrote %s; check it with: mxpolicyd check-config "
          "--config %s" % (args.output, args.output), file=sys.stderr)
    return EXIT_FOUND


def _global_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """
    C{--config} and C{--debug}, on the top parser and again on every
    subcommand, so both C{mxpolicyd --config F query} and C{mxpolicyd query
    --config F} work.  The subcommands' copies default to nothing at all
    (SUPPRESS): argparse would otherwise write their defaults over a value
    given before the subcommand.  Given both ways, the later one wins.
    """
    p.add_argument("--config", "-c", metavar="FILE",
                   default=None if top else argparse.SUPPRESS,
                   help="configuration file (default /etc/mxpolicyd/mxpolicyd.toml "
                   "if it exists, else the embedded defaults)")
    p.add_argument("--debug", action="store_true",
                   default=False if top else argparse.SUPPRESS,
                   help="log debug events (and, for query and cache, the exchange)")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, top=False)
    p = argparse.ArgumentParser(
        prog="mxpolicyd",
        description="MTA-STS and DANE TLS policy daemon for Postfix and Exim.",
        epilog="--config and --debug may come before or after the command.")
    _global_options(p, top=True)
    p.add_argument("--version", action="version", version=__version__)
    p.set_defaults(func=cmd_run)
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    r = sub.add_parser("run", parents=[common], help="run the daemon (the default)")
    r.set_defaults(func=cmd_run)

    q = sub.add_parser("query", parents=[common],
                       help="ask the running daemon, as Postfix would")
    q.add_argument("domain")
    q.add_argument("--map", default="postfix", help="socketmap name (default postfix)")
    q.add_argument("--socket", metavar="ENDPOINT",
                   help="tcp:HOST:PORT or unix:PATH (default: the first listener)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_query)

    e = sub.add_parser("explain", parents=[common],
                       help="evaluate a domain now and show the evidence and rule")
    e.add_argument("domain")
    e.add_argument("--map", default="postfix", help="profile to render (default postfix)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_explain)

    k = sub.add_parser("cache", parents=[common],
                       help="list, show, refresh, forget or acknowledge (ack) cached "
                       "domains in the running daemon")
    k.add_argument("action", choices=["list", "show", "refresh", "forget", "ack"],
                   help="ack DOMAIN accepts the domain's current (weaker) policy: "
                   "a downgrade held by policy.downgrade = enforce is released")
    k.add_argument("domain", nargs="?")
    k.add_argument("--limit", type=int, default=1000, help="list at most this many")
    k.add_argument("--socket", metavar="PATH", help="control socket (default: control.socket)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_cache)

    c = sub.add_parser("check-config", parents=[common], help="validate the configuration")
    c.set_defaults(func=cmd_check_config)

    i = sub.add_parser("import-config", parents=[common],
                       help="convert postfix-mta-sts-resolver's YAML configuration to TOML")
    i.add_argument("file", nargs="?", metavar="FILE",
                   help="default /etc/mta-sts-daemon.yml, else /etc/postfix/mta-sts-daemon.yml")
    i.add_argument("--output", "-o", metavar="FILE",
                   help="write the TOML here (default: standard output)")
    i.add_argument("--force", action="store_true", help="replace an existing --output file")
    i.set_defaults(func=cmd_import_config)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.debug and args.func is not cmd_run:
        # The daemon begins its own logging; a command logs only when asked.
        _begin_logging(LogLevel.debug)
    raise SystemExit(args.func(args))
