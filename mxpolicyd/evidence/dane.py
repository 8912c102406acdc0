"""
DANE for SMTP (RFC 7672) as pure data: does a domain's MX set publish
usable, DNSSEC-validated TLSA records, and for how many of its hosts?

The daemon does not authenticate TLS itself (Postfix does DANE on its own);
it decides which Postfix level applies: C{dane-only} when every MX host has
secure usable TLSA, C{dane} when some have secure TLSA, nothing when DANE
does not apply, and a temporary failure when the DNS cannot tell.
L{classify} and L{usable} are pure; L{mxpolicyd.evidence.dane_lookups} asks
the DNS.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

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
