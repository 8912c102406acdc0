"""
The refresher: keeps recently used domains fresh so that lookups are always
answered from warm, current evidence.

Each cached domain is scheduled shortly before its evidence is due (the
_mta-sts TXT TTL, the DANE TTLs, the policy's refresh age: whatever
L{DomainState.due_at} says), with a random lead so that domains loaded or
evaluated together do not come due together.  The schedule is a timer wheel
with one-second buckets, ordered by a heap of bucket times: adding a domain
and finding the next due ones cost O(log buckets), never a scan of the
cache.  Refreshes in flight are bounded.  A domain unused for longer than the
window is not refreshed but evicted, unless it holds an unexpired MTA-STS
policy, which RFC 8461 says to keep until it expires, or downgrade memory
(policy.downgrade_memory_days, longer than the window by default), which
it keeps, without the evidence, until it ages out: forgetting it early
would let an attacker who blocks the domain's next lookups downgrade it
unnoticed.  A domain the cache evicts for room leaves the wheel at once, so
that a flood of junk names does not linger here until their evidence would
have come due.  In a fleet sharing a store, a short per-domain lease makes
one daemon refresh a domain for all; the others adopt its result from the
store.
"""

from __future__ import annotations

import heapq
import math
import random
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mxpolicyd.cache.entries import Entry
from mxpolicyd.cache.policycache import PolicyCache


class Refresher(Service):
    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        cache: PolicyCache,
        window: float = 7 * 86400,
        concurrency: int = 20,
        lead: float = 0.1,
        lead_max: float = 300.0,
        startup_spread: float = 60.0,
        min_interval: float = 30.0,
        random: Callable[[], float] = random.random,
    ) -> None:
        """
        @param window: a domain not looked up for this long is not refreshed.
        @param lead: refresh up to this fraction of the time left before the
            evidence is due, early (at most C{lead_max} seconds): the jitter.
        @param startup_spread: overdue domains (after a restart) are spread
            over this many seconds.
        @param min_interval: how long to wait before retrying a domain whose
            refresh failed outright.
        """
        self._clock = clock
        self._cache = cache
        self.window = window
        self.concurrency = concurrency
        self._lead = lead
        self._lead_max = lead_max
        self._spread = startup_spread
        self._min_interval = min_interval
        self._random = random
        # The wheel: a second -> the domains to refresh then.  A domain
        # rescheduled stays listed in its older bucket too; the one that
        # counts is in Entry.refresher_bucket, which only this class uses.
        self._buckets: dict[int, list[str]] = {}
        self._times: list[int] = []
        self._timer: IDelayedCall | None = None
        self.in_flight = 0
        self.refreshed = 0
        self.evicted = 0
        self.scheduled = 0
        cache.on_settled(self.schedule)
        cache.on_evicted(self.unschedule)

    @property
    def queue_depth(self) -> int:
        """Domains scheduled (stale bucket entries included)."""
        return self.scheduled

    def startService(self) -> None:
        super().startService()
        self._arm()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return None

    def schedule(self, entry: Entry) -> None:
        """Put C{entry} in the wheel for its next refresh."""
        now = self._clock.seconds()
        due = entry.due_at
        if not math.isfinite(due):
            due = entry.changes_at
        if not math.isfinite(due):
            return
        if due <= now:
            # Overdue: after a restart, thousands at once.  Spread them.
            when = now + self._random() * self._spread
        else:
            early = min(self._lead_max, (due - now) * self._lead) * self._random()
            when = due - early
        second = math.ceil(when)
        if entry.refresher_bucket == second:
            return
        entry.refresher_bucket = second
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._times, second)
        bucket.append(entry.domain)
        self.scheduled += 1
        self._arm()

    def unschedule(self, entry: Entry) -> None:
        """Take C{entry} out of the wheel: the cache no longer holds it."""
        second, entry.refresher_bucket = entry.refresher_bucket, 0
        bucket = self._buckets.get(second)
        if bucket is None:
            return
        try:
            # One second's domains: a scan in C, rarely more than thousands.
            bucket.remove(entry.domain)
        except ValueError:
            return
        self.scheduled -= 1

    def _arm(self) -> None:
        if not self.running or not self._times or self.in_flight >= self.concurrency:
            return
        first = self._times[0]
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= first:
                return
            self._timer.cancel()
        delay = max(0.0, first - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._run)

    def _run(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        while self._times and self._times[0] <= now and self.in_flight < self.concurrency:
            second = self._times[0]
            bucket = self._buckets[second]
            while bucket and self.in_flight < self.concurrency:
                self.scheduled -= 1
                self._due(bucket.pop(), second, now)
            if not bucket:
                del self._buckets[second]
                heapq.heappop(self._times)
        self._arm()

    def _due(self, domain: str, second: int, now: float) -> None:
        entry = self._cache.get(domain)
        if entry is None or entry.refresher_bucket != second:
            return  # forgotten, or rescheduled since
        entry.refresher_bucket = 0
        if entry.state.remembered_only:
            # Never refreshed: nobody asked since it was reduced (a lookup
            # evaluates it afresh).  Kept until the memory ages out.
            self._remembered(entry, now)
            return
        if now - entry.used_at > self.window:
            self._idle(entry, now)
            return
        self.in_flight += 1
        self.refreshed += 1
        # The cache asks the store for the lease: in a fleet, one member
        # re-evaluates and the others take its result.
        d = self._cache.refresh(domain)
        d.addErrback(self._failed, domain)
        d.addBoth(self._finished, domain)

    def _idle(self, entry: Entry, now: float) -> None:
        policy = entry.state.sts.active_policy(now)
        if policy is not None:
            # RFC 8461 s5.1: a cached policy is kept until it expires.  It
            # is not refreshed meanwhile: nobody is asking.
            self._keep_until(entry, entry.state.sts.expires_at)
            return
        ends = self._cache.memory_ends(entry.state)
        if ends > now:
            # The downgrade memory outlives the window: keep it, and only
            # it, for its full term.
            self._log.debug(
                "{domain} not looked up for {days:.1f} days: dropping its evidence, "
                "keeping its remembered {action} until it ages out",
                domain=entry.domain,
                days=(now - entry.used_at) / 86400,
                action=entry.state.memory.action if entry.state.memory else None,
            )
            self._cache.reduce(entry.domain)
            self._keep_until(entry, ends)
            return
        self._log.debug(
            "Evicting {domain}: not looked up for {days:.1f} days",
            domain=entry.domain,
            days=(now - entry.used_at) / 86400,
        )
        self._cache.forget(entry.domain)
        self.evicted += 1

    def _remembered(self, entry: Entry, now: float) -> None:
        """A domain reduced to its downgrade memory: kept until it ages out."""
        ends = self._cache.memory_ends(entry.state)
        if ends > now:
            self._keep_until(entry, ends)
            return
        self._log.debug("Forgetting {domain}: its remembered verdict aged out",
                        domain=entry.domain)
        self._cache.forget(entry.domain)
        self.evicted += 1

    def _keep_until(self, entry: Entry, until: float) -> None:
        """Look at an idle domain again at C{until}, and not before."""
        entry.refresher_bucket = math.ceil(until)
        self._at(entry.refresher_bucket, entry.domain)

    def _at(self, second: int, domain: str) -> None:
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._times, second)
        bucket.append(domain)
        self.scheduled += 1

    def _failed(self, failure: Any, domain: str) -> None:
        self._log.failure("Refresh of {domain} failed", failure, domain=domain)
        entry = self._cache.get(domain)
        if entry is not None and entry.refresher_bucket == 0:
            entry.refresher_bucket = math.ceil(self._clock.seconds() + self._min_interval)
            self._at(entry.refresher_bucket, domain)

    def _finished(self, _: Any, domain: str) -> None:
        self.in_flight -= 1
        self._arm()
