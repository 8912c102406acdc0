"""Tests for L{mxpolicyd.evidence.sts_discovery}: RFC 8461 cache semantics, on a Clock."""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.evidence.state import StsState
from mxpolicyd.evidence.sts_discovery import REFRESH_AFTER, StsEvaluator
from mxpolicyd.net.https import FetchError

from .fakes import TXT, FakeFetcher, FakeResolver, policy, txt

D = "example.test"
NAME = "_mta-sts.example.test"


class StsEvaluatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.resolver = FakeResolver()
        self.fetcher = FakeFetcher()
        self.evaluator = StsEvaluator(
            self.clock, self.resolver, self.fetcher,
            ttl_min=60, ttl_max=3600, retry_interval=300,
        )
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=one", ttl=600)
        self.fetcher.bodies[D] = policy("enforce", max_age=86400)

    def evaluate(self, prior: StsState | None = None) -> StsState:
        return self.successResultOf(self.evaluator.evaluate(D, prior))

    def test_first_fetch(self) -> None:
        """A valid record and policy give a policy valid for max_age from the fetch."""
        now = self.clock.seconds()
        state = self.evaluate()
        assert state.policy is not None
        self.assertEqual(state.policy.mode, "enforce")
        self.assertEqual(state.policy_id, "one")
        self.assertEqual(state.expires_at, now + 86400)
        self.assertEqual(state.due_at, now + 600)
        self.assertIsNone(state.failure)
        self.assertEqual(self.resolver.queries, [(NAME, TXT)])

    def test_ttl_clamped(self) -> None:
        """The TXT re-check time is the record's TTL clamped to the floor and cap."""
        now = self.clock.seconds()
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=one", ttl=5)
        self.assertEqual(self.evaluate().due_at, now + 60)
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=one", ttl=86400)
        self.assertEqual(self.evaluate().due_at, now + 3600)

    def test_same_id_no_refetch(self) -> None:
        """An unchanged id does not refetch a fresh policy."""
        state = self.evaluate()
        self.clock.advance(3600)
        again = self.evaluate(state)
        self.assertEqual(self.fetcher.fetches, [D])
        self.assertEqual(again.policy, state.policy)
        self.assertEqual(again.fetched_at, state.fetched_at)
        self.assertEqual(again.due_at, self.clock.seconds() + 600)

    def test_new_id_refetches(self) -> None:
        """A changed id refetches and the new policy replaces the old."""
        state = self.evaluate()
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=two")
        self.fetcher.bodies[D] = policy("testing", mx=("mx2.example.test",))
        self.clock.advance(60)
        again = self.evaluate(state)
        self.assertEqual(self.fetcher.fetches, [D, D])
        assert again.policy is not None
        self.assertEqual(again.policy.mode, "testing")
        self.assertEqual(again.policy.mx, ("mx2.example.test",))
        self.assertEqual(again.policy_id, "two")

    def test_proactive_refresh(self) -> None:
        """A policy with an unchanged id is refetched after half its max_age."""
        state = self.evaluate()
        self.clock.advance(86400 / 2 - 1)
        self.evaluate(state)
        self.assertEqual(len(self.fetcher.fetches), 1)
        self.clock.advance(1)
        refreshed = self.evaluate(state)
        self.assertEqual(len(self.fetcher.fetches), 2)
        self.assertEqual(refreshed.expires_at, self.clock.seconds() + 86400)

    def test_refresh_at_most_daily(self) -> None:
        """A long max_age policy is still refetched about daily."""
        self.fetcher.bodies[D] = policy(max_age=31557600)
        state = self.evaluate()
        self.clock.advance(REFRESH_AFTER)
        self.evaluate(state)
        self.assertEqual(len(self.fetcher.fetches), 2)

    def test_mode_none_removes_enforcement(self) -> None:
        """A new policy in mode none replaces an enforce policy."""
        state = self.evaluate()
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=two")
        self.fetcher.bodies[D] = b"version: STSv1\nmode: none\nmax_age: 86400\n"
        again = self.evaluate(state)
        assert again.policy is not None
        self.assertEqual(again.policy.mode, "none")

    def test_no_record_no_cache(self) -> None:
        """No TXT record and nothing cached: no policy, re-check after the negative TTL."""
        del self.resolver.answers[(NAME, TXT)]
        now = self.clock.seconds()
        state = self.evaluate()
        self.assertIsNone(state.policy)
        self.assertIsNone(state.record)
        self.assertIsNone(state.failure)
        self.assertEqual(state.due_at, now + 60)
        self.assertEqual(self.fetcher.fetches, [])

    def test_record_removed_keeps_policy(self) -> None:
        """A TXT record that disappears does not remove the cached policy (RFC 8461 s5.1)."""
        state = self.evaluate()
        del self.resolver.answers[(NAME, TXT)]
        self.clock.advance(3600)
        again = self.evaluate(state)
        self.assertEqual(again.policy, state.policy)
        self.assertEqual(again.active_policy(self.clock.seconds()), state.policy)
        self.assertIsNone(again.record)

    def test_two_records(self) -> None:
        """Two STSv1 records mean no valid record: nothing is fetched."""
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=a", "v=STSv1; id=b")
        state = self.evaluate()
        self.assertIsNone(state.policy)
        self.assertIn("record", state.failure or "")
        self.assertEqual(self.fetcher.fetches, [])

    def test_bad_id(self) -> None:
        """A record with an invalid id is no record: nothing is fetched."""
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=bad!id")
        state = self.evaluate()
        self.assertIsNone(state.policy)
        self.assertIsNotNone(state.failure)
        self.assertEqual(self.fetcher.fetches, [])

    def test_dns_failure_keeps_policy(self) -> None:
        """A DNS timeout keeps the cached policy and re-checks after the floor."""
        state = self.evaluate()
        self.resolver.fail(NAME)
        self.clock.advance(700)
        again = self.evaluate(state)
        self.assertEqual(again.policy, state.policy)
        self.assertEqual(again.expires_at, state.expires_at)
        self.assertEqual(again.due_at, self.clock.seconds() + 60)
        self.assertIn("timeout", again.failure or "")

    def test_dns_failure_no_cache(self) -> None:
        """A DNS timeout with nothing cached gives no policy."""
        self.resolver.fail(NAME)
        state = self.evaluate()
        self.assertIsNone(state.policy)
        self.assertIn("TXT lookup failed", state.failure or "")

    def test_fetch_failure_keeps_policy(self) -> None:
        """A failed refetch on a new id keeps the old policy until it expires."""
        state = self.evaluate()
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=two")
        self.fetcher.bodies[D] = FetchError(D, "timeout", "mta-sts.example.test: timed out")
        again = self.evaluate(state)
        self.assertEqual(again.policy, state.policy)
        self.assertEqual(again.policy_id, "one")
        self.assertEqual(again.failed_id, "two")
        self.assertEqual(again.retry_at, self.clock.seconds() + 300)

    def test_fetch_backoff(self) -> None:
        """After a failed fetch the same id is not fetched again for 5 minutes."""
        del self.fetcher.bodies[D]
        state = self.evaluate()
        for _ in range(4):
            self.clock.advance(60)
            state = self.evaluate(state)
        self.assertEqual(self.fetcher.fetches, [D])
        self.clock.advance(60)
        state = self.evaluate(state)
        self.assertEqual(self.fetcher.fetches, [D, D])

    def test_backoff_is_per_id(self) -> None:
        """A new id is fetched at once even during a back-off."""
        del self.fetcher.bodies[D]
        state = self.evaluate()
        self.resolver.answers[(NAME, TXT)] = txt("v=STSv1; id=two")
        self.fetcher.bodies[D] = policy()
        state = self.evaluate(state)
        self.assertEqual(self.fetcher.fetches, [D, D])
        self.assertEqual(state.policy_id, "two")

    def test_syntax_error(self) -> None:
        """A policy with a syntax error is a failed fetch, backed off."""
        self.fetcher.bodies[D] = b"version: STSv1\nmode: bogus\n"
        state = self.evaluate()
        self.assertIsNone(state.policy)
        self.assertEqual(state.failed_id, "one")
        self.assertIn("policy fetch failed", state.failure or "")

    def test_policy_expires(self) -> None:
        """A policy that is never refreshed stops applying after max_age."""
        state = self.evaluate()
        self.assertIsNotNone(state.active_policy(self.clock.seconds() + 86399))
        self.assertIsNone(state.active_policy(self.clock.seconds() + 86400))

    def test_trace(self) -> None:
        """The trace shows the TXT record, the policy body and the outcome."""
        trace: list[dict[str, object]] = []
        self.successResultOf(self.evaluator.evaluate(D, None, trace))
        steps = [t["step"] for t in trace]
        self.assertEqual(steps, ["txt", "record", "fetch", "policy"])
        self.assertEqual(trace[0]["records"], ["v=STSv1; id=one"])
        self.assertIn("mode: enforce", str(trace[2]["body"]))

    def test_state_round_trip(self) -> None:
        """A state survives JSON as the store keeps it."""
        state = self.evaluate()
        self.assertEqual(StsState.from_json(state.to_json()), state)

    def test_name_too_long(self) -> None:
        """A domain whose _mta-sts name exceeds DNS limits has no policy, and no crash."""
        self.resolver.answers[(NAME, TXT)] = ValueError("name too long")
        state = self.evaluate()
        self.assertIsNone(state.policy)
        self.assertIsNone(state.failure)
        self.assertEqual(self.fetcher.fetches, [])


class StsLogTests(SynchronousTestCase):
    """What a failed discovery logs: once per resolver outage, per domain when it is the domain's."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.resolver = FakeResolver()
        self.fetcher = FakeFetcher()
        self.evaluator = StsEvaluator(self.clock, self.resolver, self.fetcher)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def cached(self, domain: str) -> StsState:
        """A domain with an enforce policy, fetched now."""
        self.resolver.answers[("_mta-sts." + domain, TXT)] = txt("v=STSv1; id=one")
        self.fetcher.bodies[domain] = policy("enforce")
        return self.successResultOf(self.evaluator.evaluate(domain, None))

    def lines(self, level: LogLevel) -> list[str]:
        return [formatEvent(e) for e in self.events
                if e.get("log_level") == level
                and str(e.get("log_namespace", "")).startswith("mxpolicyd.evidence.sts_discovery")]

    def test_outage_warns_once(self) -> None:
        """30 TXT timeouts while cached policies are kept: one warning, 29 debug lines, one recovery line."""
        domains = ["d%d.test" % i for i in range(30)]
        priors = {d: self.cached(d) for d in domains}
        del self.events[:]
        for d in domains:
            self.resolver.fail("_mta-sts." + d)
        self.clock.advance(600)
        for d in domains:
            state = self.successResultOf(self.evaluator.evaluate(d, priors[d]))
            self.assertEqual(state.policy, priors[d].policy)
        [warning] = self.lines(LogLevel.warn)
        self.assertIn("MTA-STS discovery for d0.test failed", warning)
        self.assertIn("keeping the cached enforce policy", warning)
        self.assertIn("further DNS timeout failures that keep a cached policy", warning)
        debug = self.lines(LogLevel.debug)
        self.assertEqual(len(debug), 29)
        self.assertIn("MTA-STS discovery for d29.test failed", debug[-1])
        self.assertEqual(self.lines(LogLevel.info), [])

        self.resolver.answers[("_mta-sts.d0.test", TXT)] = txt("v=STSv1; id=one")
        self.successResultOf(self.evaluator.evaluate("d0.test", priors["d0.test"]))
        [recovered] = self.lines(LogLevel.info)
        self.assertIn("DNS answers again (d0.test resolved) after 30 failed MTA-STS "
                      "discoveries", recovered)

    def test_first_uncached_failure_warns(self) -> None:
        """In an outage, the first domain left without a policy gets its own warning."""
        prior = self.cached(D)
        for d in (D, "new1.test", "new2.test"):
            self.resolver.fail("_mta-sts." + d)
        self.successResultOf(self.evaluator.evaluate(D, prior))
        self.successResultOf(self.evaluator.evaluate("new1.test", None))
        self.successResultOf(self.evaluator.evaluate("new2.test", None))
        warnings = self.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 2)
        self.assertIn("MTA-STS discovery for new1.test failed", warnings[1])
        self.assertIn("no cached policy, treating as no MTA-STS", warnings[1])
        self.assertEqual(len(self.lines(LogLevel.debug)), 1)

    def test_domain_failures_warn_each_time(self) -> None:
        """A CNAME loop and a failed policy fetch are the domain's: a warning every time."""
        for _ in range(3):
            self.resolver.fail("_mta-sts.loop.test", kind="cname-loop")
            self.successResultOf(self.evaluator.evaluate("loop.test", None))
        for d in ("nohost1.test", "nohost2.test"):
            self.resolver.answers[("_mta-sts." + d, TXT)] = txt("v=STSv1; id=one")
            self.successResultOf(self.evaluator.evaluate(d, None))
        warnings = self.lines(LogLevel.warn)
        self.assertEqual(len(warnings), 5)
        self.assertEqual(len([w for w in warnings if "loop.test failed" in w]), 3)
        self.assertIn("MTA-STS policy fetch for nohost2.test (id one) failed", warnings[-1])
        self.assertEqual(self.lines(LogLevel.debug), [])
