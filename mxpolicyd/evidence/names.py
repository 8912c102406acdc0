"""
Lookup-key normalisation, the first step of every lookup and before the cache.

Postfix hands over the next-hop verbatim: any case, possibly UTF-8 U-labels
(SMTPUTF8), possibly ``[host]:port`` or one of its parent-domain probes such as
``.example.com``. The cache, the store and every DNS and HTTPS query use the one
form that `normalise` returns, the lowercase A-label name without a trailing dot.
`None` means the key cannot have an MTA-STS or DANE policy of its own, so the
daemon answers NOTFOUND at once without any lookup.
"""

from __future__ import annotations

import re

import idna

__all__ = ["MAX_NAME_LENGTH", "is_valid_hostname", "normalise"]

# 255 octets in wire form is 253 characters in text form without the root dot.
MAX_NAME_LENGTH = 253

# A key longer than this in UTF-8 cannot map to 253 A-label octets: every
# code point that survives UTS 46 mapping costs at least one octet of A-label
# and takes at most four octets of UTF-8. Bounding the input keeps a hostile
# 10 kB key from costing a full UTS 46 pass.
_MAX_KEY_OCTETS = 1024

# Explicit [A-Za-z] rather than re.IGNORECASE: with IGNORECASE, str patterns
# also match non-ASCII case variants such as U+212A KELVIN SIGN for "k".
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# What normalise accepts: at least two labels. A single-label name is never
# looked up: no TLD publishes MTA-STS, and a dotless key is a local alias or a
# transport nexthop, not a mail domain whose policy could be discovered.
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")


def is_valid_hostname(name: str) -> bool:
    """
    Whether `name` is an LDH host name in A-label form, no trailing dot.

    Used for MTA-STS mx patterns (after the ``*.`` is removed), so unlike
    `normalise` it accepts a single label; an all-numeric last label is refused
    because that is an address literal, not a name.
    """
    return (
        len(name) <= MAX_NAME_LENGTH
        and name.isascii()
        and _HOSTNAME.fullmatch(name) is not None
        and not name.rpartition(".")[2].isdigit()
    )


def normalise(key: bytes) -> str | None:
    """
    The canonical domain for a lookup key, or None if no lookup makes sense.

    Pure ASCII keys (nearly all of them) take a regex fast path and never reach
    the idna package.
    """
    if key.isascii():
        name = key.decode("ascii").lower()
        if name.endswith("."):
            name = name[:-1]
    else:
        converted = _from_unicode(key)
        if converted is None:
            return None
        name = converted
    if len(name) > MAX_NAME_LENGTH or _DOMAIN.fullmatch(name) is None:
        return None
    if name.rpartition(".")[2].isdigit():
        # All-numeric TLD: a dotted-quad address literal or not a name at all.
        return None
    if "xn--" in name and not _alabels_decode(name):
        return None
    return name


def _from_unicode(key: bytes) -> str | None:
    """
    Map a UTF-8 key to A-labels with UTS 46 (non-transitional, STD3 rules).

    Only the non-ASCII labels go through IDNA2008 encoding: ASCII labels are
    left to the LDH check, so legitimate host names such as ``r3--sn.x.test``
    (hyphens in positions 3 and 4) stay acceptable next to a U-label.
    """
    if len(key) > _MAX_KEY_OCTETS:
        return None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        # Folds case, applies NFC and turns the Unicode full stops into ".".
        # STD3 rules refuse whitespace, controls and the other non-LDH ASCII
        # (also when a character such as U+3000 maps to a space).
        mapped = idna.uts46_remap(text, std3_rules=True, transitional=False)
        if mapped.endswith("."):
            mapped = mapped[:-1]
        labels = [
            label if label.isascii() else idna.alabel(label).decode("ascii")
            for label in mapped.split(".")
        ]
    except (UnicodeError, ValueError):
        # idna.IDNAError is a UnicodeError; punycode failures are too.
        return None
    return ".".join(labels)


def _alabels_decode(name: str) -> bool:
    """
    Whether every ``xn--`` label of `name` is a valid IDNA2008 A-label.

    Valid means canonical too (RFC 5891 s5.4): ``xn---bkve`` decodes to the
    same U-label as ``xn--bkve``; Debian's idna 3.3 does not check that the
    encoding round-trips (newer releases do), so it is checked here.
    """
    for label in name.split("."):
        if label.startswith("xn--"):
            try:
                if idna.alabel(idna.ulabel(label)) != label.encode("ascii"):
                    return False
            except (UnicodeError, ValueError):
                return False
    return True
