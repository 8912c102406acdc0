"""
The C{[policy]} and C{[domain."..."]} tables of the configuration, read
into L{mxpolicyd.policy.admin}'s data.

A mistake is a configuration error naming the file and the key, at start-up
and on reload; a forced Postfix answer is checked against Postfix's grammar
(L{mxpolicyd.config.postfix}).
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from mxpolicyd.config.postfix import check_postfix
from mxpolicyd.config.sections import Section
from mxpolicyd.evidence.names import normalise
from mxpolicyd.evidence.sts import mx_pattern
from mxpolicyd.policy.admin import (
    DAY,
    DOWNGRADE_MODES,
    EXIM_ACTIONS,
    MX_LEVELS,
    TLS_LEVELS,
    AdminPolicy,
    AdminRule,
)


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return "must be one of %s, not %r" % (", ".join('"%s"' % c for c in choices), value)
    return check


def _expiry(value: Any) -> tuple[float, str]:
    """A TOML date ends the day after it, UTC; a date-time without offset is UTC."""
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo is not None else value.replace(
            tzinfo=datetime.timezone.utc)
        return moment.timestamp(), moment.isoformat()
    assert isinstance(value, datetime.date)
    end = datetime.datetime.combine(value + datetime.timedelta(days=1), datetime.time(),
                                    tzinfo=datetime.timezone.utc)
    return end.timestamp(), value.isoformat()


def _check_expires(value: Any) -> str | None:
    if isinstance(value, str):
        return ("must be a TOML date or date-time, not a string: write it without "
                "quotes, e.g. expires = 2026-12-31 or 2026-12-31T18:00:00Z")
    return None


def parse_admin(top: Section) -> AdminPolicy:
    """Read C{[policy]} and the C{[domain."..."]} tables of a whole document."""
    po = top.table("policy")
    policy = AdminPolicy(
        min_mx_level=po.get("min_mx_level", "none", str, _one_of(MX_LEVELS)),
        min_tls_level=po.get("min_tls_level", "none", str, _one_of(TLS_LEVELS)),
        downgrade=po.get("downgrade", "off", str, _one_of(DOWNGRADE_MODES)),
        memory=po.positive("downgrade_memory_days", 30.0) * DAY,
        expiry_warning=po.get(
            "expiry_warning_days", 7.0, (int, float),
            lambda v: None if v >= 0 else "must be 0 or more, not %r" % (v,),
        ) * DAY,
    )
    po.finish()

    domains = top.table("domain")
    rules: dict[str, AdminRule] = {}
    for name in list(domains._table):
        key = 'domain."%s"' % name
        domain = normalise(name.encode("utf-8")) if isinstance(name, str) else None
        if domain is None:
            domains.fail(key, "is not a domain name: write the domain itself, e.g. "
                         '[domain."example.com"] (subdomains = true covers the names '
                         "below it)")
        assert domain is not None
        if domain in rules:
            domains.fail(key, "names %s again (as %s)" % (domain, rules[domain].key))
        rules[domain] = _rule(domains.entry(name, key), domain, key)
    domains.finish()
    return AdminPolicy(policy.min_mx_level, policy.min_tls_level, policy.downgrade,
                       policy.memory, policy.expiry_warning, rules)


def _rule(sec: Section, domain: str, key: str) -> AdminRule:
    subdomains = sec.get("subdomains", False, bool)
    postfix = sec.get("postfix", None, str)
    if postfix is not None:
        postfix, problem = check_postfix(postfix)
        if problem:
            sec.fail(key + ".postfix", problem)
    exim = sec.get("exim", None, str, _one_of(EXIM_ACTIONS))
    raw_mx = sec.get("mx", None, list)
    exempt = sec.get("exempt", False, bool)
    expires_value = sec.get("expires", None, (datetime.date, str), _check_expires)
    min_mx = sec.get("min_mx_level", None, str, _one_of(MX_LEVELS))
    min_tls = sec.get("min_tls_level", None, str, _one_of(TLS_LEVELS))
    sec.finish()

    mx: tuple[str, ...] = ()
    if raw_mx is not None:
        if exim != "sts-enforce":
            sec.fail(key + ".mx", 'is only allowed with exim = "sts-enforce"')
        patterns = []
        for item in raw_mx:
            pattern = mx_pattern(item) if isinstance(item, str) else None
            if pattern is None:
                sec.fail(key + ".mx", "entry %r is not a host name or *.name (A-labels, "
                         "as in an MTA-STS policy)" % (item,))
            patterns.append(pattern)
        mx = tuple(dict.fromkeys(p for p in patterns if p is not None))
    if exim == "sts-enforce" and not mx:
        sec.fail(key + ".mx", 'is required with exim = "sts-enforce": the MX patterns '
                 'Exim enforces, e.g. mx = ["mx1.example.com", "*.example.net"]')
    if exempt and (postfix is not None or exim is not None):
        sec.fail(key + ".exempt", "cannot be combined with postfix or exim: an exempt "
                 "domain is answered NOTFOUND / action=none")
    if exempt and (min_mx is not None or min_tls is not None):
        sec.fail(key + ".exempt", "cannot be combined with a minimum level: an exempt "
                 "domain is never held")
    if not exempt and postfix is None and exim is None and min_mx is None and min_tls is None:
        sec.fail(key, "sets nothing: give exempt, postfix, exim, min_mx_level or "
                 "min_tls_level")
    expires, expires_text = (None, "") if expires_value is None else _expiry(expires_value)
    return AdminRule(
        domain=domain, key=key, subdomains=subdomains, postfix=postfix, exim=exim,
        mx=mx, exempt=exempt, expires=expires, expires_text=expires_text,
        min_mx_level=min_mx, min_tls_level=min_tls,
    )
