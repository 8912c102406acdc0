"""
The administrator's policy as plain data: the C{[policy]} table (minimum
levels, downgrade protection) and the per-domain C{[domain."example.com"]}
entries, as L{mxpolicyd.config.admin} validated them.

L{AdminPolicy.rule_for} is what the judge asks, on a re-decision only: the
memoised lookup path never reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

DAY = 86400.0

# Security levels, weakest first (issue #8, in the spirit of maddy's).
MX_LEVELS = ("none", "mta-sts", "dnssec")
TLS_LEVELS = ("none", "encrypted", "authenticated")
DOWNGRADE_MODES = ("off", "warn", "enforce")

# What an administrator may force for Exim: the actions the contrib router
# understands, without sts-testing (forcing "testing" means nothing).
EXIM_ACTIONS = ("none", "dane", "dane-only", "sts-enforce", "temp")


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
