"""
The verdict: from a domain's state to what the MTA is told.

L{decide} applies DESIGN.md's answer table to the evidence; the renderers
write one verdict for each wire protocol and profile.  Both are pure, so the
whole answer table is covered by table tests with no reactor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mxpolicyd.admin import AdminRule
from mxpolicyd.config import Profile
from mxpolicyd.dane import DANE as DANE_SOME
from mxpolicyd.dane import DANE_ONLY
from mxpolicyd.dane import NONE as DANE_NONE
from mxpolicyd.dane import TEMP as DANE_TEMP
from mxpolicyd.dane import DaneState
from mxpolicyd.state import DomainState
from mxpolicyd.sts import StsPolicy, postfix_match


class Action(enum.Enum):
    NONE = "none"
    DANE = "dane"
    DANE_ONLY = "dane-only"
    STS_ENFORCE = "sts-enforce"
    STS_TESTING = "sts-testing"
    TEMP = "temp"


@dataclass(frozen=True, slots=True)
class Note:
    """
    What the administrator's policy did to the evidence verdict, for
    explain and for the cache's logs: C{kind} is one of C{override},
    C{minimum}, C{warned}, C{held}.
    """

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a domain requires, and the rule that said so (for explain)."""

    domain: str
    action: Action
    rule: str
    policy: StsPolicy | None = None
    reason: str = ""
    # Set by mxpolicyd.judge: the administrator's entry whose forced
    # answer the renderers write for its protocols, and what the
    # administrator's policy changed (None: the evidence verdict as is).
    override: AdminRule | None = None
    note: Note | None = None


def decide(domain: str, state: DomainState, now: float) -> Verdict:
    """
    Apply the answer table to the evidence known at C{now}.

    DANE comes first: RFC 8461 s2 says MTA-STS must not override a failing
    DANE validation, and when the DNS cannot say whether DANE applies, the
    mail waits rather than falling through to MTA-STS.
    """
    dane = state.dane
    if dane is not None:
        if dane.status == DANE_TEMP:
            return Verdict(domain, Action.TEMP, "DANE state unknown: " + dane.reason,
                           reason="DANE " + dane.reason)
        if dane.status == DANE_ONLY:
            return Verdict(domain, Action.DANE_ONLY, dane.reason)
        if dane.status == DANE_SOME:
            return Verdict(domain, Action.DANE, dane.reason)
    sts = state.sts
    policy = sts.active_policy(now)
    if policy is None:
        if sts.policy is not None:
            rule = "the cached MTA-STS policy expired and no new one was fetched"
        elif sts.record is not None:
            rule = "MTA-STS record found but no valid policy was fetched"
        else:
            rule = "no MTA-STS record and no cached policy"
        return Verdict(domain, Action.NONE, rule)
    if policy.mode == "enforce":
        return Verdict(domain, Action.STS_ENFORCE, "MTA-STS policy in enforce mode", policy)
    if policy.mode == "testing":
        return Verdict(domain, Action.STS_TESTING, "MTA-STS policy in testing mode", policy)
    return Verdict(domain, Action.NONE, "MTA-STS policy in mode none", policy)


def pending(domain: str, dane: DaneState | None, dane_enabled: bool) -> Verdict:
    """
    The answer while a domain's first evaluation is still running.

    An unknown DANE state makes the mail wait.  Once DANE is known not to
    apply, only MTA-STS is pending, and RFC 8461 s5 lets the first fetch run
    asynchronously, so mail may go out as if there were no policy.  A DANE
    verdict found first is final: MTA-STS could not change it.
    """
    rule = "first evaluation still running at the lookup deadline"
    if dane_enabled and dane is None:
        return Verdict(domain, Action.TEMP, rule + " (DANE state unknown)",
                       reason="DANE lookups still in progress")
    if dane is not None and dane.status != DANE_NONE:
        return decide(domain, DomainState(dane=dane), 0.0)
    return Verdict(domain, Action.NONE, rule)


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
