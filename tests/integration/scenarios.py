"""
The test world's domains: for each ``<name>.test`` its ``_mta-sts`` records
in the zone nsd serves, the policy host nginx serves, and the answer Postfix
should get. Hosts whose only defect is the one under test serve an otherwise
valid enforce policy, so a daemon that overlooked the defect would answer
enforce and fail the test.
"""

from __future__ import annotations

from typing import Sequence

from .servers import Site

POLICY_ADDRESS = "127.0.0.44"
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
}
for _site in SITES:
    _label = _site.domain[: -len(".test")]
    RECORDS[f"mta-sts.{_label}"] = [f"A {POLICY_ADDRESS}"]
    RECORDS.setdefault(_label, []).append(f"MX 10 mx1.{_site.domain}.")
    RECORDS[f"mx1.{_label}"] = ["A 127.0.0.1"]


def rotated_records() -> dict[str, list[str]]:
    """The zone change that publishes rotate.test's new policy id."""
    return {"_mta-sts.rotate": [_txt(f"v=STSv1; id={ROTATE_ID_AFTER}")]}
