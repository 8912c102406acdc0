"""
The test world's domains: for each ``<name>.test`` its ``_mta-sts`` records
and its MX, address and TLSA records in the zones nsd serves, the policy host
nginx serves, and the answer Postfix should get. Hosts whose only defect is
the one under test serve an otherwise valid enforce policy, so a daemon that
overlooked the defect would answer enforce and fail the test; likewise DANE
domains differ from a stronger answer by exactly their one defect.
"""

from __future__ import annotations

from typing import Sequence

from .addresses import DEAD_ADDRESS, POLICY_ADDRESS
from .pki import tlsa_mismatch
from .servers import BOGUS, INSECURE, SECURE, ChildZone, Site

MAX_AGE = 86400


def policy(mode: str, mx: Sequence[str], max_age: int = MAX_AGE, eol: str = "\n") -> str:
    """A well-formed RFC 8461 policy body."""
    lines = ["version: STSv1", f"mode: {mode}"]
    lines += [f"mx: {m}" for m in mx]
    lines.append(f"max_age: {max_age}")
    return eol.join(lines) + eol


def enforce_answer(mx: Sequence[str]) -> str:
    """
    The table value the plain ``postfix`` profile gives an enforce policy:
    the socketmap reply after its ``OK``, as postmap prints it.
    """
    match = ":".join(m[1:] if m.startswith("*.") else m for m in mx)
    return f"secure match={match} servername=hostname"


def tlsrpt_answer(domain: str, mx: Sequence[str], max_age: int = MAX_AGE) -> str:
    """The ``postfix-tlsrpt`` profile's enforce value (Postfix >= 3.10 attributes)."""
    parts = [enforce_answer(mx), "policy_type=sts", f"policy_domain={domain}"]
    parts += [f"mx_host_pattern={m}" for m in mx]
    strings = ["version: STSv1", "mode: enforce"] + [f"mx: {m}" for m in mx]
    strings.append(f"max_age: {max_age}")
    parts += [f"{{ policy_string = {s} }}" for s in strings]
    return " ".join(parts)


def _txt(*strings: str) -> str:
    return "TXT " + " ".join('"' + s + '"' for s in strings)


def mx_of(domain: str) -> list[str]:
    return [f"mx1.{domain}", f"*.mx.{domain}"]


def _enforce(domain: str) -> str:
    return policy("enforce", mx_of(domain))


def big_policy(domain: str, size: int = 70000) -> str:
    """A valid enforce policy padded with an unknown field to ``size`` bytes."""
    head = _enforce(domain)
    pad = size - len(head) - len("x-padding: \n")
    return head + "x-padding: " + "a" * pad + "\n"


ENFORCE_MX = mx_of("enforce.test")
ENFORCE = enforce_answer(ENFORCE_MX)

ROTATE_MX_BEFORE = ["mx1.rotate.test"]
ROTATE_MX_AFTER = ["mx2.rotate.test", "*.pool.rotate.test"]
ROTATE_ID_AFTER = "20240202"

_redirect_target = "https://mta-sts.enforce.test/.well-known/mta-sts.txt"

SITES: list[Site] = [
    Site("enforce.test", _enforce("enforce.test")),
    Site("testing.test", policy("testing", mx_of("testing.test"))),
    Site("none.test", policy("none", mx_of("none.test"))),
    Site("norecord.test", _enforce("norecord.test")),
    Site("tworecords.test", _enforce("tworecords.test")),
    Site("badid.test", _enforce("badid.test")),
    Site("noid.test", _enforce("noid.test")),
    Site("othertxt.test", _enforce("othertxt.test")),
    Site("split.test", _enforce("split.test")),
    Site("crlf.test", policy("enforce", mx_of("crlf.test"), eol="\r\n")),
    Site("cname.test", _enforce("cname.test")),
    Site("notfound.test", None),
    Site("redirect.test", None, redirect=_redirect_target),
    Site("json.test", _enforce("json.test"), content_type="application/json"),
    Site("big.test", big_policy("big.test")),
    Site(
        "syntax.test",
        "version: STSv1\nmode: enforce\nmx: mx1.syntax.test\nmax_age 86400\n",
    ),
    Site("wrongname.test", _enforce("wrongname.test"), certificate="wrong"),
    Site("expired.test", _enforce("expired.test"), certificate="expired"),
    Site("rotate.test", policy("enforce", ROTATE_MX_BEFORE)),
    Site("restart.test", _enforce("restart.test")),
    Site("stale.test", _enforce("stale.test")),
    Site("danests.test", _enforce("danests.test")),
    Site("notlsasts.test", _enforce("notlsasts.test")),
]

GOOD_CERT_HOSTS = [s.host for s in SITES if s.certificate == "good"]
WRONG_CERT_NAME = "mta-sts.other.test"

_ID = "v=STSv1; id=20240101"

RECORDS: dict[str, list[str]] = {
    "_mta-sts.enforce": [_txt(_ID)],
    "_mta-sts.testing": [_txt(_ID)],
    "_mta-sts.none": [_txt(_ID)],
    # norecord: nothing at _mta-sts.norecord (NXDOMAIN), though its host serves
    "_mta-sts.tworecords": [_txt("v=STSv1; id=1"), _txt("v=STSv1; id=2")],
    "_mta-sts.badid": [_txt("v=STSv1; id=bad-id!")],
    "_mta-sts.noid": [_txt("v=STSv1; ext=1")],
    "_mta-sts.othertxt": [_txt(_ID), _txt("site-verification=abc123")],
    "_mta-sts.split": [_txt("v=STSv1; ", "id=2024", "0101")],
    "_mta-sts.crlf": [_txt(_ID)],
    "_mta-sts.cname": ["CNAME sts-record.elsewhere.test."],
    "sts-record.elsewhere": [_txt(_ID)],
    "_mta-sts.notfound": [_txt(_ID)],
    "_mta-sts.redirect": [_txt(_ID)],
    "_mta-sts.json": [_txt(_ID)],
    "_mta-sts.big": [_txt(_ID)],
    "_mta-sts.syntax": [_txt(_ID)],
    "_mta-sts.wrongname": [_txt(_ID)],
    "_mta-sts.expired": [_txt(_ID)],
    "_mta-sts.rotate": [_txt(_ID)],
    "_mta-sts.restart": [_txt(_ID)],
    "_mta-sts.stale": [_txt(_ID)],
    "_mta-sts.danests": [_txt(_ID)],
    "_mta-sts.notlsasts": [_txt(_ID)],
}
for _site in SITES:
    _label = _site.domain[: -len(".test")]
    RECORDS[f"mta-sts.{_label}"] = [f"A {POLICY_ADDRESS}"]
    RECORDS.setdefault(_label, []).append(f"MX 10 mx1.{_site.domain}.")
    RECORDS[f"mx1.{_label}"] = ["A 127.0.0.1"]


def rotated_records() -> dict[str, list[str]]:
    """The zone change that publishes rotate.test's new policy id."""
    return {"_mta-sts.rotate": [_txt(f"v=STSv1; id={ROTATE_ID_AFTER}")]}


# --- DANE ------------------------------------------------------------------

# Zones delegated from test. and served by the same nsd.
CHILD_ZONES = [
    ChildZone("signed", SECURE),
    ChildZone("insecure", INSECURE),
    ChildZone("bogus", BOGUS),
]

DANE_ONLY = "dane-only"
DANE = "dane"

_A = "A 127.0.0.1"


def _mx(*hosts: str) -> list[str]:
    """MX RRs, preferences 10, 20, ... in order; hosts relative to test."""
    return [f"MX {10 * (i + 1)} {h}.test." for i, h in enumerate(hosts)]


def _host(name: str, *tlsa: str) -> dict[str, list[str]]:
    """An MX host (relative to test.) at 127.0.0.1 with ``tlsa`` at _25._tcp."""
    records = {name: [_A]}
    if tlsa:
        records[f"_25._tcp.{name}"] = [f"TLSA {t}" for t in tlsa]
    return records


def dane_records(ee: str, ta: str) -> dict[str, list[str]]:
    """
    The DANE scenarios' records; ``ee`` and ``ta`` are the usable TLSA rdata
    texts (``3 1 1 ...`` of the MX certificate, ``2 1 1 ...`` of the CA).
    """
    # Unusable for SMTP: PKIX-TA(0) and PKIX-EE(1) usages, and a SHA-256
    # matching type with a 20-byte digest.
    pkix_ta = "0 0 1 " + "a0" * 32
    pkix_ee = "1 1 1 " + "b1" * 32
    short = "3 1 1 " + "c2" * 20
    return {
        # Every MX host has usable TLSA: dane-only.
        "daneonly": _mx("mx1.daneonly", "mx2.daneonly"),
        **_host("mx1.daneonly", ee),
        **_host("mx2.daneonly", ta),
        # Usable TLSA that matches no certificate: the daemon cannot tell.
        "mismatch": _mx("mx1.mismatch"),
        **_host("mx1.mismatch", tlsa_mismatch()),
        # One host with TLSA, one without: dane.
        "danesome": _mx("mx1.danesome", "mx2.danesome"),
        **_host("mx1.danesome", ee),
        **_host("mx2.danesome"),
        # Only unusable TLSA: dane (TLS required, unauthenticated).
        "unusable": _mx("mx1.unusable", "mx2.unusable"),
        **_host("mx1.unusable", pkix_ta, pkix_ee),
        **_host("mx2.unusable", short),
        # Secure MX, secure address, no TLSA: no DANE.
        "notlsa": _mx("mx1.notlsa"),
        **_host("mx1.notlsa"),
        # notlsasts.test is the same plus an enforce policy: its MX and host
        # come with its Site, as danests.test's do. danests.test: TLSA on
        # its MX host and an enforce policy: DANE wins.
        "_25._tcp.mx1.danests": [f"TLSA {ee}"],
        # In the signed child zone: the chain of trust runs through a DS.
        "dane.signed": _mx("mx1.dane.signed"),
        **_host("mx1.dane.signed", ee),
        # In the insecure child zone: TLSA that must be ignored.
        "dane.insecure": _mx("mx1.dane.insecure"),
        **_host("mx1.dane.insecure", ee),
        # In the bogus child zone: TEMP.
        "dane.bogus": _mx("mx1.dane.bogus"),
        **_host("mx1.dane.bogus", ee),
        # A secure domain one of whose hosts is in the bogus zone: TEMP.
        "bogushost": _mx("mx1.bogushost", "mx1.dane.bogus"),
        **_host("mx1.bogushost", ee),
        # dane.servfail.test: its zone's nameserver never answers: TEMP.
        "servfail": ["NS ns.servfail.test."],
        "ns.servfail": [f"A {DEAD_ADDRESS}"],
        # A secure domain one of whose hosts is in that zone: TEMP.
        "servfailhost": _mx("mx1.servfailhost", "mx.servfail"),
        **_host("mx1.servfailhost", ee),
        # The MX host is a CNAME; TLSA only at the target.
        "danecname": _mx("mx1.danecname"),
        "mx1.danecname": ["CNAME smtp.danecname.test."],
        **_host("smtp.danecname", ee),
        # The MX host is a CNAME; TLSA only at the original name.
        "cnameorig": _mx("mx1.cnameorig"),
        "mx1.cnameorig": ["CNAME smtp.cnameorig.test."],
        **_host("smtp.cnameorig"),
        "_25._tcp.mx1.cnameorig": [f"TLSA {ee}"],
        # No MX: the domain is its own MX host.
        **_host("implicit", ee),
        # One host with TLSA, one whose address (and TLSA) is insecure: dane.
        "insecurehost": _mx("mx1.insecurehost", "mx1.dane.insecure"),
        **_host("mx1.insecurehost", ee),
        # One host with TLSA, one that does not exist: dane.
        "nxhost": _mx("mx1.nxhost", "missing.nxhost"),
        **_host("mx1.nxhost", ee),
        # No TLSA until a test publishes one at _25._tcp.mx1.tlsachange.
        "tlsachange": _mx("mx1.tlsachange"),
        **_host("mx1.tlsachange"),
    }


def zone_records(ee: str, ta: str) -> dict[str, list[str]]:
    """Every record of the world: the MTA-STS scenarios' and the DANE scenarios'."""
    dane = dane_records(ee, ta)
    overlap = sorted(set(dane) & set(RECORDS))
    assert not overlap, f"owners in both the MTA-STS and DANE scenarios: {overlap}"
    return {**RECORDS, **dane}


# Every host a DANE scenario publishes TLSA for (CNAMEs expanded, the
# original names kept): the names the MX certificate is issued for.
DANE_MX_HOSTS = sorted(
    {owner[len("_25._tcp."):] + ".test" for owner in dane_records("", "") if owner[0] == "_"}
    | {"mx1.danecname.test", "smtp.cnameorig.test", "mx1.tlsachange.test"}
)
