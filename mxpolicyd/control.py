"""
The control socket: administrators' commands to a running daemon.

The lookup listeners are read-only; anything that changes state (forget a
domain, refresh it now) comes only through this unix socket, whose file
mode and directory keep it to the daemon's user and an admin group.
Otherwise any local user could make the daemon forget a cached MTA-STS
policy and open the door to a downgrade on the next fetch.

One JSON object per line in, one JSON object per line out, then close.
"""

from __future__ import annotations

import json
import math
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from mxpolicyd.admin import AdminPolicy
from mxpolicyd.cache import Entry, PolicyCache
from mxpolicyd.domain import normalise
from mxpolicyd.judge import administration
from mxpolicyd.verdict import decide


def _time(value: float) -> float | None:
    return value if math.isfinite(value) and value > 0 else None


def describe(entry: Entry, full: bool, admin: AdminPolicy | None = None,
             now: float = 0.0) -> dict[str, Any]:
    """What an administrator sees of one cached domain."""
    verdict = entry.verdict
    data: dict[str, Any] = {
        "domain": entry.domain,
        "action": verdict.action.value,
        "rule": verdict.rule,
        "due_at": _time(entry.due_at),
        "used_at": _time(entry.used_at),
    }
    if full:
        data["state"] = entry.state.to_json()
        if verdict.reason:
            data["reason"] = verdict.reason
        if admin is not None:
            evidence = decide(entry.domain, entry.state, now)
            data.update(administration(evidence, entry.state, verdict, admin, now))
    return data


class ControlCommands:
    """The commands, over the cache; each returns a JSON-able dict."""

    def __init__(self, cache: PolicyCache) -> None:
        self._cache = cache

    def run(self, request: dict[str, Any]) -> dict[str, Any] | Deferred[dict[str, Any]]:
        command = request.get("command")
        if command == "list":
            limit = request.get("limit", 1000)
            if not isinstance(limit, int) or limit < 0:
                return {"error": "limit must be a whole number"}
            domains = sorted(self._cache.domains())
            entries = [self._cache.get(d) for d in domains[:limit]]
            return {
                "count": len(domains),
                "domains": [describe(e, False) for e in entries if e is not None],
            }
        if command in ("show", "refresh", "forget", "ack"):
            raw = request.get("domain")
            domain = normalise(raw.encode("utf-8")) if isinstance(raw, str) else None
            if domain is None:
                return {"error": "not a domain name: %r" % (raw,)}
            return getattr(self, "_" + command)(domain)
        return {"error": "unknown command %r (list, show, refresh, forget, ack)"
                % (command,)}

    def _show(self, domain: str) -> dict[str, Any]:
        entry = self._cache.get(domain)
        if entry is None:
            return {"error": "%s is not cached" % domain, "domain": domain}
        return describe(entry, True, self._cache.admin, self._cache.now())

    def _ack(self, domain: str) -> dict[str, Any]:
        """Accept the domain's current evidence: a held downgrade is released."""
        if self._cache.get(domain) is None:
            return {"error": "%s is not cached" % domain, "domain": domain}
        if self._cache.acknowledge(domain) is None:
            return {"error": "the evidence for %s is temporarily unknown (TEMP): nothing "
                    "to acknowledge yet; try again after a refresh" % domain,
                    "domain": domain}
        return dict(self._show(domain), acknowledged=True)

    def _forget(self, domain: str) -> dict[str, Any]:
        return {"domain": domain, "forgotten": self._cache.forget(domain)}

    def _refresh(self, domain: str) -> Deferred[dict[str, Any]]:
        d = self._cache.refresh(domain)
        return d.addCallback(lambda _: self._show(domain))


class ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 4096
    _log = Logger()

    def __init__(self, commands: ControlCommands) -> None:
        self._commands = commands

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._reply({"error": "request is not a JSON object: %s" % (e,)})
            return
        self._log.info("Control command {request}", request=request)
        try:
            result = self._commands.run(request)
        except Exception:
            result = fail()
        d = result if isinstance(result, Deferred) else succeed(result)
        d.addErrback(self._failed)
        d.addCallback(self._reply)

    def _failed(self, failure: Failure) -> dict[str, Any]:
        self._log.failure("Control command failed", failure)
        return {"error": "internal error: %s" % failure.getErrorMessage()}

    def lineLengthExceeded(self, line: bytes) -> None:
        self._reply({"error": "request longer than %d bytes" % self.MAX_LENGTH})

    def _reply(self, data: dict[str, Any]) -> None:
        if self.transport is None:
            return
        self.transport.write(json.dumps(data, sort_keys=True).encode("utf-8") + b"\n")
        self.transport.loseConnection()


class ControlFactory(Factory):
    noisy = False

    def __init__(self, commands: ControlCommands) -> None:
        self._commands = commands

    def buildProtocol(self, addr: object) -> ControlProtocol:
        return ControlProtocol(self._commands)
