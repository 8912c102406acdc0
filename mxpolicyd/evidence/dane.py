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

import enum
import sys
from dataclasses import asdict, dataclass
from typing import Any


class HostState(enum.StrEnum):
    """What DANE says of one MX host, from the strongest (stored by value)."""

    USABLE = "usable"  # secure TLSA, at least one usable record
    UNUSABLE = "unusable"  # secure TLSA, none usable: TLS required, unauthenticated
    NO_TLSA = "no-tlsa"  # secure addresses, no secure TLSA
    INSECURE = "insecure"  # addresses not DNSSEC-signed: no DANE for this host
    NO_ADDRESS = "no-address"  # NXDOMAIN or no A/AAAA: Postfix skips the host
    INDETERMINATE = "indeterminate"  # SERVFAIL (bogus) or timeout: unknown


class DaneStatus(enum.StrEnum):
    """What DANE says of a domain (stored by value)."""

    DANE_ONLY = "dane-only"  # every MX host has secure, usable TLSA
    DANE = "dane"  # some MX hosts have secure TLSA
    NONE = "none"  # DANE does not apply
    TEMP = "temp"  # the DNS could not tell

    @property
    def applies(self) -> bool:
        """Whether DANE decides the domain's verdict."""
        return self in (DaneStatus.DANE_ONLY, DaneStatus.DANE)


_DIGEST_LENGTH = {1: 32, 2: 64}


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
    state: HostState
    address_secure: bool | None = None
    tlsa_name: str | None = None
    tlsa: tuple[Tlsa, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
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
            state=HostState(data["state"]),
            address_secure=data.get("address_secure"),
            tlsa_name=data.get("tlsa_name"),
            tlsa=records,
            error=data.get("error"),
        )


@dataclass(frozen=True, slots=True)
class DaneState:
    """What the last DANE evaluation found, and when to look again."""

    status: DaneStatus = DaneStatus.NONE
    reason: str = ""
    mx_secure: bool | None = None
    implicit_mx: bool = False
    hosts: tuple[HostEvidence, ...] = ()
    checked_at: float = 0.0
    due_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["hosts"] = [h.to_json() for h in self.hosts]
        return data

    @classmethod
    def from_json(cls, data: Any) -> DaneState:
        if not isinstance(data, dict):
            raise ValueError("DANE state is not an object")
        try:
            status = DaneStatus(str(data.get("status")))
        except ValueError:
            raise ValueError("DANE state has an unknown status %r"
                             % (data.get("status"),)) from None
        try:
            # A million domains share a handful of reasons.
            return cls(
                status=status,
                reason=sys.intern(str(data.get("reason", ""))),
                mx_secure=data.get("mx_secure"),
                implicit_mx=bool(data.get("implicit_mx", False)),
                hosts=tuple(HostEvidence.from_json(h) for h in data.get("hosts", ())),
                checked_at=float(data.get("checked_at", 0.0)) or 0.0,
                due_at=float(data.get("due_at", 0.0)) or 0.0,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError("DANE state is malformed: %s" % (e,)) from None


def classify(hosts: tuple[HostEvidence, ...]) -> tuple[DaneStatus, str]:
    """
    The DANE status of a domain whose MX RRset is secure, from its hosts.

    Any indeterminate host makes the whole answer temporary: whether the
    domain is dane-only, dane or MTA-STS cannot be told, and guessing could
    weaken the policy.
    """
    for host in hosts:
        if host.state is HostState.INDETERMINATE:
            return DaneStatus.TEMP, "DNSSEC lookup for MX host %s failed: %s" % (
                host.name,
                host.error or "unknown error",
            )
    if hosts and all(h.state is HostState.USABLE for h in hosts):
        return DaneStatus.DANE_ONLY, "every MX host has secure, usable TLSA records"
    dane = [h.name for h in hosts if h.state in (HostState.USABLE, HostState.UNUSABLE)]
    if dane:
        if any(h.state is HostState.USABLE for h in hosts):
            return DaneStatus.DANE, "secure TLSA records for some MX hosts (%s)" % ", ".join(dane)
        return DaneStatus.DANE, "secure but unusable TLSA records only (%s)" % ", ".join(dane)
    return DaneStatus.NONE, "MX set is DNSSEC-signed but no MX host has secure TLSA records"
