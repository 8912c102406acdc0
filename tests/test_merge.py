"""
Tests for L{mxpolicyd.policy.merge}: what a daemon takes from a fleet
peer's state (issue #14, item 7), as tables.
"""

from __future__ import annotations

import math
from dataclasses import replace

from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.evidence.dane import DaneState, DaneStatus
from mxpolicyd.evidence.state import DomainState, Remembered, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.policy.merge import Merged, capped, merged, written
from mxpolicyd.policy.verdict import Action, decide

NOW = 10_000_000.0
DAY = 86400.0
HORIZON = 3600.0
YEARS_30 = 30 * 365 * DAY


def policy(mode: str, fetched: float, max_age: float = DAY, pid: str = "1") -> StsState:
    """An MTA-STS state whose policy was fetched (and its record checked) at C{fetched}."""
    return StsState(policy=StsPolicy(mode, int(max_age), ("mx.example.test",)), policy_id=pid,
                    fetched_at=fetched, expires_at=fetched + max_age,
                    record="v=STSv1; id=%s" % pid, checked_at=fetched, due_at=fetched + 600)


def checked(at: float, record: str | None = None) -> StsState:
    """An MTA-STS state with no policy, its record checked at C{at}."""
    return StsState(record=record, checked_at=at, due_at=at + 600)


def dane(status: DaneStatus, at: float, mx_secure: bool | None = True) -> DaneState:
    return DaneState(status, "test", mx_secure, checked_at=at, due_at=at + 600)


def state(sts: StsState | None = None, dane_state: DaneState | None = None,
          memory: tuple[str, float] | None = None) -> DomainState:
    return DomainState(sts=sts or StsState(), dane=dane_state,
                       memory=Remembered(*memory) if memory is not None else None)


OLD = NOW - 1000
NEW = NOW - 10
ENFORCE_OLD = state(policy("enforce", OLD))
DANE_ONLY = state(policy("enforce", OLD), dane(DaneStatus.DANE_ONLY, OLD),
                  ("dane-only", OLD))

# name: (ours, theirs, the action after, the memory after, recheck).  The
# action and memory of what this daemon holds once it merged theirs.
MERGES: dict[str, tuple[DomainState, DomainState, Action, str | None, bool]] = {
    # What a peer lacks or lets run out never drops what we hold.
    "peer has nothing": (ENFORCE_OLD, DomainState(), Action.STS_ENFORCE, None, False),
    "peer lost its policy, checked later": (
        ENFORCE_OLD, state(checked(NEW)), Action.STS_ENFORCE, None, False),
    "peer's policy expired": (
        state(memory=("sts-enforce", OLD)), state(policy("enforce", NOW - 2 * DAY)),
        Action.NONE, "sts-enforce", False),
    # Issue #14: expired policy, dane none, no memory, checked 30 years ahead.
    "the issue's peer": (
        DANE_ONLY,
        state(replace(policy("enforce", NOW - 2 * DAY), checked_at=NOW + YEARS_30,
                      due_at=NOW + YEARS_30),
              replace(dane(DaneStatus.NONE, NOW + YEARS_30, mx_secure=False),
                      due_at=NOW + YEARS_30)),
        Action.DANE_ONLY, "dane-only", True),
    # MTA-STS: a newer fetch at least as strong is taken...
    "newer fetch of the same policy": (
        ENFORCE_OLD, state(policy("enforce", NEW)), Action.STS_ENFORCE, None, False),
    "we hold no policy, the peer enforce": (
        state(checked(OLD)), state(policy("enforce", NEW)), Action.STS_ENFORCE, None, False),
    "we hold no policy and no memory, the peer mode none": (
        state(checked(OLD)), state(policy("none", NEW)), Action.NONE, None, False),
    "we hold testing, the peer enforce": (
        state(policy("testing", OLD)), state(policy("enforce", NEW)),
        Action.STS_ENFORCE, None, False),
    # ... a weaker one is not: only our own evaluation may see a withdrawal.
    "peer claims enforce -> testing": (
        ENFORCE_OLD, state(policy("testing", NEW)), Action.STS_ENFORCE, None, True),
    "peer claims enforce -> none": (
        ENFORCE_OLD, state(policy("none", NEW)), Action.STS_ENFORCE, None, True),
    "peer's enforce policy expires sooner": (
        ENFORCE_OLD, state(policy("enforce", NEW, max_age=3600)),
        Action.STS_ENFORCE, None, True),
    "we remember sts-enforce, the peer mode none": (
        state(checked(NEW - 5), memory=("sts-enforce", OLD)), state(policy("none", NEW)),
        Action.NONE, "sts-enforce", True),
    "older weaker policy": (
        state(policy("enforce", NEW)), state(policy("none", OLD)),
        Action.STS_ENFORCE, None, False),
    # DANE: a newer result at least as strong is taken...
    "peer found dane-only": (
        state(dane_state=dane(DaneStatus.NONE, OLD)), state(dane_state=dane(
            DaneStatus.DANE_ONLY, NEW)), Action.DANE_ONLY, None, False),
    "peer's DNS failed, we know nothing": (
        DomainState(), state(dane_state=dane(DaneStatus.TEMP, NEW, None)),
        Action.TEMP, None, False),
    # ... a weaker one, or TEMP over a result, is not.
    "peer claims dane-only -> dane": (
        DANE_ONLY, state(dane_state=dane(DaneStatus.DANE, NEW)),
        Action.DANE_ONLY, "dane-only", True),
    "peer claims a signed TLSA removal": (
        DANE_ONLY, state(dane_state=dane(DaneStatus.NONE, NEW)),
        Action.DANE_ONLY, "dane-only", True),
    "peer's DNS failed, we know dane-only": (
        DANE_ONLY, state(dane_state=dane(DaneStatus.TEMP, NEW, None)),
        Action.DANE_ONLY, "dane-only", True),
    "we remember dane, hold no result; the peer says none": (
        state(memory=("dane", OLD)), state(dane_state=dane(DaneStatus.NONE, NEW)),
        Action.NONE, "dane", True),
    "older weaker DANE": (
        state(dane_state=dane(DaneStatus.DANE, NEW)), state(dane_state=dane(DaneStatus.NONE, OLD)),
        Action.DANE, None, False),
    # Our DNS failed where a peer's found DANE lately: kept, as the DANE
    # evaluator keeps its own result (so a write whose DNS was blocked keeps it).
    "our DNS failed, the peer's dane-only is older": (
        state(dane_state=dane(DaneStatus.TEMP, NEW, None)),
        state(dane_state=dane(DaneStatus.DANE_ONLY, OLD)), Action.DANE_ONLY, None, False),
    "our DNS failed, the peer's dane-only is two days old": (
        state(dane_state=dane(DaneStatus.TEMP, NEW, None)),
        state(dane_state=dane(DaneStatus.DANE_ONLY, NOW - 2 * DAY)), Action.TEMP, None, False),
    "our DNS failed, the peer found none": (
        state(dane_state=dane(DaneStatus.TEMP, NEW, None)),
        state(dane_state=dane(DaneStatus.NONE, OLD)), Action.TEMP, None, False),
    # The memory: the stronger one; a peer's only dropped by evidence.
    "peer remembers more": (
        ENFORCE_OLD, state(memory=("dane-only", OLD)), Action.STS_ENFORCE, "dane-only", False),
    "peer remembers less, later": (
        state(memory=("dane-only", OLD)), state(memory=("sts-enforce", NEW)),
        Action.NONE, "dane-only", False),
    "peer's memory seen later at the same strength": (
        state(memory=("dane", OLD)), state(memory=("dane", NEW)), Action.NONE, "dane", False),
    "our evidence withdrew what the peer remembers": (
        state(policy("none", NEW)), state(policy("enforce", OLD), memory=("sts-enforce", OLD)),
        Action.NONE, None, False),
    # The write of an evaluation whose fetch was blocked, over the fleet's.
    "blocked fetch over the stored policy": (
        state(replace(checked(NOW, "v=STSv1; id=2"), failure="policy fetch failed")),
        state(policy("enforce", OLD), memory=("sts-enforce", OLD)),
        Action.STS_ENFORCE, "sts-enforce", False),
}


class MergedTests(SynchronousTestCase):
    def test_table(self) -> None:
        """Each case: the verdict and memory once the peer's state is merged, and whether to re-check."""
        for name, (ours, theirs, action, memory, recheck) in MERGES.items():
            result = merged(ours, theirs, NOW, HORIZON)
            held = result.state or ours
            self.assertEqual(decide("example.test", held, NOW).action, action, name)
            self.assertEqual(held.memory.action if held.memory else None, memory, name)
            self.assertEqual(result.recheck, recheck, name)

    def test_nothing_new(self) -> None:
        """A peer's state that adds nothing gives no state; the same state, nothing either."""
        self.assertEqual(merged(ENFORCE_OLD, DomainState(), NOW, HORIZON), Merged(None, False))
        self.assertEqual(merged(DANE_ONLY, DANE_ONLY, NOW, HORIZON), Merged(None, False))

    def test_never_weaker(self) -> None:
        """No case answers weaker than ours, and none drops our memory."""
        order = {Action.DANE_ONLY: 3, Action.DANE: 2, Action.STS_ENFORCE: 1}
        for name, (ours, theirs, _, _, _) in MERGES.items():
            held = merged(ours, theirs, NOW, HORIZON).state or ours
            before = decide("example.test", ours, NOW).action
            after = decide("example.test", held, NOW).action
            self.assertGreaterEqual(order.get(after, 0), order.get(before, 0), name)
            if ours.memory is not None and name != "our evidence withdrew what the peer remembers":
                self.assertIsNotNone(held.memory, name)

    def test_peer_times_capped(self) -> None:
        """The issue's peer does not push our next check out: due no later than now + horizon."""
        _, theirs, _, _, _ = MERGES["the issue's peer"]
        held = merged(DANE_ONLY, theirs, NOW, HORIZON).state
        assert held is not None
        self.assertLessEqual(held.due_at, NOW + HORIZON)
        self.assertLessEqual(held.sts.checked_at, NOW)

    def test_discovery_taken_back_off_not(self) -> None:
        """A later TXT check is taken, with its due time; a peer's fetch back-off never is."""
        theirs = state(replace(checked(NEW, "v=STSv1; id=9"), failure="policy fetch failed",
                               failed_id="9", retry_at=NOW + 300, due_at=NEW + 60))
        held = merged(ENFORCE_OLD, theirs, NOW, HORIZON).state
        assert held is not None
        self.assertEqual((held.sts.record, held.sts.checked_at, held.sts.due_at),
                         ("v=STSv1; id=9", NEW, NEW + 60))
        self.assertEqual((held.sts.failed_id, held.sts.retry_at), (None, 0.0))
        self.assertEqual(held.sts.policy, ENFORCE_OLD.sts.policy)

    def test_stale_policy_rechecked(self) -> None:
        """A policy past its refetch with no newer fetch from the peer is re-checked here, not left to run out."""
        ours = state(policy("enforce", NOW - DAY / 2 - HORIZON - 1))
        self.assertTrue(merged(ours, ours, NOW, HORIZON).recheck)
        fresh = state(policy("enforce", NOW - DAY / 2))
        self.assertFalse(merged(fresh, fresh, NOW, HORIZON).recheck)
        self.assertFalse(merged(ours, state(policy("enforce", NEW)), NOW, HORIZON).recheck)


class CappedTests(SynchronousTestCase):
    def test_future_times(self) -> None:
        """Checked, fetched and seen times stop at now; due and retry at now + horizon; a policy expires within its max_age."""
        far = NOW + YEARS_30
        peer = DomainState(
            sts=StsState(policy=StsPolicy("enforce", 3600, ("mx.test",)), policy_id="1",
                         fetched_at=far, expires_at=far + 3600, checked_at=far, due_at=far,
                         retry_at=far),
            dane=DaneState(DaneStatus.DANE_ONLY, "x", True, checked_at=far, due_at=far),
            memory=Remembered("dane-only", far))
        got = capped(peer, NOW, HORIZON)
        self.assertEqual(
            (got.sts.fetched_at, got.sts.expires_at, got.sts.checked_at, got.sts.due_at,
             got.sts.retry_at),
            (NOW, NOW + 3600, NOW, NOW + HORIZON, NOW + HORIZON))
        assert got.dane is not None and got.memory is not None
        self.assertEqual((got.dane.checked_at, got.dane.due_at, got.memory.seen_at),
                         (NOW, NOW + HORIZON, NOW))

    def test_expiry_beyond_max_age(self) -> None:
        """A policy cannot be made to outlive its max_age after its fetch."""
        peer = state(replace(policy("enforce", OLD), expires_at=NOW + YEARS_30))
        self.assertEqual(capped(peer, NOW, HORIZON).sts.expires_at, OLD + DAY)

    def test_not_a_number(self) -> None:
        """NaN and infinite times count as later than any bound."""
        peer = state(replace(checked(math.nan), due_at=math.inf))
        got = capped(peer, NOW, HORIZON)
        self.assertEqual((got.sts.checked_at, got.sts.due_at), (NOW, NOW + HORIZON))

    def test_unchanged(self) -> None:
        """A state with believable times is returned as it is."""
        self.assertIs(capped(DANE_ONLY, NOW, HORIZON), DANE_ONLY)


class WrittenTests(SynchronousTestCase):
    def test_merged_over_stored(self) -> None:
        """A write keeps what the stored state adds: the policy and memory a blocked fetch lacks."""
        ours, stored, _, _, _ = MERGES["blocked fetch over the stored policy"]
        got = written(ours, stored, NOW, HORIZON)
        self.assertEqual(got.sts.policy, stored.sts.policy)
        self.assertEqual(got.sts.checked_at, NOW)
        self.assertEqual(got.memory, stored.memory)

    def test_acknowledged_memory(self) -> None:
        """An acknowledged state's memory is written as it is, over a stronger stored one."""
        ours = state(policy("enforce", NEW), memory=("sts-enforce", NEW))
        stored = state(policy("enforce", OLD), memory=("dane-only", OLD))
        self.assertEqual(written(ours, stored, NOW, HORIZON).memory, Remembered("dane-only", OLD))
        got = written(ours, stored, NOW, HORIZON, acknowledged=True)
        self.assertEqual(got.memory, ours.memory)
        self.assertIsNone(written(state(), stored, NOW, HORIZON, acknowledged=True).memory)
