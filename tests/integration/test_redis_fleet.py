"""
A fleet of two mxpolicyd daemons sharing one real redis-server (Debian's),
with the test world's nsd and nginx: shared states, one refresher per domain
through the lease, and answers from memory while Redis is away.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import pytest

from . import scenarios
from .case import IntegrationTestCase
from .daemon import Daemon
from .scenarios import enforce_answer, mx_of, policy
from .servers import REDIS_CLI, REDIS_SERVER, RedisServer, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the module; each test uses its own key prefix."""
    if os.geteuid() != 0:
        pytest.skip("integration tests need root; run tests/run as root")
    if not os.access(REDIS_SERVER, os.X_OK) or not os.access(REDIS_CLI, os.X_OK):
        pytest.fail(
            f"{REDIS_SERVER} and {REDIS_CLI} are needed (Debian package redis-server): "
            "run tests/run as root to install them"
        )
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class RedisFleetTests(IntegrationTestCase):
    """Two daemons, one Redis."""

    redis: RedisServer
    prefix: str

    @pytest.fixture(autouse=True)
    def _fleet(self, redis_server: RedisServer, request: pytest.FixtureRequest) -> None:
        self.redis = redis_server
        if not self.redis.server.running():
            self.redis.start()
        self.prefix = f"{request.node.name}:"

    def fleet_daemon(self, lease: float = 30.0) -> Daemon:
        """A daemon with a fresh local state directory, storing in this test's Redis keys."""
        return self.start_daemon(
            None,
            {
                "store": {
                    "backend": "redis",
                    "redis": self.redis.endpoint,
                    "key_prefix": self.prefix,
                    "lease": lease,
                    "flush_interval": 0.2,
                },
                "refresh": {"startup_spread": 1.0},
            },
        )

    def key(self, domain: str) -> str:
        return f"{self.prefix}d:{domain}"

    def wait_for_state(self, domain: str, timeout: float = 10.0, policy_id: str | None = None) -> dict[str, Any]:
        """The domain's state in Redis, once there is one (with that policy id, if given)."""
        found: list[dict[str, Any]] = []

        def stored() -> bool:
            value = self.redis.state(self.key(domain))
            if value is None:
                return False
            if policy_id is not None and value["state"]["sts"].get("policy_id") != policy_id:
                return False
            found.append(value)
            return True

        wait_until(stored, timeout, f"{domain}'s state in Redis", interval=0.1)
        return found[-1]

    def fetches(self, domain: str) -> int:
        return len(self.world.nginx.requests_for(domain))

    def test_state_shared_through_redis(self) -> None:
        """A domain daemon A evaluated is answered by daemon B from Redis, with one policy fetch in all."""
        domain = "split.test"
        answer = enforce_answer(mx_of(domain))
        before = self.fetches(domain)
        a = self.fleet_daemon()
        self.assertAnswer(domain, answer, daemon=a)
        stored = self.wait_for_state(domain)
        self.assertEqual(stored["state"]["sts"]["policy"]["mode"], "enforce")
        ttl = int(self.redis.cli("PTTL", self.key(domain)))
        self.assertGreater(ttl, 6 * 86400 * 1000, "the key lives for the refresh window")
        b = self.fleet_daemon()
        wait_until(lambda: "Loaded 1 domains from Redis at" in b.log_text(), 10.0, "B's warm-up")
        self.assertAnswer(domain, answer, daemon=b)
        time.sleep(1.0)
        self.assertAnswer(domain, answer, daemon=b)
        self.assertEqual(self.fetches(domain) - before, 1, "policy fetches for both daemons")

    def test_one_refresher_per_domain(self) -> None:
        """With both refreshers running, a policy rotation is fetched once, by the lease holder, and adopted by the other."""
        domain = "rotate.test"
        old = enforce_answer(scenarios.ROTATE_MX_BEFORE)
        new = enforce_answer(scenarios.ROTATE_MX_AFTER)
        nginx, nsd = self.world.nginx, self.world.nsd
        original_records = {"_mta-sts.rotate": list(nsd.records["_mta-sts.rotate"])}
        a = self.fleet_daemon(lease=4.0)
        self.assertAnswer(domain, old, daemon=a)
        self.wait_for_state(domain)
        b = self.fleet_daemon(lease=4.0)
        wait_until(lambda: "Loaded 1 domains from Redis at" in b.log_text(), 10.0, "B's warm-up")
        # The TXT TTL floor is 1 s: each daemon's refresher wants the domain
        # every second; whoever took the lease first keeps it.
        time.sleep(3.0)
        holder = self.redis.cli("GET", f"{self.prefix}l:{domain}")
        self.assertTrue(holder, "one daemon holds the lease")
        try:
            before = self.fetches(domain)
            nginx.set_policy(domain, policy("enforce", scenarios.ROTATE_MX_AFTER))
            nsd.update(scenarios.rotated_records())
            # No lookups meanwhile: a lookup of a due domain re-checks it on
            # the spot, lease or not.
            self.wait_for_state(domain, 15.0, policy_id=scenarios.ROTATE_ID_AFTER)
            time.sleep(6.0)  # a lease period and more: the other daemon adopts
            self.assertEqual(self.fetches(domain) - before, 1, "fetches of the new policy")
            self.assertEqual(self.redis.cli("GET", f"{self.prefix}l:{domain}"), holder)
            self.assertAnswer(domain, new, daemon=a)
            self.assertAnswer(domain, new, daemon=b)
            self.assertEqual(self.fetches(domain) - before, 1, "fetches of the new policy")
        finally:
            nsd.update(original_records)
            nginx.set_policy(domain, policy("enforce", scenarios.ROTATE_MX_BEFORE))

    def test_redis_paused(self) -> None:
        """While Redis hangs both daemons answer from memory at once; afterwards the pending writes reach it."""
        cached = {d: enforce_answer(mx_of(d)) for d in ("enforce.test", "crlf.test")}
        a = self.fleet_daemon()
        for domain, answer in cached.items():
            self.assertAnswer(domain, answer, daemon=a)
            self.wait_for_state(domain)
        b = self.fleet_daemon()
        wait_until(lambda: "Loaded 2 domains from Redis at" in b.log_text(), 10.0, "B's warm-up")
        late = "cname.test"
        with self.redis.paused():
            deadline = time.monotonic() + 6.0
            while time.monotonic() < deadline:
                for daemon in (a, b):
                    for domain, answer in cached.items():
                        started = time.monotonic()
                        self.assertAnswer(domain, answer, daemon=daemon)
                        self.assertLess(time.monotonic() - started, 1.0)
                time.sleep(0.3)
            # A domain first asked for while Redis hangs is evaluated as usual.
            self.assertAnswer(late, enforce_answer(mx_of(late)), daemon=a)
            wait_until(lambda: "unreachable" in a.log_text(), 10.0, "A to notice the outage")
        self.wait_for_state(late, 40.0)
        wait_until(lambda: "is back; wrote" in a.log_text(), 10.0, "A's resynchronisation")
        for daemon in (a, b):
            for domain, answer in cached.items():
                self.assertAnswer(domain, answer, daemon=daemon)

    def test_redis_restarted(self) -> None:
        """Redis killed and restarted empty: answers go on from memory and new states are written to it."""
        domain = "othertxt.test"
        answer = enforce_answer(mx_of(domain))
        a = self.fleet_daemon()
        self.assertAnswer(domain, answer, daemon=a)
        self.wait_for_state(domain)
        self.redis.stop()
        try:
            late = "enforce.test"
            self.assertAnswer(domain, answer, daemon=a)
            self.assertAnswer(late, enforce_answer(mx_of(late)), daemon=a)
            wait_until(lambda: "unreachable" in a.log_text(), 10.0, "A to notice the outage")
            self.assertAnswer(domain, answer, daemon=a)
        finally:
            self.redis.start()
        self.wait_for_state(late, 40.0)
        self.assertIn("is back; wrote", a.log_text())
