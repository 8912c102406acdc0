"""
Domain state: the evidence that the evaluators gathered for one domain.

This is what the store persists and what a restarted daemon answers from, so
it holds times (seconds since the epoch, from the injected clock) rather than
durations, and it round-trips through JSON.  The verdict is not stored: it is
recomputed from the state, so a change of profile or of the answer rules
never needs a migration.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from mxpolicyd.evidence.dane import DaneState
from mxpolicyd.evidence.sts import StsPolicy

FOREVER = math.inf


@dataclass(frozen=True, slots=True)
class StsState:
    """
    What RFC 8461 discovery and fetching last found for a domain.

    C{policy} is the last successfully fetched policy, kept across failed
    discoveries until it expires (RFC 8461 s5.1): a TXT record that goes
    away, a dead resolver or a dead web server never drop it early.
    """

    policy: StsPolicy | None = None
    policy_id: str | None = None
    fetched_at: float = 0.0
    expires_at: float = 0.0
    # The TXT record as last seen, None when there was none (or no valid one).
    record: str | None = None
    checked_at: float = 0.0
    # When the TXT record should be looked at again (its TTL, clamped).
    due_at: float = 0.0
    # The last failure, for logs and explain; None after a clean check.
    failure: str | None = None
    # Back-off after a failed fetch: no new fetch for this id before retry_at.
    failed_id: str | None = None
    retry_at: float = 0.0

    def active_policy(self, now: float) -> StsPolicy | None:
        """The policy a sender must apply now, if any."""
        if self.policy is not None and now < self.expires_at:
            return self.policy
        return None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["policy"] = None if self.policy is None else self.policy.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StsState:
        if not isinstance(data, dict):
            raise ValueError("MTA-STS state is not an object")
        policy = data.get("policy")
        values: dict[str, Any] = {}
        for name, kind in _STS_FIELDS.items():
            if name == "policy" or name not in data:
                continue
            value = data[name]
            if kind is _NUMBER:
                if isinstance(value, bool) or not isinstance(value, kind):
                    raise ValueError("MTA-STS state field %r is not a number" % name)
                # Most times are zero (no policy, no failure): share one.
                value = float(value) or 0.0
            elif value is not None and not isinstance(value, kind):
                raise ValueError("MTA-STS state field %r has a bad type" % name)
            elif name == "failure" and value is not None:
                value = sys.intern(value)
            values[name] = value
        values["policy"] = None if policy is None else StsPolicy.from_json(policy)
        return cls(**values)


# Nothing known of MTA-STS: shared by every state that holds no evidence.
NO_STS = StsState()

_NUMBER = (int, float)
_STS_FIELDS: dict[str, Any] = {
    "policy": dict,
    "policy_id": str,
    "fetched_at": _NUMBER,
    "expires_at": _NUMBER,
    "record": str,
    "checked_at": _NUMBER,
    "due_at": _NUMBER,
    "failure": str,
    "failed_id": str,
    "retry_at": _NUMBER,
}


# The actions the downgrade memory holds, shared by every state that holds one.
_REMEMBERED = {a: a for a in ("dane-only", "dane", "sts-enforce")}


@dataclass(frozen=True, slots=True)
class Remembered:
    """
    The strongest verdict seen for a domain, for downgrade protection, and
    when it was last seen at that strength.  Only the verdicts worth
    protecting are remembered: dane-only, dane and sts-enforce.
    """

    action: str
    seen_at: float

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "seen_at": self.seen_at}

    @classmethod
    def from_json(cls, data: Any) -> Remembered:
        if not isinstance(data, dict):
            raise ValueError("remembered verdict is not an object")
        action = _REMEMBERED.get(data.get("action"))  # type: ignore[arg-type]
        seen_at = data.get("seen_at")
        if action is None:
            raise ValueError("remembered verdict has an unknown action %r"
                             % (data.get("action"),))
        if isinstance(seen_at, bool) or not isinstance(seen_at, _NUMBER):
            raise ValueError("remembered verdict has no seen_at time")
        return cls(action, float(seen_at))


@dataclass(frozen=True, slots=True)
class DomainState:
    """Everything known about one destination domain."""

    sts: StsState = field(default_factory=StsState)
    # None: DANE not evaluated (disabled, or a state from before it was on).
    dane: DaneState | None = None
    # The downgrade memory (policy.downgrade): the strongest verdict seen
    # lately; None when off or nothing worth protecting was seen.
    memory: Remembered | None = None

    @property
    def due_at(self) -> float:
        """When the evidence behind the verdict should be checked again."""
        if self.dane is None:
            return self.sts.due_at
        return min(self.sts.due_at, self.dane.due_at)

    @property
    def remembered_only(self) -> bool:
        """
        Whether only the downgrade memory is left (L{reduced}): no evidence
        to answer from, so a lookup evaluates the domain afresh and judges
        the result against the memory.
        """
        return self.memory is not None and self.dane is None and self.sts == NO_STS

    def reduced(self) -> DomainState:
        """
        This state without its evidence, keeping only the downgrade memory:
        what an idle domain, or one evicted for room, keeps until the memory
        ages out.  The memory is what protects the domain from a downgrade;
        the evidence, one evaluation learns again.
        """
        return DomainState(sts=NO_STS, memory=self.memory)

    def changes_at(self, now: float) -> float:
        """
        When the verdict changes with no new evidence: an MTA-STS policy
        that runs out.
        """
        if self.sts.policy is not None and self.sts.expires_at > now:
            return self.sts.expires_at
        return FOREVER

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"v": 1, "sts": self.sts.to_json()}
        if self.dane is not None:
            data["dane"] = self.dane.to_json()
        if self.memory is not None:
            # Also under 0.1.0's name, so that 0.1.0 daemons sharing a Redis
            # store during a rolling upgrade keep the memory they read.
            data["memory"] = data["best"] = self.memory.to_json()
        return data

    @classmethod
    def from_json(cls, data: Any) -> DomainState:
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a version 1 domain state")
        dane = data.get("dane")
        # Releases up to 0.1.0 wrote the downgrade memory as "best": their
        # stores keep it.
        memory = data.get("memory", data.get("best"))
        return cls(
            sts=StsState.from_json(data.get("sts", {})),
            dane=None if dane is None else DaneState.from_json(dane),
            memory=None if memory is None else Remembered.from_json(memory),
        )
