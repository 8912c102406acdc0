"""
Stores written by mxpolicyd 0.1.0 load in this release: an SQLite file and
the values of a Redis fleet store, both made by the 0.1.0 code and kept in
tests/data.  Renaming a field must never cost an administrator the cached
policies and the downgrade memory of a running fleet.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.evidence.state import DomainState
from mxpolicyd.net.redis import RedisClient
from mxpolicyd.store.redis import RedisStore
from mxpolicyd.store.sqlite import SQLiteStore
from tests.test_redisstore import FakeRedis

DATA = Path(__file__).parent / "data"
WRITTEN = 1796300000.0


def run(f: Any, *args: Any) -> Any:
    return succeed(f(*args))


class StoreCompatibilityTests(SynchronousTestCase):
    """What 0.1.0 wrote reads back as the same evidence and memory."""

    def check(self, states: dict[str, DomainState]) -> None:
        self.assertEqual(sorted(states), ["broken.example", "daneonly.example", "enforce.example"])
        enforce = states["enforce.example"]
        policy = enforce.sts.active_policy(WRITTEN + 1)
        assert policy is not None
        self.assertEqual((policy.mode, policy.max_age, policy.mx),
                         ("enforce", 604800, ("mx1.enforce.example", "*.mail.example")))
        self.assertEqual(enforce.sts.policy_id, "20261201")
        self.assertEqual(enforce.sts.expires_at, WRITTEN + 604800)
        assert enforce.memory is not None
        self.assertEqual((enforce.memory.action, enforce.memory.seen_at), ("sts-enforce", WRITTEN))
        self.assertFalse(enforce.dane is not None and enforce.dane.mx_secure)
        dane = states["daneonly.example"].dane
        assert dane is not None
        self.assertEqual(str(dane.status), "dane-only")
        self.assertTrue(dane.mx_secure)
        self.assertEqual([(h.name, str(h.state)) for h in dane.hosts],
                         [("mx.daneonly.example", "usable")])
        self.assertTrue(dane.hosts[0].tlsa[0].usable)
        broken = states["broken.example"]
        self.assertEqual(broken.sts.failed_id, "7")
        self.assertEqual(broken.sts.retry_at, WRITTEN + 300)
        assert broken.dane is not None
        self.assertEqual(str(broken.dane.status), "temp")
        self.assertEqual(broken.due_at, WRITTEN + 60)

    def test_sqlite(self) -> None:
        """An SQLite store file of 0.1.0 opens and every state reads back."""
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / "store-0.1.0.sqlite", path)
        store = SQLiteStore(str(path), run)
        store.open()
        try:
            states = {domain: state for batch in store.scan() for domain, state, _ in batch}
        finally:
            store.close()
        self.check(states)

    def test_redis(self) -> None:
        """Values a 0.1.0 daemon left in Redis read back through the fleet store."""
        reactor = MemoryReactorClock()
        reactor.advance(WRITTEN)
        redis = FakeRedis(reactor)
        for domain, value in json.loads((DATA / "redis-0.1.0.json").read_text()).items():
            redis.data[b"mxpolicyd:d:" + domain.encode()] = (value.encode(), math.inf)
        store = RedisStore(RedisClient(reactor, "tcp:127.0.0.1:6390"), reactor,
                           window=7 * 86400.0)
        store.open()
        redis.accept()
        states = {}
        for domain in ("broken.example", "daneonly.example", "enforce.example"):
            d = store.get(domain)
            redis.pump()
            found = self.successResultOf(d)
            assert found is not None
            self.assertEqual(found[2], WRITTEN - 60)
            states[domain] = found[1]
        self.check(states)


class RollingUpgradeTests(SynchronousTestCase):
    """What this release writes, a 0.1.0 fleet member still reads whole."""

    def test_memory_written_under_both_names(self) -> None:
        """The downgrade memory goes out as "memory" and as 0.1.0's "best"."""
        states = json.loads((DATA / "redis-0.1.0.json").read_text())
        state = DomainState.from_json(json.loads(states["enforce.example"])["state"])
        data = state.to_json()
        self.assertEqual(data["memory"], {"action": "sts-enforce", "seen_at": WRITTEN})
        self.assertEqual(data["best"], data["memory"])
        self.assertEqual(DomainState.from_json(data), state)
