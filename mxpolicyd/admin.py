"""
The administrator's policy: the C{[policy]} table and the per-domain
C{[domain."example.com"]} tables of the configuration, validated into plain
data that the verdict code applies on top of the evidence.

L{parse_admin} is called by L{mxpolicyd.config.parse}, so a mistake is a
configuration error naming the file and the key, at start-up and on reload.
A forced Postfix answer is checked against Postfix's own policy grammar here,
because Postfix checks it only when smtp(8) delivers, and then defers the
mail.  L{AdminPolicy.rule_for} is what the cache asks, on a re-decision
only: the memoised lookup path never reaches it.  L{ExpiryWatch} logs the
entries that are about to end, and those that did.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mxpolicyd.domain import is_valid_hostname, normalise
from mxpolicyd.sts import _mx_pattern

if TYPE_CHECKING:
    from mxpolicyd.config import _Section

DAY = 86400.0

# Security levels, weakest first (issue #8, in the spirit of maddy's).
MX_LEVELS = ("none", "mta-sts", "dnssec")
TLS_LEVELS = ("none", "encrypted", "authenticated")
DOWNGRADE_MODES = ("off", "warn", "enforce")

# What an administrator may force for Exim: the actions the contrib router
# understands, without sts-testing (forcing "testing" means nothing).
EXIM_ACTIONS = ("none", "dane", "dane-only", "sts-enforce", "temp")

# Postfix's smtp_tls_policy_maps grammar, as smtp_tls_policy.c parses it
# (Postfix 3.7): the first word a level, then name=value attributes.
POSTFIX_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint",
                  "verify", "secure")
_SINGLE = ("ciphers", "protocols", "exclude", "servername", "connection_reuse")
_MULTIPLE = ("match", "tafile")
_MATCH_LEVELS = ("fingerprint", "verify", "secure")
_TAFILE_LEVELS = ("verify", "secure")
_TLSRPT = ("policy_type", "policy_domain", "policy_string", "mx_host_pattern",
           "policy_failure", "policy_ttl")
_CIPHER_GRADES = ("export", "low", "medium", "high", "null")
_PROTOCOL = re.compile(r"(?:!|>=|<=)?(?:SSLv2|SSLv3|TLSv1|TLSv1\.[123])", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s,]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e\t]")


@dataclass(frozen=True, slots=True)
class AdminRule:
    """One C{[domain."..."]} table: what the administrator decided for a domain."""

    domain: str
    # The config key, as an administrator greps for it: domain."example.com".
    key: str
    subdomains: bool = False
    # The forced Postfix policy (whitespace normalised, without "OK").
    postfix: str | None = None
    exim: str | None = None
    mx: tuple[str, ...] = ()
    exempt: bool = False
    # Seconds since the epoch from which the entry no longer applies.
    expires: float | None = None
    expires_text: str = ""
    min_mx_level: str | None = None
    min_tls_level: str | None = None

    @property
    def forces(self) -> bool:
        """Whether the entry replaces an answer (rather than only set minimums)."""
        return self.exempt or self.postfix is not None or self.exim is not None

    @property
    def forces_both(self) -> bool:
        return self.exempt or (self.postfix is not None and self.exim is not None)

    def applies(self, now: float) -> bool:
        return self.expires is None or now < self.expires

    def describe(self) -> str:
        """What the entry does, for explain and logs."""
        if self.exempt:
            what = "exempt (NOTFOUND / action=none whatever the evidence)"
        else:
            parts = []
            if self.postfix is not None:
                parts.append("Postfix answer forced to OK %s" % self.postfix)
            if self.exim is not None:
                parts.append("Exim action forced to %s" % self.exim
                             + (" (mx %s)" % ":".join(self.mx) if self.mx else ""))
            if self.min_mx_level is not None:
                parts.append("minimum MX level %s" % self.min_mx_level)
            if self.min_tls_level is not None:
                parts.append("minimum TLS level %s" % self.min_tls_level)
            what = "; ".join(parts)
        scope = " and its subdomains" if self.subdomains else ""
        until = " until %s" % self.expires_text if self.expires_text else ""
        return "%s%s: %s%s" % (self.key, scope, what, until)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"entry": self.key, "subdomains": self.subdomains}
        if self.exempt:
            data["exempt"] = True
        if self.postfix is not None:
            data["postfix"] = "OK " + self.postfix
        if self.exim is not None:
            data["exim"] = self.exim
            if self.mx:
                data["mx"] = list(self.mx)
        if self.expires_text:
            data["expires"] = self.expires_text
        return data


@dataclass(frozen=True)
class AdminPolicy:
    """The C{[policy]} table and every C{[domain."..."]} entry."""

    min_mx_level: str = "none"
    min_tls_level: str = "none"
    downgrade: str = "off"
    # Seconds: how long the strongest verdict is remembered after it was
    # last seen, and how long before its end an entry is warned about.
    memory: float = 30 * DAY
    expiry_warning: float = 7 * DAY
    rules: Mapping[str, AdminRule] = field(default_factory=dict)
    # Nothing configured: every verdict is the evidence's, and the cache
    # skips judging altogether (a million entries are loaded at start-up).
    neutral: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "neutral", not self.rules and self.downgrade == "off"
                           and self.min_mx_level == "none" and self.min_tls_level == "none")

    def rule_for(self, domain: str, now: float) -> AdminRule | None:
        """
        The entry that applies to C{domain} at C{now}: its own, else the
        nearest parent's that covers subdomains.  An entry that has ended
        is skipped, so a parent's entry takes over from it.
        """
        rules = self.rules
        if not rules:
            return None
        rule = rules.get(domain)
        if rule is not None and rule.applies(now):
            return rule
        name = domain
        while True:
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1:]
            rule = rules.get(name)
            if rule is not None and rule.subdomains and rule.applies(now):
                return rule

    def minimums(self, rule: AdminRule | None) -> tuple[str, str, str, str]:
        """The MX and TLS minimums for a domain, with the keys that set them."""
        mx, mx_key = self.min_mx_level, "policy.min_mx_level"
        tls, tls_key = self.min_tls_level, "policy.min_tls_level"
        if rule is not None and rule.min_mx_level is not None:
            mx, mx_key = rule.min_mx_level, rule.key + ".min_mx_level"
        if rule is not None and rule.min_tls_level is not None:
            tls, tls_key = rule.min_tls_level, rule.key + ".min_tls_level"
        return mx, mx_key, tls, tls_key

    def warnings(self, now: float) -> list[str]:
        """What C{check-config} points out: one-protocol overrides, ends."""
        lines = []
        for rule in sorted(self.rules.values(), key=lambda r: r.domain):
            if rule.postfix is not None and rule.exim is None:
                lines.append("%s forces only the Postfix answer; Exim lookups are "
                             "answered from the evidence (add exim = ... to force "
                             "both)" % rule.key)
            elif rule.exim is not None and rule.postfix is None:
                lines.append("%s forces only the Exim action; Postfix lookups are "
                             "answered from the evidence (add postfix = ... to force "
                             "both)" % rule.key)
            lines.extend(expiry_lines([rule], now, self.expiry_warning))
        return lines


def expiry_lines(rules: list[AdminRule], now: float, warning: float) -> list[str]:
    """One line per entry that has ended or ends within C{warning} seconds."""
    lines = []
    for rule in rules:
        if rule.expires is None:
            continue
        if rule.expires <= now:
            lines.append("%s ended on %s; it no longer applies and %s is answered "
                         "from the evidence: remove the entry"
                         % (rule.key, rule.expires_text, rule.domain))
        elif rule.expires - now <= warning:
            lines.append("%s ends on %s (in %s); after that %s is answered from "
                         "the evidence" % (rule.key, rule.expires_text,
                                           _duration(rule.expires - now), rule.domain))
    return lines


def _duration(seconds: float) -> str:
    if seconds >= 2 * DAY:
        return "%d days" % (seconds // DAY)
    if seconds >= 2 * 3600:
        return "%d hours" % (seconds // 3600)
    return "%d minutes" % max(1, seconds // 60)


# --- the Postfix policy grammar ----------------------------------------------


def check_postfix(text: str) -> tuple[str, str | None]:
    """
    Check a policy as smtp(8) would, before Postfix gets to defer mail for it.

    Returns the policy with its whitespace normalised, and the problem (None
    when there is none).  Names are case-insensitive, as in Postfix.
    """
    if _UNPRINTABLE.search(text):
        return text, "must be printable ASCII"
    words = [w for w in _SEPARATORS.split(text.strip()) if w]
    if not words:
        return text, "is empty: give a level, e.g. \"secure match=.example.com\""
    level = words[0].lower()
    if level not in POSTFIX_LEVELS:
        return text, "starts with %r, which is not a Postfix TLS level (%s)" % (
            words[0], " ".join(POSTFIX_LEVELS))
    normalised = " ".join(words)
    if level == "none" and len(words) > 1:
        return text, "gives attributes to level none, which takes none " \
                     "(Postfix ignores them)"
    seen: set[str] = set()
    for word in words[1:]:
        name, equals, value = word.partition("=")
        name = name.lower()
        if not equals or not name:
            return text, "has %r, which is not a name=value attribute" % (word,)
        if name in _TLSRPT:
            return text, ("has %s=, a TLSRPT attribute: those are generated by the "
                          "daemon (profiles with tlsrpt = true), never forced" % name)
        if name not in _SINGLE and name not in _MULTIPLE:
            return text, "has attribute %s=, which Postfix 3.7 does not know (known: %s)" % (
                name, " ".join(sorted(_SINGLE + _MULTIPLE)))
        if name in _SINGLE:
            if name in seen:
                return text, "repeats %s=, which Postfix allows once" % name
            seen.add(name)
        problem = _check_attribute(level, name, value)
        if problem:
            return text, problem
    return normalised, None


def _check_attribute(level: str, name: str, value: str) -> str | None:
    if not value:
        return "has an empty %s= value" % name
    if name == "match" and level not in _MATCH_LEVELS:
        return ("has match= at level %s; Postfix allows match= only at %s "
                "(at dane levels the TLSA records decide)" % (level, ", ".join(_MATCH_LEVELS)))
    if name == "tafile" and level not in _TAFILE_LEVELS:
        return "has tafile= at level %s; Postfix allows it only at verify and secure" % level
    if name == "ciphers" and value.lower() not in _CIPHER_GRADES:
        return "has ciphers=%s; the grade must be one of %s" % (value, " ".join(_CIPHER_GRADES))
    if name == "connection_reuse" and value.lower() not in ("yes", "no"):
        return "has connection_reuse=%s; it must be yes or no" % value
    if name == "servername" and value not in ("hostname", "nexthop") and not is_valid_hostname(
            value.rstrip(".")):
        return "has servername=%s; it must be hostname, nexthop or a DNS name" % value
    if name == "protocols":
        for item in value.split(":"):
            if item and _PROTOCOL.fullmatch(item) is None:
                return ("has protocols=%s; %r is not a protocol like TLSv1.2, "
                        "!TLSv1.1 or >=TLSv1.2" % (value, item))
    return None


# --- parsing the configuration tables ----------------------------------------


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


def parse_admin(top: _Section) -> AdminPolicy:
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


def _rule(sec: _Section, domain: str, key: str) -> AdminRule:
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
            pattern = _mx_pattern(item) if isinstance(item, str) else None
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


# --- the expiry watch --------------------------------------------------------


class ExpiryWatch(Service):
    """
    Warns about entries that end soon, at start-up, on reload, once a day
    and at the moment each one ends.  The cache re-decides on its own at
    that moment (an entry's end is part of the verdict's change time); this
    only tells the administrator, who may have forgotten the date.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, policy: AdminPolicy) -> None:
        self._clock = clock
        self._policy = policy
        self._timer: IDelayedCall | None = None

    def set_policy(self, policy: AdminPolicy) -> None:
        """A reload: look again at once."""
        self._policy = policy
        if self.running:
            self.check()

    def startService(self) -> None:
        super().startService()
        self.check()

    def stopService(self) -> None:
        super().stopService()
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def check(self) -> None:
        """Log what ends soon or has ended, and look again tomorrow or at the next end."""
        self._cancel()
        now = self._clock.seconds()
        policy = self._policy
        rules = [r for r in policy.rules.values() if r.expires is not None]
        for rule in sorted(rules, key=lambda r: (r.expires or 0.0, r.domain)):
            assert rule.expires is not None
            if rule.expires <= now:
                self._log.warn(
                    "Administrator entry {key} ended on {date}: {domain} is answered "
                    "from the evidence again; remove the entry from the configuration",
                    key=rule.key, date=rule.expires_text, domain=rule.domain)
            elif rule.expires - now <= policy.expiry_warning:
                self._log.warn(
                    "Administrator entry {key} ends on {date} (in {left}); after that "
                    "{domain} is answered from the evidence",
                    key=rule.key, date=rule.expires_text, left=_duration(rule.expires - now),
                    domain=rule.domain)
        upcoming = [r.expires for r in rules if r.expires is not None and r.expires > now]
        if not upcoming:
            return
        when = min([now + DAY] + upcoming)
        if math.isfinite(when):
            self._timer = self._clock.callLater(max(0.0, when - now), self.check)
