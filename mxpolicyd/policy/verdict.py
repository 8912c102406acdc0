"""
The verdict: from a domain's evidence to what it requires.

L{decide} applies DESIGN.md's answer table to the evidence, and
L{first_answer} says what may be answered while a domain's first evaluation
still runs.  Pure, so the whole answer table is covered by table tests with
no reactor.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.admin import AdminRule


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
    # Set by mxpolicyd.policy.judge: the administrator's entry whose forced
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
        if dane.status is DaneStatus.TEMP:
            return Verdict(domain, Action.TEMP, "DANE state unknown: " + dane.reason,
                           reason="DANE " + dane.reason)
        if dane.status is DaneStatus.DANE_ONLY:
            return Verdict(domain, Action.DANE_ONLY, dane.reason)
        if dane.status is DaneStatus.DANE:
            return Verdict(domain, Action.DANE, dane.reason)
    sts = state.sts
    policy = sts.active_policy(now)
    if policy is None:
        if sts.policy is not None:
            rule = "the cached MTA-STS policy expired and no new one was fetched"
        elif sts.record is not None:
            rule = "MTA-STS record found but no valid policy was fetched"
        elif state.remembered_only:
            rule = ("no evidence kept, only the downgrade memory (not looked up "
                    "lately); the next lookup evaluates afresh")
        else:
            rule = "no MTA-STS record and no cached policy"
        return Verdict(domain, Action.NONE, rule)
    if policy.mode == "enforce":
        return Verdict(domain, Action.STS_ENFORCE, "MTA-STS policy in enforce mode", policy)
    if policy.mode == "testing":
        return Verdict(domain, Action.STS_TESTING, "MTA-STS policy in testing mode", policy)
    return Verdict(domain, Action.NONE, "MTA-STS policy in mode none", policy)


def first_answer(domain: str, dane: DaneState | None, dane_enabled: bool) -> Verdict:
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
    if dane is not None and dane.status is not DaneStatus.NONE:
        return decide(domain, DomainState(dane=dane), 0.0)
    return Verdict(domain, Action.NONE, rule)
