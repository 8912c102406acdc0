"""
MTA-STS (RFC 8461) as pure data: the ``_mta-sts`` TXT record and the policy
body go in as the bytes the DNS client and the HTTPS fetcher received, a
validated `StsRecord` or `StsPolicy` (or an `StsError` saying why not) comes
out, and `mx_matches` says which MX hosts a policy allows.  No I/O here, so
table tests cover every rule.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mxpolicyd.evidence.names import is_valid_hostname

__all__ = [
    "MAX_AGE_LIMIT",
    "MAX_POLICY_SIZE",
    "MODES",
    "StsError",
    "StsPolicy",
    "StsRecord",
    "mx_matches",
    "mx_pattern",
    "parse_policy",
    "parse_txt",
]


# RFC 8461 s3.3 suggests senders accept policies of at most 64 KiB.
MAX_POLICY_SIZE = 65536
# RFC 8461 s3.2: max_age has a "maximum value of 31557600" (one year).
MAX_AGE_LIMIT = 31557600
MODES = frozenset({"enforce", "testing", "none"})

# Error kinds, so that callers and metrics can tell them apart.
NO_RECORD = "no-record"
MULTIPLE_RECORDS = "multiple-records"
INVALID_RECORD = "invalid-record"
POLICY_SYNTAX = "policy-syntax"


class StsError(ValueError):
    """
    Why a TXT record set or a policy gives no usable MTA-STS policy.

    A ValueError, so that code reading stored state can treat a corrupt
    stored policy like any other malformed JSON value.

    `kind` is one of "no-record", "multiple-records", "invalid-record" (the
    TXT record) or "policy-syntax" (the policy body, or a corrupt stored one);
    `message` is one short ASCII line fit for a log and for ``mxpolicyd query``.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def _show(value: str, limit: int = 40) -> str:
    """
    Quote untrusted text for an error message: ASCII, one line, bounded
    after escaping (an escaped character takes up to ten).
    """
    text = ascii(value)
    return text if len(text) <= limit + 2 else text[:limit] + "..."


def _show_stored(value: Any, limit: int = 40) -> str:
    """Like `_show`, for a value of any JSON type read back from the store."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + "..."


# A record counts as an STS record when "v=STSv1" is followed by the field
# delimiter (*WSP ";") or ends there; "v=STSv10..." or "V=STSv1" are discarded.
_STS_RECORD = re.compile(rb"v=STSv1(?:[ \t;]|\Z)")
_TXT_DELIMITER = re.compile(r"[ \t]*;[ \t]*")
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_TXT_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
# Shared by TXT extension names and policy field names (same ABNF).
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")


@dataclass(frozen=True, slots=True)
class StsRecord:
    """The one valid STS TXT record of a domain: its id triggers refetches."""

    id: str
    text: str


def parse_txt(records: Sequence[Sequence[bytes]]) -> StsRecord:
    """
    Pick and validate the STS record among every TXT record at ``_mta-sts``.

    Each record is its character-strings, concatenated without separator.
    Records not starting with ``v=STSv1`` are discarded first, so an SPF or
    other TXT record beside the STS one is harmless; then exactly one must
    remain, and it must be valid.
    """
    candidates = [
        raw for raw in (b"".join(strings) for strings in records)
        if _STS_RECORD.match(raw)
    ]
    if not candidates:
        raise StsError(NO_RECORD, "no TXT record starts with v=STSv1")
    if len(candidates) > 1:
        raise StsError(
            MULTIPLE_RECORDS,
            f"{len(candidates)} TXT records start with v=STSv1, "
            "RFC 8461 requires exactly one",
        )
    return _parse_record(candidates[0])


def _parse_record(raw: bytes) -> StsRecord:
    """
    Validate one STS record against the RFC 8461 s3.1 grammar.

    Strict except for trailing whitespace, which is tolerated. Several id
    fields: each must be well-formed and the first counts, as for duplicated
    fields in the policy body (s3.2). Names are case-sensitive (``%s"id="``),
    so ``ID=`` is an extension field and does not supply the id.
    """
    if not raw.isascii():
        raise StsError(INVALID_RECORD, "STS TXT record is not US-ASCII")
    text = raw.decode("ascii")
    fields = _TXT_DELIMITER.split(text.rstrip(" \t"))
    if fields[-1] == "" and len(fields) > 1:
        fields.pop()  # one trailing delimiter is allowed
    if fields[0] != "v=STSv1":
        raise StsError(
            INVALID_RECORD,
            f"STS TXT record: {_show(fields[0])} is not v=STSv1 followed by ';'",
        )
    record_id: str | None = None
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        if not equals or _FIELD_NAME.fullmatch(name) is None:
            raise StsError(
                INVALID_RECORD, f"STS TXT record: malformed field {_show(field)}"
            )
        if name == "id":
            if _TXT_ID.fullmatch(value) is None:
                raise StsError(
                    INVALID_RECORD,
                    f"STS TXT record: id {_show(value)} is not 1-32 letters "
                    "and digits",
                )
            if record_id is None:
                record_id = value
        elif _TXT_EXT_VALUE.fullmatch(value) is None:
            raise StsError(
                INVALID_RECORD,
                f"STS TXT record: field {_show(name)} has a malformed value "
                f"{_show(value)}",
            )
    if record_id is None:
        raise StsError(INVALID_RECORD, "STS TXT record has no id field")
    return StsRecord(id=record_id, text=text)


_MAX_AGE = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """
    A validated policy, reduced to what the verdict and TLSRPT need.

    `mx` holds the patterns in policy order, lowercase A-labels, duplicates
    removed; it is empty only when `mode` is "none".
    """

    mode: str
    max_age: int
    mx: tuple[str, ...]

    def canonical_lines(self) -> tuple[str, ...]:
        """The policy as TLSRPT ``policy-string`` lines (RFC 8460 s4.4)."""
        return (
            "version: STSv1",
            f"mode: {self.mode}",
            *(f"mx: {pattern}" for pattern in self.mx),
            f"max_age: {self.max_age}",
        )

    def to_json(self) -> dict[str, Any]:
        """The form kept in the store."""
        return {"mode": self.mode, "max_age": self.max_age, "mx": list(self.mx)}

    @classmethod
    def from_json(cls, data: Any) -> StsPolicy:
        """
        Rebuild a stored policy, checking it as strictly as a fetched one.

        A corrupt or hand-edited store must not yield a policy that a fetch
        would have refused; unknown keys are ignored for forward compatibility.
        """
        if not isinstance(data, dict):
            raise StsError(POLICY_SYNTAX, "stored policy is not a JSON object")
        mode = data.get("mode")
        if not isinstance(mode, str) or mode not in MODES:
            raise StsError(
                POLICY_SYNTAX, f"stored policy: mode {_show_stored(mode)} is invalid"
            )
        max_age = data.get("max_age")
        # bool is an int subclass: refuse true/false explicitly.
        if (
            not isinstance(max_age, int)
            or isinstance(max_age, bool)
            or not 0 <= max_age <= MAX_AGE_LIMIT
        ):
            raise StsError(
                POLICY_SYNTAX,
                f"stored policy: max_age {_show_stored(max_age)} is invalid",
            )
        raw_mx = data.get("mx")
        if not isinstance(raw_mx, (list, tuple)):
            raise StsError(POLICY_SYNTAX, "stored policy: mx is not a list")
        patterns: list[str] = []
        for value in raw_mx:
            pattern = mx_pattern(value) if isinstance(value, str) else None
            if pattern is None:
                raise StsError(
                    POLICY_SYNTAX,
                    f"stored policy: mx {_show_stored(value)} is not a host name "
                    "or *.name",
                )
            patterns.append(pattern)
        if not patterns and mode != "none":
            raise StsError(POLICY_SYNTAX, f"stored policy: mode {mode} without mx")
        return cls(mode=sys.intern(mode), max_age=max_age, mx=tuple(dict.fromkeys(patterns)))


def mx_pattern(value: str) -> str | None:
    """
    The canonical form of a policy mx value, or None if it is not one.

    ``["*."] Domain`` with the wildcard only as the whole leftmost label.
    U-labels are refused rather than converted: the grammar says Domain (RFC
    5321, ASCII), and the MX names we compare against come from DNS as A-labels.
    One trailing dot is tolerated, as in any DNS name.
    """
    if not value.isascii():  # before lower(): "\u212a".lower() == "k"
        return None
    pattern = value.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    host = pattern[2:] if pattern.startswith("*.") else pattern
    return pattern if is_valid_hostname(host) else None


def _policy_error(number: int, what: str) -> StsError:
    return StsError(POLICY_SYNTAX, f"policy line {number}: {what}")


def parse_policy(body: bytes) -> StsPolicy:
    """
    Validate a fetched policy body (RFC 8461 s3.2).

    Strict where a mistake could change what gets enforced, tolerant of
    layout: LF or CRLF (mixed too), a missing final newline, blank lines, a
    leading UTF-8 byte order mark, whitespace around the field name and value.
    Field names and the version and mode values are case-sensitive as in the
    ABNF. A line without ":" or with a malformed field name is an error.
    Unknown fields are ignored (their values may be UTF-8, as the grammar
    allows); for a repeated version, mode or max_age the first counts and
    later ones are not looked at; every mx line counts.
    """
    if len(body) > MAX_POLICY_SIZE:
        raise StsError(
            POLICY_SYNTAX,
            f"policy is {len(body)} bytes, over the limit of {MAX_POLICY_SIZE}",
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise StsError(POLICY_SYNTAX, "policy is not UTF-8 text") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the last line's terminator, not an extra line

    version: str | None = None
    mode: str | None = None
    max_age: int | None = None
    patterns: list[str] = []
    for number, line in enumerate(lines, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip(" \t"):
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise _policy_error(number, f"no ':' in {_show(line)}")
        name = name.strip(" \t")
        value = value.strip(" \t")
        if _FIELD_NAME.fullmatch(name) is None:
            raise _policy_error(number, f"malformed field name {_show(name)}")
        if name == "mx":
            pattern = mx_pattern(value)
            if pattern is None:
                raise _policy_error(
                    number,
                    f"mx {_show(value)} is not an A-label host name or *.name",
                )
            patterns.append(pattern)
        elif name == "version":
            if version is None:
                if value != "STSv1":
                    raise _policy_error(
                        number, f"version {_show(value)} is not STSv1"
                    )
                version = value
        elif name == "mode":
            if mode is None:
                if value not in MODES:
                    raise _policy_error(
                        number,
                        f"mode {_show(value)} is not enforce, testing or none",
                    )
                mode = value
        elif name == "max_age":
            if max_age is None:
                if _MAX_AGE.fullmatch(value) is None:
                    raise _policy_error(
                        number, f"max_age {_show(value)} is not 1-10 digits"
                    )
                # The RFC gives 31557600 as the maximum value; a larger one
                # breaks the grammar's contract, so the policy is invalid
                # rather than silently capped.
                if int(value) > MAX_AGE_LIMIT:
                    raise _policy_error(
                        number, f"max_age {int(value)} is over {MAX_AGE_LIMIT}"
                    )
                max_age = int(value)
        # Any other field is an extension: ignored.

    if version is None:
        raise StsError(POLICY_SYNTAX, "policy has no version field")
    if mode is None:
        raise StsError(POLICY_SYNTAX, "policy has no mode field")
    if max_age is None:
        raise StsError(POLICY_SYNTAX, "policy has no max_age field")
    if not patterns and mode != "none":
        # RFC 8461 s3.2: mx is required unless the mode is none.
        raise StsError(POLICY_SYNTAX, f"policy has mode {mode} but no mx field")
    return StsPolicy(mode=mode, max_age=max_age, mx=tuple(dict.fromkeys(patterns)))


def mx_matches(pattern: str, host: str) -> bool:
    """
    Whether MX `host` is allowed by policy `pattern` (RFC 8461 s4.1).

    Case-insensitive, one trailing dot ignored on either side; ``*.x`` matches
    exactly one extra leftmost label, never ``x`` itself nor deeper names.
    """
    if not (pattern.isascii() and host.isascii()):
        return False
    pattern = pattern.lower()
    host = host.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if host.endswith("."):
        host = host[:-1]
    if pattern.startswith("*."):
        suffix = pattern[1:]
        if len(suffix) < 2 or not host.endswith(suffix):
            return False
        first = host[: -len(suffix)]
        return first != "" and "." not in first
    return host == pattern
