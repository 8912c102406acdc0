"""
Times as the daemon writes them for people (logs, explain, cache show): UTC,
to the second.  The state, the store and the clock all count seconds since
the epoch.
"""

from __future__ import annotations

import time


def utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))
