"""
The lookup service behind the wire codecs: from a socketmap name and a raw
key to reply bytes.

It picks the profile by map name, normalises the key, asks the policy cache
and renders the verdict.  Rendered replies are memoised per raw request, so a
cached domain costs one dict lookup and one clock read; the memo entry for a
domain is dropped whenever the cache says its verdict may have changed.
"""

from __future__ import annotations

from typing import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxpolicyd.cache import Entry, PolicyCache
from mxpolicyd.config import Profile
from mxpolicyd.domain import normalise
from mxpolicyd.socketmap import Reply
from mxpolicyd.verdict import NOTFOUND, Action, Verdict, exim_reply, postfix_reply


class PostfixResponder:
    """Answers C{smtp_tls_policy_maps} lookups."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        cache: PolicyCache,
        profiles: Mapping[str, Profile],
        memo_limit: int = 200000,
    ) -> None:
        self._clock = clock
        self._cache = cache
        self._profiles = {name.encode("ascii"): p for name, p in profiles.items()}
        self._memo: dict[tuple[bytes, bytes], tuple[bytes, Entry]] = {}
        self._memo_keys: dict[str, list[tuple[bytes, bytes]]] = {}
        self._memo_limit = memo_limit
        cache.on_change(self._forget)

    def lookup(self, name: bytes, key: bytes) -> Reply:
        hit = self._memo.get((name, key))
        if hit is not None:
            reply, entry = hit
            now = self._clock.seconds()
            if now < entry.due_at and now < entry.changes_at:
                entry.used_at = now
                return reply
        return self._lookup(name, key)

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
            reply = postfix_reply(entry.verdict, profile)
            self._remember(name, key, reply, entry)
            return reply
        verdict = self._cache.lookup(domain)
        if isinstance(verdict, Deferred):
            return verdict.addCallback(self._render, profile)
        return postfix_reply(verdict, profile)

    @staticmethod
    def _render(verdict: Verdict, profile: Profile) -> bytes:
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
        self._memo[k] = (reply, entry)

    def _forget(self, domain: str) -> None:
        for k in self._memo_keys.pop(domain, ()):
            self._memo.pop(k, None)


class EximResponder:
    """Answers Exim C{${readsocket}} lookups: one domain, one verdict line."""

    def __init__(self, cache: PolicyCache) -> None:
        self._cache = cache

    def lookup(self, key: bytes) -> bytes | Deferred[bytes]:
        domain = normalise(key)
        if domain is None:
            return exim_reply(Verdict(
                key.decode("ascii", "replace")[:64], Action.NONE,
                "not a plain domain name: no lookup"))
        verdict = self._cache.lookup(domain)
        if isinstance(verdict, Deferred):
            return verdict.addCallback(exim_reply)
        return exim_reply(verdict)
