"""
The administrators' commands to a running daemon: list, show, refresh,
forget and acknowledge cached domains.

They arrive only through the control socket (L{mxpolicyd.protocols.control}),
whose file mode keeps it to the daemon's user and an admin group: the lookup
listeners are read-only, because forgetting a cached MTA-STS policy is how a
downgrade would start.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import Deferred

from mxpolicyd.cache.entries import Entry
from mxpolicyd.cache.policycache import PolicyCache
from mxpolicyd.evidence.names import normalise
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.judge import administration
from mxpolicyd.policy.verdict import decide


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
            return {"error": "the evidence for %s is temporarily unknown (TEMP), or not "
                    "kept (not looked up lately: only its downgrade memory is): nothing "
                    "to acknowledge yet; try again after \"mxpolicyd cache refresh %s\""
                    % (domain, domain),
                    "domain": domain}
        return dict(self._show(domain), acknowledged=True)

    def _forget(self, domain: str) -> dict[str, Any]:
        return {"domain": domain, "forgotten": self._cache.forget(domain)}

    def _refresh(self, domain: str) -> Deferred[dict[str, Any]]:
        d = self._cache.refresh(domain)
        return d.addCallback(lambda _: self._show(domain))
