"""
MTA-STS discovery and fetching (RFC 8461 s3 and s5): from a domain's prior
L{StsState} to its next one.

It asks the DNS client for the C{_mta-sts} TXT record and the policy fetcher
for the policy when the record's id says the cached policy is stale.  The
cache rules live here and only here: the policy lives for C{max_age} after
its last successful fetch, a new id means a refetch, a failed fetch backs off
for at least five minutes per id, and a failed discovery keeps the cached
policy.  A resolver that cannot answer is logged once per outage
(L{ResolverOutage}), not once per cached domain.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

import dns.rdatatype
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxpolicyd.evidence.outage import ResolverOutage
from mxpolicyd.evidence.state import StsState
from mxpolicyd.evidence.sts import StsError, parse_policy, parse_txt
from mxpolicyd.net.dns import DNSError, clamp
from mxpolicyd.net.https import FetchError

# Refetch a policy whose id has not changed once it is this old, or half its
# max_age, whichever comes first, so that an active domain's policy never
# runs out (RFC 8461 s5.1 asks for a proactive refresh, about daily).
REFRESH_AFTER = 86400.0

Trace = list[dict[str, Any]]


class _Resolver(Protocol):
    def query(self, name: str, rdtype: int) -> Deferred[Any]: ...


class _Fetcher(Protocol):
    def fetch(self, domain: str) -> Deferred[bytes]: ...


class StsEvaluator:
    """Moves a domain's MTA-STS state forward by one discovery."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        resolver: _Resolver,
        fetcher: _Fetcher,
        ttl_min: float = 60,
        ttl_max: float = 3600,
        retry_interval: float = 300,
    ) -> None:
        self._clock = clock
        self._resolver = resolver
        self._fetcher = fetcher
        self._ttl_min = ttl_min
        self._ttl_max = ttl_max
        self._retry = retry_interval
        self._outage = ResolverOutage(clock, self._log, "MTA-STS discoveries")

    def evaluate(
        self, domain: str, prior: StsState | None, trace: Trace | None = None
    ) -> Deferred[StsState]:
        return Deferred.fromCoroutine(
            self._evaluate(domain, prior or StsState(), trace)
        )

    async def _evaluate(
        self, domain: str, prior: StsState, trace: Trace | None
    ) -> StsState:
        now = self._clock.seconds()
        name = "_mta-sts." + domain
        note = trace.append if trace is not None else (lambda step: None)
        try:
            answer = await self._resolver.query(name, dns.rdatatype.TXT)
        except ValueError:
            # A domain within 253 octets whose _mta-sts name is not: no
            # such record can exist.
            note({"step": "txt", "name": name, "error": "name too long"})
            return replace(prior, record=None, checked_at=now,
                           due_at=now + self._ttl_max, failure=None)
        except DNSError as e:
            # Discovery failed: the cached policy, if any, still applies.
            note({"step": "txt", "name": name, "error": str(e)})
            # A resolver that cannot answer logs once per outage; a failure
            # that is about this domain (a CNAME loop) once per discovery.
            kept = prior.active_policy(now) is not None
            self._outage.failed(
                [e],
                "keep a cached policy" if kept else "find no policy",
                "MTA-STS discovery for {domain} failed ({error}); {action}",
                domain=domain,
                error=str(e),
                action=self._keeping(prior, now),
            )
            return replace(
                prior,
                checked_at=now,
                due_at=now + self._ttl_min,
                failure="TXT lookup failed: %s" % (e,),
            )

        self._outage.answered(domain)
        due = now + clamp(answer.ttl, self._ttl_min, self._ttl_max)
        strings = [tuple(r.strings) for r in answer.records]
        note(
            {
                "step": "txt",
                "name": name,
                "records": [b"".join(s).decode("ascii", "replace") for s in strings],
                "ttl": answer.ttl,
                "ad": answer.secure,
                "cnames": list(answer.cnames),
            }
        )
        try:
            record = parse_txt(strings)
        except StsError as e:
            note({"step": "record", "error": str(e)})
            if prior.active_policy(now) is not None:
                self._log.info(
                    "No usable MTA-STS record for {domain} ({error}); "
                    "keeping the cached policy until it expires",
                    domain=domain,
                    error=str(e),
                )
            return replace(
                prior,
                record=None,
                checked_at=now,
                due_at=due,
                failure=None if e.kind == "no-record" else str(e),
            )

        note({"step": "record", "id": record.id})
        seen = replace(prior, record=record.text, checked_at=now, due_at=due)
        active = prior.active_policy(now)
        if (
            active is not None
            and record.id == prior.policy_id
            and now < prior.fetched_at + min(REFRESH_AFTER, active.max_age / 2)
        ):
            note({"step": "policy", "cached": True})
            return replace(seen, failure=None)
        if record.id == prior.failed_id and now < prior.retry_at:
            note({"step": "policy", "backoff_until": prior.retry_at})
            return seen

        try:
            body = await self._fetcher.fetch(domain)
            note(
                {
                    "step": "fetch",
                    "url": "https://mta-sts.%s/.well-known/mta-sts.txt" % domain,
                    "body": body.decode("utf-8", "replace"),
                }
            )
            policy = parse_policy(body)
        except (FetchError, StsError) as e:
            note({"step": "fetch", "error": str(e)})
            self._log.warn(
                "MTA-STS policy fetch for {domain} (id {id}) failed ({error}); "
                "{action}; retrying no sooner than {retry} s",
                domain=domain,
                id=record.id,
                error=str(e),
                action=self._keeping(prior, now),
                retry=self._retry,
            )
            return replace(
                seen,
                failure="policy fetch failed: %s" % (e,),
                failed_id=record.id,
                retry_at=now + self._retry,
            )

        fetched = self._clock.seconds()
        note({"step": "policy", "mode": policy.mode, "max_age": policy.max_age})
        self._log.info(
            "Fetched MTA-STS policy for {domain} (id {id}, mode {mode}, "
            "max_age {max_age})",
            domain=domain,
            id=record.id,
            mode=policy.mode,
            max_age=policy.max_age,
        )
        return replace(
            seen,
            policy=policy,
            policy_id=record.id,
            fetched_at=fetched,
            expires_at=fetched + policy.max_age,
            failure=None,
            failed_id=None,
            retry_at=0.0,
        )

    @staticmethod
    def _keeping(prior: StsState, now: float) -> str:
        policy = prior.active_policy(now)
        if policy is None:
            return "no cached policy, treating as no MTA-STS"
        return "keeping the cached %s policy (expires in %d s)" % (
            policy.mode,
            prior.expires_at - now,
        )
