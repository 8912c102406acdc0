"""
The administrator's judgement over the evidence: from the verdict that
L{mxpolicyd.policy.verdict.decide} drew from a domain's evidence to the verdict the
MTA is told, by the C{[policy]} and C{[domain."..."]} settings.

In order: an administrator's entry that forces an answer, the downgrade
guard (a domain weaker than its remembered strongest verdict), and the
minimum security levels.  All of it is pure, over plain data and a time, so
table tests cover every combination; the cache calls L{judge} when it
(re-)decides an entry and L{remember} when it applies an evaluation, never
on the memoised lookup path.  What the cache logs about these decisions is
worded here too, next to them (L{noted}, L{verdict_change}, ...): the cache
only emits the L{Report}s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

from mxpolicyd.evidence.dane import DaneStatus, HostState
from mxpolicyd.evidence.state import FOREVER, DomainState, Remembered
from mxpolicyd.ops.times import utc
from mxpolicyd.policy.admin import MX_LEVELS, TLS_LEVELS, AdminPolicy
from mxpolicyd.policy.verdict import Action, Note, Verdict, decide


class Levels(NamedTuple):
    """
    The security the evidence gives (issue #8).  Derived from the evidence
    when needed (the minimum check, explain, cache show) rather than kept
    in every cached verdict: a million cached domains need not pay for it.
    """

    mx: str
    tls: str


# For downgrade protection (the guard, the memory, the "weakened" log
# line): testing counts as no policy, and TEMP is about the DNS, not the
# domain, so it is never compared.
STRENGTH = {
    Action.DANE_ONLY: 3,
    Action.DANE: 2,
    Action.STS_ENFORCE: 1,
}
_BY_VALUE = {a.value: a for a in Action}

# Outcomes of L{remember}, for the cache's logs and metrics.
WEAKER = "weaker"
WITHDRAWN = "withdrawn"

# Note kinds.
OVERRIDE = "override"
MINIMUM = "minimum"
WARNED = "warned"
HELD = "held"

# Nine combinations, built once and shared.
_LEVELS = {(mx, tls): Levels(mx, tls) for mx in MX_LEVELS for tls in TLS_LEVELS}
_MX_RANK = {name: i for i, name in enumerate(MX_LEVELS)}
_TLS_RANK = {name: i for i, name in enumerate(TLS_LEVELS)}


def strength(action: Action | str) -> int:
    if isinstance(action, str):
        action = _BY_VALUE[action]
    return STRENGTH.get(action, 0)


def weaker(before: Action | str, after: Action | str) -> bool:
    """
    Whether a verdict changing from C{before} to C{after} (remembered, or
    answered) is a downgrade of the domain's policy, by L{STRENGTH}: what
    the guard, the memory and the cache's "weakened" log line all ask.
    TEMP is neither weaker nor stronger than anything.
    """
    if isinstance(before, str):
        before = _BY_VALUE[before]
    if isinstance(after, str):
        after = _BY_VALUE[after]
    if before is Action.TEMP or after is Action.TEMP:
        return False
    return strength(after) < strength(before)


def levels(verdict: Verdict, state: DomainState | None) -> Levels | None:
    """
    The MX and TLS levels the evidence reaches; None for a TEMP verdict.

    MX: C{dnssec} when DANE found the MX set DNSSEC-signed, else
    C{mta-sts} when an enforced policy authenticates it, else C{none}.
    TLS: C{authenticated} for dane-only and sts-enforce; C{encrypted} for
    dane when every reachable MX host has secure TLSA records (usable or
    not, Postfix then requires TLS of each), else C{none}: a host without
    them gets only opportunistic TLS.
    """
    action = verdict.action
    if action is Action.TEMP:
        return None
    dane = state.dane if state is not None else None
    if dane is not None and dane.status is not DaneStatus.TEMP and dane.mx_secure:
        mx = "dnssec"
    elif action in (Action.DANE, Action.DANE_ONLY):
        # A DANE verdict (perhaps a pending one, without its state) needs a
        # signed MX set.
        mx = "dnssec"
    elif action is Action.STS_ENFORCE:
        mx = "mta-sts"
    else:
        mx = "none"
    if action in (Action.DANE_ONLY, Action.STS_ENFORCE):
        tls = "authenticated"
    elif action is Action.DANE and dane is not None:
        hosts = [h for h in dane.hosts if h.state is not HostState.NO_ADDRESS]
        tls = "encrypted" if hosts and all(
            h.state in (HostState.USABLE, HostState.UNUSABLE) for h in hosts) else "none"
    else:
        tls = "none"
    return _LEVELS[mx, tls]


def withdrawn(memory: Remembered, state: DomainState, now: float) -> bool:
    """
    Whether the evidence is the domain owner's authenticated statement that
    the remembered policy is gone, which an attacker on the path cannot
    forge (he can only block, and blocking gives expiry or a failure):
    for MTA-STS, a valid policy in mode none or testing; for DANE, TLSA
    records removed under a valid signature (the MX set still signed).
    """
    if memory.action in ("dane", "dane-only"):
        dane = state.dane
        return dane is not None and dane.status is DaneStatus.NONE and dane.mx_secure is True
    policy = state.sts.active_policy(now)
    return policy is not None and policy.mode != "enforce"


def remember(
    memory: Remembered | None,
    evidence: Verdict,
    state: DomainState,
    admin: AdminPolicy,
    now: float,
) -> tuple[Remembered | None, str]:
    """
    The downgrade memory after an evaluation whose evidence verdict is
    C{evidence}, and whether it was a downgrade (L{WEAKER}), a legitimate
    withdrawal (L{WITHDRAWN}) or neither ("").

    A stronger or equal verdict is remembered as seen now; a weaker one
    leaves the memory as it was, until it ages out; TEMP changes nothing.
    """
    if admin.downgrade == "off":
        return None, ""
    if evidence.action is Action.TEMP:
        return memory, ""
    new = strength(evidence.action)
    fresh = Remembered(evidence.action.value, now) if new > 0 else None
    if memory is None or now >= memory.seen_at + admin.memory:
        return fresh, ""
    if not weaker(memory.action, evidence.action):
        return fresh, ""
    if withdrawn(memory, state, now):
        return fresh, WITHDRAWN
    return memory, WEAKER


def judge(
    evidence: Verdict, state: DomainState | None, admin: AdminPolicy, now: float
) -> tuple[Verdict, float]:
    """
    The verdict the MTA is told, and until when it holds with no new
    evidence (an entry's end, the memory ageing out).

    An entry forcing both protocols (or an exemption) decides alone: the
    administrator's explicit choice is not second-guessed by minimums.  An
    entry forcing one protocol rides on the verdict, whose action is what
    the other protocol gets from the evidence, guard and minimums applied.
    """
    if admin.neutral:
        return evidence, FOREVER
    domain = evidence.domain
    rule = admin.rule_for(domain, now)
    until = FOREVER
    if rule is not None and rule.expires is not None:
        until = rule.expires
    verdict = evidence
    if rule is not None and rule.forces_both:
        text = rule.describe()
        action = Action.NONE if rule.exempt else Action(rule.exim)
        return Verdict(
            domain, action, "administrator entry " + text, None,
            "held by the administrator (%s.exim)" % rule.key if action is Action.TEMP
            else "", rule, Note(OVERRIDE, text)), until
    if rule is not None and rule.forces:
        verdict = replace(verdict, override=rule, note=Note(OVERRIDE, rule.describe()))

    memory = state.memory if state is not None else None
    if (admin.downgrade != "off" and memory is not None
            and now < memory.seen_at + admin.memory
            and weaker(memory.action, evidence.action)
            and state is not None and not withdrawn(memory, state, now)):
        ages_out = memory.seen_at + admin.memory
        until = min(until, ages_out)
        change = "policy downgrade from %s to %s" % (memory.action, evidence.action.value)
        if admin.downgrade == "enforce":
            reason = '%s held: acknowledge with "mxpolicyd cache ack %s"' % (change, domain)
            return replace(
                verdict, action=Action.TEMP, policy=None, reason=reason,
                rule="%s (last seen %s) held by policy.downgrade = enforce until "
                "acknowledged or until %s; the evidence: %s"
                % (memory.action, utc(memory.seen_at), utc(ages_out), evidence.rule),
                note=Note(HELD, reason)), until
        verdict = replace(verdict, note=Note(
            WARNED, "%s (%s last seen %s); answered anyway (policy.downgrade = warn)"
            % (change, memory.action, utc(memory.seen_at))))

    mx_min, mx_key, tls_min, tls_key = admin.minimums(rule)
    if evidence.action is Action.TEMP or (mx_min == "none" and tls_min == "none"):
        return verdict, until
    found = levels(evidence, state)
    assert found is not None
    for kind, minimum, key, level, rank in (
        ("MX", mx_min, mx_key, found.mx, _MX_RANK),
        ("TLS", tls_min, tls_key, found.tls, _TLS_RANK),
    ):
        if rank[level] < rank[minimum]:
            reason = "minimum %s level %s not reached (evidence: %s)" % (kind, minimum, level)
            return replace(
                verdict, action=Action.TEMP, policy=None, reason=reason,
                rule="%s = %s not reached: %s level %s; the evidence: %s"
                % (key, minimum, kind, level, evidence.rule),
                note=Note(MINIMUM, reason)), until
    return verdict, until


def administration(
    evidence: Verdict, state: DomainState | None, verdict: Verdict, admin: AdminPolicy,
    now: float,
) -> dict[str, Any]:
    """
    What explain and cache show say about the administrator's policy for
    one domain: the evidence's levels, the entry that applies, the
    minimums and who set them, and the downgrade memory.
    """
    found = levels(evidence, state)
    rule = admin.rule_for(evidence.domain, now)
    mx_min, mx_key, tls_min, tls_key = admin.minimums(rule)
    data: dict[str, Any] = {
        "evidence": evidence.action.value,
        "mx_level": found.mx if found is not None else None,
        "tls_level": found.tls if found is not None else None,
        "override": rule.to_json() if rule is not None and rule.forces else None,
        "minimum": {"mx": mx_min, "mx_key": mx_key, "tls": tls_min, "tls_key": tls_key},
        "downgrade": admin.downgrade,
        "remembered": None,
        "held": verdict.note is not None and verdict.note.kind == HELD,
        "note": verdict.note.text if verdict.note is not None else None,
        "note_kind": verdict.note.kind if verdict.note is not None else None,
    }
    if rule is not None and not rule.forces:
        data["entry"] = rule.to_json()
    memory = state.memory if state is not None else None
    if memory is not None:
        data["remembered"] = {
            "action": memory.action,
            "seen_at": memory.seen_at,
            "until": memory.seen_at + admin.memory,
        }
    return data


class Report(NamedTuple):
    """
    A log line about one of these decisions, for the cache to emit: a
    format string with named fields, as twisted.logger takes them.  Worded
    here so that what a line says sits next to the rule it reports.
    """

    warning: bool
    format: str
    fields: dict[str, Any]


def noted(
    before: Verdict | None, after: Verdict, state: DomainState, admin: AdminPolicy,
    now: float,
) -> tuple[str | None, list[Report]]:
    """
    What a re-decision from C{before} to C{after} changed in the notes of
    the administrator's policy, once per change: the note kind newly
    reached, for the cache to count (L{MINIMUM}, L{WARNED} or L{HELD}:
    answers forced by an L{OVERRIDE} are counted per answer, by the
    responders), and the lines to log.
    """
    note = after.note
    was = before.note if before is not None else None
    if note == was:
        return None, []
    domain = after.domain
    counted = None
    reports = []
    if note is not None and note.kind == MINIMUM:
        counted = MINIMUM
        reports.append(Report(True, "{domain} answered TEMP: {rule}",
                              {"domain": domain, "rule": after.rule}))
    elif note is not None and note.kind in (WARNED, HELD):
        counted = note.kind
        memory = state.memory
        if memory is not None:
            evidence = decide(domain, state, now)
            reports.append(Report(
                True,
                "Policy of {domain} weakened from {before} to {after} ({rule}); {what}",
                {
                    "domain": domain,
                    "before": memory.action,
                    "after": evidence.action.value,
                    "rule": evidence.rule,
                    "what": "policy.downgrade = warn: mail goes out with the weaker policy"
                    if note.kind == WARNED else
                    'policy.downgrade = enforce: answering TEMP until an administrator '
                    'runs "mxpolicyd cache ack {}" or the remembered {} ages out on {}'
                    .format(domain, memory.action, utc(memory.seen_at + admin.memory)),
                }))
    if was is not None and was.kind == HELD and (note is None or note.kind != HELD):
        reports.append(Report(
            False, "Downgrade hold for {domain} ended; answering {action} ({rule})",
            {"domain": domain, "action": after.action.value, "rule": after.rule}))
    return counted, reports


def verdict_change(before: Verdict, after: Verdict) -> Report:
    """
    The line for an evaluation that changed a domain's answer: a warning
    when it is L{weaker}.
    """
    down = weaker(before.action, after.action)
    return Report(
        down,
        "Verdict for {domain} {change} from {before} to {after}: {rule} "
        "(was: {before_rule})",
        {
            "domain": after.domain,
            "change": "weakened" if down else "changed",
            "before": before.action.value,
            "after": after.action.value,
            "rule": after.rule,
            "before_rule": before.rule,
        })


def withdrawal(prior: Remembered, evidence: Verdict, memory: Remembered | None) -> Report:
    """The line for a policy the domain itself withdrew (L{remember} said L{WITHDRAWN})."""
    return Report(
        False,
        "The {before} policy of {domain} was withdrawn by the domain ({rule}); "
        "accepted as a legitimate change, remembering {after} from now",
        {
            "before": prior.action,
            "domain": evidence.domain,
            "rule": evidence.rule,
            "after": memory.action if memory is not None else "nothing",
        })


def acknowledgement(domain: str, memory: Remembered | None,
                    previous: Remembered | None) -> Report:
    """The line for "mxpolicyd cache ack": the memory the administrator accepted."""
    return Report(
        False,
        "Administrator acknowledged the policy of {domain}: remembering {now} "
        "(was {before})",
        {
            "domain": domain,
            "now": memory.action if memory is not None else "nothing",
            "before": previous.action if previous is not None else "nothing",
        })
