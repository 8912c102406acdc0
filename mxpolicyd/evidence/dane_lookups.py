"""
DANE lookups (RFC 7672): the MX set, each host's addresses and TLSA
records, through the validating resolver, into a L{DaneState}.

It trusts the AD bit of the configured resolver, which must be a local
validating one.  A host's TLSA is asked only when its addresses are secure;
the rules that turn the answers into a status are L{mxpolicyd.evidence.dane}'s.
A resolver that cannot answer is logged once per outage.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import dns.rcode
import dns.rdatatype
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxpolicyd.evidence.dane import (
    DaneState,
    DaneStatus,
    HostEvidence,
    HostState,
    Tlsa,
    classify,
)
from mxpolicyd.evidence.outage import ResolverOutage
from mxpolicyd.net.dns import Answer, DNSError, clamp
from mxpolicyd.ops.times import utc


class _Resolver(Protocol):
    def query(self, name: str, rdtype: int) -> Deferred[Answer]: ...


class DaneEvaluator:
    """Looks up a domain's MX set, its hosts' addresses and TLSA records."""

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        resolver: _Resolver,
        ttl_min: float = 60,
        ttl_max: float = 3600,
        max_hosts: int = 32,
        grace: float = 86400,
    ) -> None:
        """
        @param grace: how long after its last conclusive check a DANE result
            is kept when re-checks are indeterminate.
        """
        self._grace = grace
        self._clock = clock
        self._resolver = resolver
        self._ttl_min = ttl_min
        self._ttl_max = ttl_max
        self._max_hosts = max_hosts
        self._outage = ResolverOutage(clock, self._log, "DANE evaluations")

    def evaluate(self, domain: str, prior: DaneState | None = None) -> Deferred[DaneState]:
        errors: list[BaseException] = []
        d = Deferred.fromCoroutine(self._evaluate(domain, errors))
        d.addCallback(self._settle, domain, prior, errors)
        return d

    def _settle(self, new: DaneState, domain: str, prior: DaneState | None,
                errors: list[BaseException]) -> DaneState:
        """
        A conclusive result outlives indeterminate re-checks, for a while.

        Keeping it never weakens anything: Postfix cannot deliver without
        the same DNS, and its own DANE lookups fail closed.  Answering TEMP
        instead would turn a flaky resolver into deferred mail for domains
        whose policy is known.  The log line says which of the two happens.
        """
        if not errors:
            self._outage.answered(domain)
        if new.status is not DaneStatus.TEMP:
            return new
        now = self._clock.seconds()
        if prior is not None and prior.status is not DaneStatus.TEMP and now < prior.checked_at + self._grace:
            result = replace(prior, due_at=new.due_at)
            action = "keeping the %s result of %s until %s at the latest" % (
                prior.status, utc(prior.checked_at), utc(prior.checked_at + self._grace))
            consequence = "keep a cached result"
        else:
            result = new
            action = "answering TEMP"
            consequence = "answer TEMP"
        self._outage.failed(errors, consequence,
                            "DANE evaluation of {domain} failed: {reason}; {action}",
                            domain=domain, reason=new.reason, action=action)
        return result

    async def _evaluate(self, domain: str, errors: list[BaseException]) -> DaneState:
        """The domain's DANE state; C{errors} gets what made it TEMP, if anything did."""
        now = self._clock.seconds()
        try:
            mx = await self._resolver.query(domain, dns.rdatatype.MX)
        except DNSError as e:
            errors.append(e)
            return self._temp(now, "MX lookup failed: %s" % (e,))
        except ValueError:
            return self._done(now, [], DaneStatus.NONE, "not a resolvable name")
        ttls = [mx.ttl]
        if mx.rcode == dns.rcode.NXDOMAIN:
            return self._done(now, ttls, DaneStatus.NONE, "the domain does not exist",
                              mx_secure=mx.secure)
        if not mx.secure:
            return self._done(now, ttls, DaneStatus.NONE, "the MX RRset is not DNSSEC-signed",
                              mx_secure=False)
        if mx.exists:
            targets = sorted(
                (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())
                for r in mx.records
            )
            if any(name in ("", ".") for _, name in targets):
                return self._done(now, ttls, DaneStatus.NONE, "null MX: the domain accepts no mail",
                                  mx_secure=True)
            implicit = False
        else:
            # RFC 7672 s2.2.1: no MX RRset, the domain is its own MX.
            targets = [(0, domain)]
            implicit = True
        if len(targets) > self._max_hosts:
            return self._temp(now, "%d MX hosts, more than the %d evaluated"
                              % (len(targets), self._max_hosts))
        hosts: list[HostEvidence] = await gatherResults(
            [Deferred.fromCoroutine(self._host(name, pref, ttls, errors))
             for pref, name in targets],
            consumeErrors=True,
        )
        status, reason = classify(tuple(hosts))
        if status is DaneStatus.TEMP:
            return DaneState(DaneStatus.TEMP, reason, True, implicit, tuple(hosts), now,
                             now + self._ttl_min)
        return self._done(now, ttls, status, reason, mx_secure=True,
                          implicit_mx=implicit, hosts=tuple(hosts))

    async def _host(self, name: str, preference: int, ttls: list[int],
                    errors: list[BaseException]) -> HostEvidence:
        try:
            a, aaaa = await gatherResults(
                [self._resolver.query(name, dns.rdatatype.A),
                 self._resolver.query(name, dns.rdatatype.AAAA)],
                consumeErrors=True,
            )
        except Exception as e:
            error = getattr(e, "subFailure", None)
            reason = error.getErrorMessage() if error is not None else str(e)
            if error is not None and error.check(ValueError):
                return HostEvidence(name, preference, HostState.NO_ADDRESS, error="not a resolvable name")
            errors.append(error.value if error is not None else e)
            return HostEvidence(name, preference, HostState.INDETERMINATE, error=reason)
        ttls.extend((a.ttl, aaaa.ttl))
        found = [ans for ans in (a, aaaa) if ans.exists]
        if not found:
            return HostEvidence(name, preference, HostState.NO_ADDRESS, address_secure=a.secure and aaaa.secure)
        secure = all(ans.secure for ans in found)
        if not secure:
            return HostEvidence(name, preference, HostState.INSECURE, address_secure=False)
        # RFC 7672 s2.2.2: the CNAME-expanded name first, then the original.
        names = [found[0].canonical_name, name] if found[0].canonical_name != name else [name]
        for candidate in names:
            tlsa_name = "_25._tcp." + candidate
            try:
                answer = await self._resolver.query(tlsa_name, dns.rdatatype.TLSA)
            except DNSError as e:
                errors.append(e)
                return HostEvidence(name, preference, HostState.INDETERMINATE, True, tlsa_name,
                                    error="TLSA lookup failed: %s" % (e,))
            except ValueError:
                continue
            ttls.append(answer.ttl)
            if not answer.exists and not answer.malformed:
                continue
            if not answer.secure:
                # Insecure TLSA records are ignored (RFC 7672 s2.2).
                return HostEvidence(name, preference, HostState.NO_TLSA, True, tlsa_name)
            records = tuple(
                Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert).hex())
                for r in answer.records
            )
            # Records too malformed to parse count as unusable ones.
            state = HostState.USABLE if any(t.usable for t in records) else HostState.UNUSABLE
            return HostEvidence(name, preference, state, True, tlsa_name, records,
                                error="%d malformed TLSA records" % answer.malformed
                                if answer.malformed else None)
        return HostEvidence(name, preference, HostState.NO_TLSA, True)

    def _temp(self, now: float, reason: str) -> DaneState:
        return DaneState(DaneStatus.TEMP, reason, None, False, (), now, now + self._ttl_min)

    def _done(self, now: float, ttls: list[int], status: DaneStatus, reason: str,
              mx_secure: bool | None = None, implicit_mx: bool = False,
              hosts: tuple[HostEvidence, ...] = ()) -> DaneState:
        ttl = clamp(min(ttls) if ttls else self._ttl_max, self._ttl_min, self._ttl_max)
        return DaneState(status, reason, mx_secure, implicit_mx, hosts, now, now + ttl)
