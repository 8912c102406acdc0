"""
The watch over administrator entries that end (C{expires}): warned about
before, and said when they end, so that nobody is surprised when a domain is
answered from its evidence again.
"""

from __future__ import annotations

import math

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mxpolicyd.policy.admin import DAY, AdminPolicy, _duration


class ExpiryWatch(Service):
    """
    Warns about entries that end soon, at start-up, on reload, once a day
    and at the moment each one ends.  The cache re-decides on its own at
    that moment (an entry's end is part of the verdict's change time); this
    only tells the administrator, who may have forgotten the date.
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, policy: AdminPolicy) -> None:
        self._clock = clock
        self._policy = policy
        self._timer: IDelayedCall | None = None

    def set_policy(self, policy: AdminPolicy) -> None:
        """A reload: look again at once."""
        self._policy = policy
        if self.running:
            self.check()

    def startService(self) -> None:
        super().startService()
        self.check()

    def stopService(self) -> None:
        super().stopService()
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def check(self) -> None:
        """Log what ends soon or has ended, and look again tomorrow or at the next end."""
        self._cancel()
        now = self._clock.seconds()
        policy = self._policy
        rules = [r for r in policy.rules.values() if r.expires is not None]
        for rule in sorted(rules, key=lambda r: (r.expires or 0.0, r.domain)):
            assert rule.expires is not None
            if rule.expires <= now:
                self._log.warn(
                    "Administrator entry {key} ended on {date}: {domain} is answered "
                    "from the evidence again; remove the entry from the configuration",
                    key=rule.key, date=rule.expires_text, domain=rule.domain)
            elif rule.expires - now <= policy.expiry_warning:
                self._log.warn(
                    "Administrator entry {key} ends on {date} (in {left}); after that "
                    "{domain} is answered from the evidence",
                    key=rule.key, date=rule.expires_text, left=_duration(rule.expires - now),
                    domain=rule.domain)
        upcoming = [r.expires for r in rules if r.expires is not None and r.expires > now]
        if not upcoming:
            return
        when = min([now + DAY] + upcoming)
        if math.isfinite(when):
            self._timer = self._clock.callLater(max(0.0, when - now), self.check)
