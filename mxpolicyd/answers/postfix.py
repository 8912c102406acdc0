"""
Postfix's answers: from a socketmap name and a raw key to reply bytes.

The profile comes from the map name; the key is normalised, the cache asked
and the verdict rendered.  Rendered replies are memoised per raw request (the
memo of DESIGN's hot path), so a cached domain costs one dict lookup and one
clock read, due or not; the memo entry for a domain is dropped whenever the
cache says its verdict may have changed.
"""

from __future__ import annotations

from time import perf_counter
from typing import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxpolicyd.answers.profiles import Profile
from mxpolicyd.answers.render import NOTFOUND, forced_by, postfix_reply
from mxpolicyd.cache.entries import Entry
from mxpolicyd.cache.policycache import PolicyCache
from mxpolicyd.evidence.names import normalise
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.verdict import Verdict
from mxpolicyd.protocols.socketmap import Reply

# The first two bytes of a socketmap reply name its status.
_RESULTS = {b"OK": "ok", b"NO": "notfound", b"TE": "temp", b"PE": "perm", b"TI": "timeout"}


class PostfixResponder:
    """Answers C{smtp_tls_policy_maps} lookups."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        cache: PolicyCache,
        profiles: Mapping[str, Profile],
        memo_limit: int = 200000,
        metrics: Metrics | None = None,
    ) -> None:
        self._clock = clock
        self._cache = cache
        self._metrics = metrics = metrics or Metrics()
        # Bound once: the cached path runs these for every lookup.
        self._seconds = clock.seconds
        self._count_cache = metrics.cache.inc
        self._count_lookup = metrics.lookups.inc
        self._observe = metrics.latency.observe
        self._count_override = metrics.overrides.inc
        self._memo_limit = memo_limit
        self.set_profiles(profiles)
        cache.on_change(self._forget)

    def set_profiles(self, profiles: Mapping[str, Profile]) -> None:
        """Serve these map names from now on (a reload); replies are re-rendered."""
        self._profiles = {name.encode("ascii"): p for name, p in profiles.items()}
        # (map name, raw key) -> (reply, entry, result label for the metrics,
        # the kind of administrator's entry that forced the reply or None)
        self._memo: dict[tuple[bytes, bytes], tuple[bytes, Entry, str, str | None]] = {}
        self._memo_keys: dict[str, list[tuple[bytes, bytes]]] = {}

    def lookup(self, name: bytes, key: bytes) -> Reply:
        started = perf_counter()
        request = (name, key)
        hit = self._memo.get(request)
        if hit is not None:
            reply, entry, result, forced = hit
            now = self._seconds()
            if now < entry.changes_at:
                entry.used_at = now
                if now < entry.due_at or self._recheck(entry, request):
                    self._count_cache("hit")
                    self._count_lookup("socketmap", result)
                    if forced is not None:
                        self._count_override(forced)
                    self._observe(perf_counter() - started, "socketmap")
                    return reply
        found = self._lookup(name, key)
        if isinstance(found, Deferred):
            return found.addCallback(self._counted, started)
        return self._counted(found, started)

    def _recheck(self, entry: Entry, request: tuple[bytes, bytes]) -> bool:
        """
        Start the background re-check of due evidence, as C{cache.current()}
        would (a no-op while one runs), and say whether the memoised reply
        still holds: a dead resolver then leaves the cached path as fast as
        ever.
        """
        self._cache.revalidate(entry.domain)
        return request in self._memo and self._cache.get(entry.domain) is entry

    def _counted(self, reply: bytes, started: float) -> bytes:
        metrics = self._metrics
        metrics.lookups.inc("socketmap", _RESULTS.get(reply[:2], "other"))
        metrics.latency.observe(perf_counter() - started, "socketmap")
        return reply

    def _lookup(self, name: bytes, key: bytes) -> Reply:
        profile = self._profiles.get(name)
        if profile is None:
            return b"PERM unknown socketmap name " + name[:64].decode(
                "ascii", "replace"
            ).encode("ascii", "replace")
        domain = normalise(key)
        if domain is None:
            return NOTFOUND
        entry = self._cache.current(domain)
        if entry is not None:
            self._metrics.cache.inc("hit")
            reply = self._render(entry.verdict, profile)
            self._remember(name, key, reply, entry)
            return reply
        self._metrics.cache.inc("miss")
        verdict = self._cache.lookup(domain)
        if isinstance(verdict, Deferred):
            return verdict.addCallback(self._render, profile)
        return self._render(verdict, profile)

    def _render(self, verdict: Verdict, profile: Profile) -> bytes:
        forced = forced_by(verdict, "postfix")
        if forced is not None:
            self._count_override(forced)
        return postfix_reply(verdict, profile)

    def _remember(self, name: bytes, key: bytes, reply: bytes, entry: Entry) -> None:
        if len(self._memo) >= self._memo_limit:
            # Many spellings of cached keys (case variants): start over
            # rather than grow without bound.
            self._memo.clear()
            self._memo_keys.clear()
        k = (name, key)
        if k not in self._memo:
            self._memo_keys.setdefault(entry.domain, []).append(k)
        self._memo[k] = (reply, entry, _RESULTS.get(reply[:2], "other"),
                         forced_by(entry.verdict, "postfix"))

    def _forget(self, domain: str) -> None:
        for k in self._memo_keys.pop(domain, ()):
            self._memo.pop(k, None)
