"""
Exim's answers: from one readsocket request line to one verdict line.
"""

from __future__ import annotations

from time import perf_counter

from twisted.internet.defer import Deferred

from mxpolicyd.answers.render import exim_action, exim_reply, forced_by
from mxpolicyd.cache.policycache import PolicyCache
from mxpolicyd.evidence.names import normalise
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.verdict import Action, Verdict


class EximResponder:
    """Answers Exim C{${readsocket}} lookups: one domain, one verdict line."""

    def __init__(self, cache: PolicyCache, metrics: Metrics | None = None) -> None:
        self._cache = cache
        self._metrics = metrics or Metrics()

    def lookup(self, key: bytes) -> bytes | Deferred[bytes]:
        started = perf_counter()
        domain = normalise(key)
        if domain is None:
            return self._counted(Verdict(
                key.decode("ascii", "replace")[:64], Action.NONE,
                "not a plain domain name: no lookup"), started)
        self._metrics.cache.inc("hit" if domain in self._cache else "miss")
        verdict = self._cache.lookup(domain)
        if isinstance(verdict, Deferred):
            return verdict.addCallback(self._counted, started)
        return self._counted(verdict, started)

    def _counted(self, verdict: Verdict, started: float) -> bytes:
        self._metrics.lookups.inc("exim", exim_action(verdict))
        forced = forced_by(verdict, "exim")
        if forced is not None:
            self._metrics.overrides.inc(forced)
        self._metrics.latency.observe(perf_counter() - started, "exim")
        return exim_reply(verdict)
