"""
The cached entries: one L{Entry} per domain, in the table the lookup path
reads, and the cap on those holding no policy.

Domains holding no unexpired MTA-STS policy are capped in number
(lookup.max_negative), the least recently used evicted first, so that a
flood of names costs bounded memory, whether they do not exist or sit under
a DNSSEC-signed wildcard with TLSA records.  A domain holding a policy is
never evicted for room; one holding downgrade memory loses only its
evidence and keeps the memory (L{DomainState.reduced}).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.metrics import Metrics
from mxpolicyd.policy.admin import AdminPolicy
from mxpolicyd.policy.judge import judge
from mxpolicyd.policy.verdict import Verdict, decide
from mxpolicyd.store.base import Store

NO_ADMIN = AdminPolicy()


def holds_policy(state: DomainState, now: float) -> bool:
    """
    Whether a domain's state is kept whatever the pressure, and so not
    counted by lookup.max_negative: an unexpired MTA-STS policy (RFC 8461
    s5.1 keeps it until it expires; forgetting it would let an attacker who
    blocks the next fetch downgrade the domain), or a state already reduced
    to its downgrade memory.

    A DANE verdict is not kept: evicted, the domain is evaluated again on
    its next lookup, and a DNS that an attacker blocks then turns it into
    TEMP (the first answer while DANE is unknown), never into a weaker
    answer.  The downgrade memory of an evicted domain is kept
    (L{Entries}), so that a flood cannot wash out what downgrade protection
    compares with.
    """
    return state.sts.active_policy(now) is not None or state.remembered_only


class Entry:
    """
    One cached domain: its evidence, the verdict decided from it, and the
    times the lookup path compares.  Mutable, updated in place on
    re-evaluation, so that the responders' memo keeps pointing at it.
    """

    __slots__ = (
        "domain", "state", "verdict", "due_at", "changes_at", "used_at", "refresher_bucket",
    )

    domain: str
    state: DomainState
    verdict: Verdict
    # When the evidence should be checked again (stale-while-revalidate).
    due_at: float
    # When the verdict changes with no new evidence: a policy or an
    # administrator's entry running out, the downgrade memory ageing out.
    changes_at: float
    # The last lookup: the refresher's window and the eviction order.
    used_at: float
    # The refresher's, not the cache's: the second of the refresher's wheel
    # bucket that lists this domain, 0 when none does; a domain listed in
    # an older bucket as well has been rescheduled since.  Kept here because
    # a slot costs 8 bytes a domain where a dict in the refresher would cost
    # about 100 (a million domains at ~800 bytes each is the scale target).
    refresher_bucket: int

    def __init__(self, domain: str, state: DomainState, now: float, used_at: float,
                 admin: AdminPolicy = NO_ADMIN) -> None:
        self.domain = domain
        self.used_at = used_at
        self.refresher_bucket = 0
        self.update(state, now, admin)

    def update(self, state: DomainState, now: float, admin: AdminPolicy = NO_ADMIN) -> None:
        """Decide again from C{state}, as the administrator's policy has it."""
        self.state = state
        self.verdict = decide(self.domain, state, now)
        self.due_at = state.due_at
        self.changes_at = state.changes_at(now)
        if not admin.neutral:
            self.verdict, until = judge(self.verdict, state, admin, now)
            if until < self.changes_at:
                self.changes_at = until


class Entries:
    """
    The table of cached entries, and the order in which those holding no
    policy are evicted for room.

    The lookup path reads C{by_domain} directly; whoever adds an entry there
    calls L{track} so that the cap is kept.
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        store: Store | None,
        metrics: Metrics,
        max_negative: int,
        busy: Callable[[str], bool],
        evicted: Callable[[Entry], None],
        reduce: Callable[[Entry], bool] = lambda entry: False,
    ) -> None:
        """
        @param max_negative: how many domains holding no policy (see
            L{holds_policy}) stay cached; beyond, the least recently used
            are evicted, from the store too.
        @param busy: whether a domain is under evaluation or lease, and so
            passed over: its result is about to be inserted again.
        @param evicted: called with each entry evicted, once it is gone.
        @param reduce: called with an entry to evict: reduces it to its
            downgrade memory if that is still to be kept, and says whether
            it did; the entry then stays, out of the count.
        """
        self.by_domain: dict[str, Entry] = {}
        self.max_negative = max_negative
        # Until the store has been read in full, rows arrive in name order,
        # not by last use: nothing is evicted before they are queued by it.
        self.loaded = store is None
        self.evicted = 0
        self._clock = clock
        self._store = store
        self._metrics = metrics
        self._busy = busy
        self._on_evicted = evicted
        self._reduce = reduce
        # Domains holding no policy, least recently queued first, each with
        # the last use it had when queued: a use since then earns it a second
        # chance at the back, so eviction follows last use without the hot
        # path (which only writes Entry.used_at) touching this order.
        self._negative: OrderedDict[str, float] = OrderedDict()
        self._logged = -math.inf
        metrics.gauge("mxpolicyd_cached_negative_domains",
                      "Cached domains that lookup.max_negative counts: holding no "
                      "unexpired MTA-STS policy, not reduced to downgrade memory.",
                      lambda: len(self._negative))

    @property
    def negative(self) -> int:
        """Cached domains holding no policy: those C{max_negative} counts."""
        return len(self._negative)

    def remove(self, domain: str) -> Entry | None:
        """Drop a domain from the table (forgotten, not evicted)."""
        entry = self.by_domain.pop(domain, None)
        self._negative.pop(domain, None)
        return entry

    def track(self, entry: Entry, now: float) -> None:
        """Keep the queue of domains holding no policy current, and capped."""
        negative = self._negative
        if holds_policy(entry.state, now):
            negative.pop(entry.domain, None)
        elif entry.domain not in negative:
            negative[entry.domain] = entry.used_at
            if len(negative) > self.max_negative:
                self.trim()

    def trim(self) -> None:
        """
        Evict domains holding no policy, least recently used first, down to
        the cap.  Busy domains are passed over.
        """
        negative = self._negative
        if not self.loaded or len(negative) <= self.max_negative:
            return
        passed = 0
        evicted = self.evicted
        while len(negative) > self.max_negative and passed < len(negative):
            domain, queued = negative.popitem(last=False)
            entry = self.by_domain.get(domain)
            if entry is None:
                continue
            if entry.used_at > queued or self._busy(domain):
                negative[domain] = entry.used_at
                passed += 1
                continue
            self._evict(entry)
        now = self._clock.seconds()
        if self.evicted > evicted and now - self._logged >= 600:
            self._logged = now
            self._log.info(
                "More cached domains hold no policy than lookup.max_negative ({cap}); "
                "evicting the least recently used, as each new one arrives ({count} "
                "evicted so far)",
                cap=self.max_negative,
                count=self.evicted,
            )

    def reorder(self) -> None:
        """Queue the domains holding no policy by their last use."""
        entries = self.by_domain
        found = [entries[d] for d in self._negative if d in entries]
        found.sort(key=lambda e: e.used_at)
        self._negative = OrderedDict((e.domain, e.used_at) for e in found)

    def _evict(self, entry: Entry) -> None:
        self.evicted += 1
        self._metrics.evictions.inc()
        if self._reduce(entry):
            # Its evidence is gone; its downgrade memory stays, uncounted.
            return
        del self.by_domain[entry.domain]
        # Not kept in the store either: it would come back at the next
        # start, and the store would grow with every junk name.
        if self._store is not None:
            self._store.delete(entry.domain)
        self._on_evicted(entry)
