"""
DNSSEC for the test world: ldnsutils' ldns-keygen makes one ECDSA P-256
signing key per zone (a CSK, flag 257) and ldns-signzone signs the zone files
nsd serves, so that unbound validates everything under ``test.`` from a trust
anchor at ``test.``; a zone whose parent publishes the DS of a key that never
signs it is how the world makes a bogus zone on purpose.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

KEYGEN = "/usr/bin/ldns-keygen"
SIGNZONE = "/usr/bin/ldns-signzone"
ALGORITHM = "ECDSAP256SHA256"

# Signatures valid from an hour ago (clock skew) to four weeks ahead: far
# beyond any test session.
_INCEPTION_SLACK = 3600
_VALIDITY = 28 * 86400


def _run(argv: Sequence[str], cwd: Path) -> str:
    r = subprocess.run(
        list(argv), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}"
        )
    return r.stdout


def _rdata_of(rr_text: str, rdtype: str) -> str:
    """The rdata of one presentation-format RR line, without ldns' ``;`` comment."""
    fields = rr_text.split(";", 1)[0].split()
    return " ".join(fields[fields.index(rdtype) + 1:])


@dataclass(frozen=True)
class SigningKey:
    """One key pair of a zone, as files ldns-signzone reads (``base``.key/.private)."""

    zone: str
    base: Path
    dnskey: str
    ds: str

    @classmethod
    def generate(cls, zone: str, directory: Path) -> "SigningKey":
        """A new KSK-flagged key for ``zone`` (absolute name), used alone as a CSK."""
        directory.mkdir(parents=True, exist_ok=True)
        name = _run([KEYGEN, "-a", ALGORITHM, "-k", zone], directory).strip()
        base = directory / name
        dnskey = _rdata_of(base.with_name(name + ".key").read_text(), "DNSKEY")
        ds = _rdata_of(base.with_name(name + ".ds").read_text(), "DS")
        return cls(zone, base, dnskey, ds)

    @property
    def key_tag(self) -> int:
        return int(self.ds.split()[0])

    def trust_anchor(self) -> str:
        """The DS RR, as unbound's ``trust-anchor:`` takes it."""
        return f"{self.zone} DS {self.ds}"


def sign_zone(unsigned: Path, signed: Path, origin: str, keys: Sequence[SigningKey]) -> None:
    """Write ``signed``: ``unsigned`` with DNSKEY, RRSIG and NSEC records added."""
    now = int(time.time())
    _run(
        [
            SIGNZONE,
            "-f", str(signed),
            "-o", origin,
            "-i", str(now - _INCEPTION_SLACK),
            "-e", str(now + _VALIDITY),
            str(unsigned),
            *(str(k.base) for k in keys),
        ],
        unsigned.parent,
    )
