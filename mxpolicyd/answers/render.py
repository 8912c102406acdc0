"""
The renderers: one verdict written for each wire protocol and profile.

Postfix gets a socketmap reply (C{OK secure match=... servername=hostname},
C{OK dane-only}, C{TEMP reason}, C{NOTFOUND}), with Postfix 3.10's TLSRPT
attributes when the profile asks; Exim gets one line of C{key=value} pairs.
An administrator's forced answer is written here too.  Pure, so table tests
cover every reply.
"""

from __future__ import annotations

from collections.abc import Sequence

from mxpolicyd.answers.profiles import Profile
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.admin import AdminRule
from mxpolicyd.policy.verdict import Action, Verdict

NOTFOUND = b"NOTFOUND "


def postfix_reply(verdict: Verdict, profile: Profile) -> bytes:
    """The socketmap reply payload (without netstring framing)."""
    override = verdict.override
    if override is not None:
        if override.exempt:
            return NOTFOUND
        if override.postfix is not None:
            return _ascii("OK " + override.postfix)
    action = verdict.action
    if action is Action.TEMP:
        return b"TEMP " + _ascii(verdict.reason or "policy unknown")
    if action is Action.DANE_ONLY:
        return b"OK dane-only"
    if action is Action.DANE:
        return b"OK dane"
    policy = verdict.policy
    if policy is None or not policy.mx:
        return NOTFOUND
    if action is Action.STS_TESTING and not profile.strict_testing:
        return NOTFOUND
    if action not in (Action.STS_ENFORCE, Action.STS_TESTING):
        return NOTFOUND
    words = ["OK", "secure", "match=" + postfix_match(policy.mx)]
    if profile.servername:
        words.append("servername=hostname")
    if profile.tlsrpt:
        words.extend(_tlsrpt(verdict.domain, policy))
    return _ascii(" ".join(words))


def exim_reply(verdict: Verdict) -> bytes:
    """
    One line of C{key=value} pairs for Exim's C{${extract{key}{...}}}.

    C{action} is always first.  The MX patterns are an Exim list (colon
    separated, the policy's C{*.} wildcards kept: the contrib
    configuration checks them with one-label semantics itself).  A value
    that may hold spaces is quoted; it never holds a quote or backslash.
    """
    override = verdict.override
    if override is not None and (override.exempt or override.exim is not None):
        return _forced_exim(override)
    action = verdict.action
    words = ["action=" + action.value]
    policy = verdict.policy
    if action in (Action.STS_ENFORCE, Action.STS_TESTING) and policy is not None:
        words.append('mx="%s"' % ":".join(policy.mx))
        words.append("max_age=%d" % policy.max_age)
    if action is Action.TEMP:
        words.append('reason="%s"' % _quotable(verdict.reason or "policy unknown"))
    words.append('rule="%s"' % _quotable(verdict.rule))
    return _ascii(" ".join(words)) + b"\n"


def forced_by(verdict: Verdict, protocol: str) -> str | None:
    """
    The kind of administrator's entry that decides this answer for
    C{protocol} (C{"postfix"} or C{"exim"}), for the overrides metric:
    C{"exempt"}, the protocol's name, or None when the evidence decides.
    """
    override = verdict.override
    if override is None:
        return None
    if override.exempt:
        return "exempt"
    forced = override.postfix if protocol == "postfix" else override.exim
    return None if forced is None else protocol


def exim_action(verdict: Verdict) -> str:
    """The action Exim is told, a forced one included (for metrics)."""
    override = verdict.override
    if override is not None:
        if override.exempt:
            return Action.NONE.value
        if override.exim is not None:
            return override.exim
    return verdict.action.value


def _forced_exim(override: AdminRule) -> bytes:
    action = "none" if override.exempt else override.exim
    words = ["action=%s" % action]
    if override.mx:
        words.append('mx="%s"' % ":".join(override.mx))
    source = override.key + (".exempt" if override.exempt else ".exim")
    if action == "temp":
        words.append('reason="%s"' % _quotable("held by the administrator (%s)" % source))
    words.append('rule="%s"' % _quotable("forced by the administrator (%s)" % source))
    return _ascii(" ".join(words)) + b"\n"


def _quotable(text: str) -> str:
    return text.replace("\\", "/").replace('"', "'")


def _tlsrpt(domain: str, policy: StsPolicy) -> list[str]:
    # Postfix >= 3.10 reports with these; policy_string values hold spaces,
    # hence the { name = value } form.  The canonical lines are built from
    # validated fields, so they cannot hold a brace.
    words = ["policy_type=sts", "policy_domain=" + domain]
    words.extend("mx_host_pattern=" + mx for mx in policy.mx)
    words.extend("{ policy_string = %s }" % line for line in policy.canonical_lines())
    return words


def _ascii(text: str) -> bytes:
    return text.encode("ascii", "replace").replace(b"\n", b" ")


def postfix_match(mx: Sequence[str]) -> str:
    """
    The ``match=`` value for Postfix's ``secure`` level.

    Postfix checks certificate names, where ``.x`` means any depth below x,
    so ``*.x`` written ``.x`` is looser than RFC 8461 (SPEC s2); Postfix >=
    3.10.5 closes the gap itself from the ``mx_host_pattern`` attributes.
    Empty for an empty list: the caller must not send ``match=`` then.
    """
    converted = ("." + p[2:] if p.startswith("*.") else p for p in mx)
    return ":".join(dict.fromkeys(converted))
