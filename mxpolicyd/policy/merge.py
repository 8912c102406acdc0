"""
What a daemon takes from a fleet peer's state for a domain: a merge, never
a replace.  Pure, over plain data and a time, like the rest of the policy.

A peer's state is only JSON in Redis: a peer that lost its state, a peer
whose fetch an attacker blocked, a buggy or hostile peer, or anyone who can
write to Redis, may put anything there.  So a peer's word can make a daemon
stronger (a policy it lacks, a newer fetch of the same strength, a DANE
result, a remembered verdict) but never weaker.  Only the domain can weaken
its policy (a valid mode none or testing policy, TLSA records removed under
a valid signature: L{mxpolicyd.policy.judge.withdrawn}), and a peer can
claim that as easily as anything else; what a daemon can trust is what its
own evaluation sees.  So newer peer evidence that would weaken what a
daemon knows is not taken: it is a reason to re-check the domain itself
(L{Merged.recheck}), and its own evaluation, the downgrade memory and the
judge decide as on a single daemon.

The same rule makes the store's writes safe: what a daemon writes is its
own new state merged over what the fleet stored (L{merged} with ours =
the new evaluation), so a fetch that an attacker blocked cannot erase the
policy or the memory that the fleet holds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.evidence.sts_discovery import REFRESH_AFTER
from mxpolicyd.policy.judge import strength, withdrawn

# How strong a policy is for the merge: testing counts above none, because a
# strict profile enforces it.
_MODE = {"enforce": 2, "testing": 1, "none": 0}
# How strong a DANE result is; TEMP says nothing about the domain.
_DANE = {DaneStatus.DANE_ONLY: 3, DaneStatus.DANE: 2, DaneStatus.NONE: 0}
# The same scale for the downgrade memory's DANE verdicts.
_REMEMBERED_DANE = {"dane-only": 3, "dane": 2}
# How long a DANE result outlives failed re-checks (the DANE evaluator's
# grace): a peer's lately found DANE stands over our TEMP.
DANE_GRACE = 86400.0


class Merged(NamedTuple):
    """
    The outcome of L{merged}: the state to hold (None when the peer's adds
    nothing to ours), and whether the peer has newer evidence that was not
    taken because it would weaken ours: the daemon should look itself.
    """

    state: DomainState | None
    recheck: bool


def _at_most(value: float, limit: float) -> float:
    """C{value}, no later than C{limit} (NaN counts as later)."""
    return value if value <= limit else limit


def capped(state: DomainState, now: float, horizon: float) -> DomainState:
    """
    A peer's state with its times believable: nothing checked, fetched or
    seen after C{now}; a policy expiring no later than its max_age after
    its fetch; no check and no fetch back-off scheduled beyond
    C{now + horizon}, the longest this daemon itself waits between checks.
    The same object when nothing needed capping (the usual case).
    """
    latest = now + horizon
    sts = state.sts
    fetched = _at_most(sts.fetched_at, now)
    life = fetched + sts.policy.max_age if sts.policy is not None else now
    if (sts.fetched_at <= now and sts.expires_at <= life and sts.checked_at <= now
            and sts.due_at <= latest and sts.retry_at <= latest):
        new_sts = sts
    else:
        new_sts = StsState(
            policy=sts.policy,
            policy_id=sts.policy_id,
            fetched_at=fetched,
            expires_at=_at_most(sts.expires_at, life),
            record=sts.record,
            checked_at=_at_most(sts.checked_at, now),
            due_at=_at_most(sts.due_at, latest),
            failure=sts.failure,
            failed_id=sts.failed_id,
            retry_at=_at_most(sts.retry_at, latest),
        )
    dane = state.dane
    if dane is not None and not (dane.checked_at <= now and dane.due_at <= latest):
        dane = replace(dane, checked_at=_at_most(dane.checked_at, now),
                       due_at=_at_most(dane.due_at, latest))
    memory = state.memory
    if memory is not None and not memory.seen_at <= now:
        memory = Remembered(memory.action, now)
    if new_sts is sts and dane is state.dane and memory is state.memory:
        return state
    return DomainState(sts=new_sts, dane=dane, memory=memory)


def merged(ours: DomainState, theirs: DomainState, now: float, horizon: float) -> Merged:
    """
    Ours, with what a peer's state C{theirs} may add to it at C{now}.

    C{ours} is trusted: this daemon's own evidence and decisions (or an
    empty state for a domain it does not hold).  C{theirs} is taken with
    its times L{capped}, part by part:

      - the MTA-STS policy: theirs when we hold no unexpired policy, or
        when theirs was fetched later and is at least as strong (mode, and
        expiry); never one that is weaker, or a non-enforce policy while we
        remember sts-enforce (a withdrawal we have not seen: recheck);
      - the MTA-STS discovery (the TXT record seen, when, when next):
        theirs when checked later; never a peer's fetch back-off;
      - DANE: theirs when checked later and at least as strong as our
        result and our remembered DANE verdict; a peer's TEMP only when we
        know nothing better (a weaker or TEMP result over ours: recheck);
        a peer's DANE found within a day over our TEMP, even if older;
      - the downgrade memory: the strongest of the two, a peer's dropped
        only when the merged evidence withdraws it.

    Whether to recheck also covers a peer that holds the lease and never
    refetches: our unexpired policy overdue for its refetch is rechecked
    here rather than left to run out.
    """
    t = capped(theirs, now, horizon)
    sts, refused_policy = _policy(ours.sts, t.sts, ours.memory, now)
    if t.sts.checked_at > ours.sts.checked_at:
        # Discovery from theirs; the fetch back-off stays ours, so that a
        # peer cannot hold back this daemon's own fetches.
        sts = replace(sts, record=t.sts.record, checked_at=t.sts.checked_at,
                      due_at=t.sts.due_at, failure=t.sts.failure)
    dane, refused_dane = _dane(ours.dane, t.dane, ours.memory, now)
    state = DomainState(sts=sts, dane=dane, memory=ours.memory)
    memory = _memory(ours.memory, t.memory, state, now)
    if memory is not ours.memory:
        state = replace(state, memory=memory)
    recheck = refused_policy or refused_dane or _refetch_overdue(sts, now, horizon)
    if state == ours:
        return Merged(None, recheck)
    return Merged(state, recheck)


def _policy(ours: StsState, theirs: StsState, memory: Remembered | None,
            now: float) -> tuple[StsState, bool]:
    """Our MTA-STS state with theirs' policy if it is to be taken; whether one was refused."""
    peer = theirs.active_policy(now)
    if peer is None:
        return ours, False  # no policy, or an expired one: never a reason to drop ours
    mine = ours.active_policy(now)
    if mine is not None and theirs.fetched_at <= ours.fetched_at:
        return ours, False  # ours is as new
    if (mine is None or _MODE[peer.mode] >= _MODE[mine.mode]
            and theirs.expires_at >= ours.expires_at):
        if not (peer.mode != "enforce" and memory is not None
                and memory.action == "sts-enforce"):
            return _with_policy(ours, theirs, peer), False
    return ours, True


def _with_policy(ours: StsState, theirs: StsState, policy: StsPolicy) -> StsState:
    return replace(ours, policy=policy, policy_id=theirs.policy_id,
                   fetched_at=theirs.fetched_at, expires_at=theirs.expires_at)


def _dane(ours: DaneState | None, theirs: DaneState | None, memory: Remembered | None,
          now: float) -> tuple[DaneState | None, bool]:
    """The DANE result to hold; whether a newer one of theirs was refused."""
    if theirs is None:
        return ours, False
    if ours is not None and theirs.checked_at <= ours.checked_at:
        if (ours.status is DaneStatus.TEMP and theirs.status.applies
                and now < theirs.checked_at + DANE_GRACE):
            # Our DNS failed where a peer's found DANE lately: kept, as the
            # DANE evaluator keeps its own result through failures.
            return theirs, False
        return ours, False
    known = -1
    if ours is not None and ours.status is not DaneStatus.TEMP:
        known = _DANE[ours.status]
    if memory is not None:
        known = max(known, _REMEMBERED_DANE.get(memory.action, -1))
    if theirs.status is DaneStatus.TEMP:
        # The peer's DNS could not tell: ours stands if it says anything.
        if known < 0:
            return theirs, False
        return ours, True
    if _DANE[theirs.status] >= known:
        return theirs, False
    return ours, True


def _memory(ours: Remembered | None, theirs: Remembered | None, state: DomainState,
            now: float) -> Remembered | None:
    """The stronger memory; a peer's is dropped when the merged evidence withdraws it."""
    if theirs is None or theirs == ours or withdrawn(theirs, state, now):
        return ours
    if ours is None:
        return theirs
    mine, peer = strength(ours.action), strength(theirs.action)
    if peer > mine or peer == mine and theirs.seen_at > ours.seen_at:
        return theirs
    return ours


def _refetch_overdue(sts: StsState, now: float, horizon: float) -> bool:
    """
    Whether the unexpired policy should have been refetched by now: the
    evaluator refetches at C{min(REFRESH_AFTER, max_age / 2)}, and a peer
    that held the lease has had C{horizon} (or a quarter of max_age) more.
    """
    policy = sts.active_policy(now)
    if policy is None:
        return False
    age = now - sts.fetched_at
    return age >= min(REFRESH_AFTER, policy.max_age / 2) + min(horizon, policy.max_age / 4)


def written(ours: DomainState, stored: DomainState, now: float, horizon: float,
            acknowledged: bool = False) -> DomainState:
    """
    What a daemon writes over what the fleet C{stored}: its own new state
    C{ours}, with what the stored one adds (L{merged}), so that a write
    never loses a stronger or newer policy, DANE result or memory.  When
    an administrator C{acknowledged} ours ("mxpolicyd cache ack"), its
    downgrade memory is written as it is: that is the point of the ack.
    """
    state = merged(ours, stored, now, horizon).state or ours
    if acknowledged and state.memory != ours.memory:
        state = replace(state, memory=ours.memory)
    return state
