"""
DANE for SMTP (RFC 7672): does a domain's MX set publish usable, DNSSEC-
validated TLSA records, and for how many of its hosts?

The daemon does not authenticate TLS itself (Postfix does DANE on its own);
it decides which Postfix level applies: C{dane-only} when every MX host has
secure usable TLSA, C{dane} when some have secure TLSA, nothing when DANE
does not apply, and a temporary failure when the DNS cannot tell.  It trusts
the AD bit of the configured resolver, which must be a local validating one.
L{classify} and L{usable} are pure; L{DaneEvaluator} does the lookups.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import dns.rcode
import dns.rdatatype
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel

from mxpolicyd.outage import ResolverOutage, resolver_kind
from mxpolicyd.resolver import Answer, DNSError, clamp
from mxpolicyd.times import utc

# Host states, from the strongest.
USABLE = "usable"  # secure TLSA, at least one usable record
UNUSABLE = "unusable"  # secure TLSA, none usable: TLS required, unauthenticated
NO_TLSA = "no-tlsa"  # secure addresses, no secure TLSA
INSECURE = "insecure"  # addresses not DNSSEC-signed: no DANE for this host
NO_ADDRESS = "no-address"  # NXDOMAIN or no A/AAAA: Postfix skips the host
INDETERMINATE = "indeterminate"  # SERVFAIL (bogus) or timeout: unknown

DANE_ONLY = "dane-only"
DANE = "dane"
NONE = "none"
TEMP = "temp"

_DIGEST_LENGTH = {1: 32, 2: 64}
_STATUSES = {s: s for s in (DANE_ONLY, DANE, NONE, TEMP)}


class _Resolver(Protocol):
    def query(self, name: str, rdtype: int) -> Deferred[Answer]: ...


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: str  # hex

    @property
    def usable(self) -> bool:
        return usable(self.usage, self.selector, self.mtype, bytes.fromhex(self.data))


def usable(usage: int, selector: int, mtype: int, data: bytes) -> bool:
    """
    RFC 7672 s3.1: only DANE-TA(2) and DANE-EE(3) apply to SMTP; selector
    and matching type must be ones a client implements, and a digest must
    have its length.
    """
    if usage not in (2, 3) or selector not in (0, 1) or mtype not in (0, 1, 2):
        return False
    if mtype == 0:
        return len(data) > 0
    return len(data) == _DIGEST_LENGTH[mtype]


@dataclass(frozen=True, slots=True)
class HostEvidence:
    name: str
    preference: int
    state: str
    address_secure: bool | None = None
    tlsa_name: str | None = None
    tlsa: tuple[Tlsa, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["tlsa"] = [dict(asdict(t), usable=t.usable) for t in self.tlsa]
        return data

    @classmethod
    def from_json(cls, data: Any) -> HostEvidence:
        if not isinstance(data, dict):
            raise ValueError("DANE host evidence is not an object")
        records = tuple(
            Tlsa(int(t["usage"]), int(t["selector"]), int(t["mtype"]), str(t["data"]))
            for t in data.get("tlsa", ())
        )
        return cls(
            name=str(data["name"]),
            preference=int(data["preference"]),
            state=sys.intern(str(data["state"])),
            address_secure=data.get("address_secure"),
            tlsa_name=data.get("tlsa_name"),
            tlsa=records,
            error=data.get("error"),
        )


@dataclass(frozen=True, slots=True)
class DaneState:
    """What the last DANE evaluation found, and when to look again."""

    status: str = NONE
    reason: str = ""
    mx_secure: bool | None = None
    implicit_mx: bool = False
    hosts: tuple[HostEvidence, ...] = ()
    checked_at: float = 0.0
    due_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["hosts"] = [h.to_json() for h in self.hosts]
        return data

    @classmethod
    def from_json(cls, data: Any) -> DaneState:
        if not isinstance(data, dict):
            raise ValueError("DANE state is not an object")
        status = data.get("status")
        if status not in (DANE_ONLY, DANE, NONE, TEMP):
            raise ValueError("DANE state has an unknown status %r" % (status,))
        try:
            # A million domains share a handful of statuses and reasons.
            return cls(
                status=_STATUSES[status],
                reason=sys.intern(str(data.get("reason", ""))),
                mx_secure=data.get("mx_secure"),
                implicit_mx=bool(data.get("implicit_mx", False)),
                hosts=tuple(HostEvidence.from_json(h) for h in data.get("hosts", ())),
                checked_at=float(data.get("checked_at", 0.0)) or 0.0,
                due_at=float(data.get("due_at", 0.0)) or 0.0,
            )
        except (KeyError, TypeError) as e:
            raise ValueError("DANE state is malformed: %s" % (e,)) from None


def classify(hosts: tuple[HostEvidence, ...]) -> tuple[str, str]:
    """
    The DANE status of a domain whose MX RRset is secure, from its hosts.

    Any indeterminate host makes the whole answer temporary: whether the
    domain is dane-only, dane or MTA-STS cannot be told, and guessing could
    weaken the policy.
    """
    for host in hosts:
        if host.state == INDETERMINATE:
            return TEMP, "DNSSEC lookup for MX host %s failed: %s" % (
                host.name,
                host.error or "unknown error",
            )
    if hosts and all(h.state == USABLE for h in hosts):
        return DANE_ONLY, "every MX host has secure, usable TLSA records"
    dane = [h.name for h in hosts if h.state in (USABLE, UNUSABLE)]
    if dane:
        if any(h.state == USABLE for h in hosts):
            return DANE, "secure TLSA records for some MX hosts (%s)" % ", ".join(dane)
        return DANE, "secure but unusable TLSA records only (%s)" % ", ".join(dane)
    return NONE, "MX set is DNSSEC-signed but no MX host has secure TLSA records"


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
        if new.status != TEMP:
            return new
        now = self._clock.seconds()
        if prior is not None and prior.status != TEMP and now < prior.checked_at + self._grace:
            result = replace(prior, due_at=new.due_at)
            action = "keeping the %s result of %s until %s at the latest" % (
                prior.status, utc(prior.checked_at), utc(prior.checked_at + self._grace))
            consequence = "keep a cached result"
        else:
            result = new
            action = "answering TEMP"
            consequence = "answer TEMP"
        kind = resolver_kind(errors)
        level, outage = (self._outage.failed(kind, consequence) if kind is not None
                         else (LogLevel.warn, ""))
        self._log.emit(level, "DANE evaluation of {domain} failed: {reason}; {action}{outage}",
                       domain=domain, reason=new.reason, action=action, outage=outage)
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
            return self._done(now, [], NONE, "not a resolvable name")
        ttls = [mx.ttl]
        if mx.rcode == dns.rcode.NXDOMAIN:
            return self._done(now, ttls, NONE, "the domain does not exist",
                              mx_secure=mx.secure)
        if not mx.secure:
            return self._done(now, ttls, NONE, "the MX RRset is not DNSSEC-signed",
                              mx_secure=False)
        if mx.exists:
            targets = sorted(
                (int(r.preference), r.exchange.to_text(omit_final_dot=True).lower())
                for r in mx.records
            )
            if any(name in ("", ".") for _, name in targets):
                return self._done(now, ttls, NONE, "null MX: the domain accepts no mail",
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
        if status == TEMP:
            return DaneState(TEMP, reason, True, implicit, tuple(hosts), now,
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
                return HostEvidence(name, preference, NO_ADDRESS, error="not a resolvable name")
            errors.append(error.value if error is not None else e)
            return HostEvidence(name, preference, INDETERMINATE, error=reason)
        ttls.extend((a.ttl, aaaa.ttl))
        found = [ans for ans in (a, aaaa) if ans.exists]
        if not found:
            return HostEvidence(name, preference, NO_ADDRESS, address_secure=a.secure and aaaa.secure)
        secure = all(ans.secure for ans in found)
        if not secure:
            return HostEvidence(name, preference, INSECURE, address_secure=False)
        # RFC 7672 s2.2.2: the CNAME-expanded name first, then the original.
        names = [found[0].canonical_name, name] if found[0].canonical_name != name else [name]
        for candidate in names:
            tlsa_name = "_25._tcp." + candidate
            try:
                answer = await self._resolver.query(tlsa_name, dns.rdatatype.TLSA)
            except DNSError as e:
                errors.append(e)
                return HostEvidence(name, preference, INDETERMINATE, True, tlsa_name,
                                    error="TLSA lookup failed: %s" % (e,))
            except ValueError:
                continue
            ttls.append(answer.ttl)
            if not answer.exists and not answer.malformed:
                continue
            if not answer.secure:
                # Insecure TLSA records are ignored (RFC 7672 s2.2).
                return HostEvidence(name, preference, NO_TLSA, True, tlsa_name)
            records = tuple(
                Tlsa(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert).hex())
                for r in answer.records
            )
            # Records too malformed to parse count as unusable ones.
            state = USABLE if any(t.usable for t in records) else UNUSABLE
            return HostEvidence(name, preference, state, True, tlsa_name, records,
                                error="%d malformed TLSA records" % answer.malformed
                                if answer.malformed else None)
        return HostEvidence(name, preference, NO_TLSA, True)

    def _temp(self, now: float, reason: str) -> DaneState:
        return DaneState(TEMP, reason, None, False, (), now, now + self._ttl_min)

    def _done(self, now: float, ttls: list[int], status: str, reason: str,
              mx_secure: bool | None = None, implicit_mx: bool = False,
              hosts: tuple[HostEvidence, ...] = ()) -> DaneState:
        ttl = clamp(min(ttls) if ttls else self._ttl_max, self._ttl_min, self._ttl_max)
        return DaneState(status, reason, mx_secure, implicit_mx, hosts, now, now + ttl)
