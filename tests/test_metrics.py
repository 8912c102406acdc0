"""Tests for L{mxpolicyd.ops.metrics} and the counting done on the lookup paths."""

from __future__ import annotations

import os
from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from mxpolicyd.answers.exim import EximResponder
from mxpolicyd.answers.postfix import PostfixResponder
from mxpolicyd.answers.profiles import BUILTIN_PROFILES
from mxpolicyd.cache.policycache import PolicyCache
from mxpolicyd.config.load import load
from mxpolicyd.evidence.evaluator import Evaluator
from mxpolicyd.evidence.sts_discovery import StsEvaluator
from mxpolicyd.ops.metrics import Counter, Histogram, Metrics, MetricsResource
from mxpolicyd.tap import Daemon, build_evaluator

from .test_server import EnforceWorld


def exposition(*metrics: Counter | Histogram) -> list[str]:
    """The lines prometheus_client writes for C{metrics}, as a scrape would."""

    class Collector:
        def collect(self) -> Iterable[Metric]:
            return [metric.family() for metric in metrics]

    registry = CollectorRegistry()
    registry.register(Collector())
    return generate_latest(registry).decode("utf-8").splitlines()


class FormatTests(SynchronousTestCase):
    def test_counter(self) -> None:
        """A counter renders HELP, TYPE and one sample per label set, escaped."""
        c = Counter("x_total", "Things.", ("kind",))
        c.inc("a")
        c.inc("a")
        c.inc('b"\\')
        self.assertEqual(exposition(c), [
            "# HELP x_total Things.",
            "# TYPE x_total counter",
            'x_total{kind="a"} 2.0',
            'x_total{kind="b\\"\\\\"} 1.0',
        ])

    def test_histogram(self) -> None:
        """A histogram renders cumulative buckets, +Inf, sum and count; le as before ("1", not "1.0")."""
        h = Histogram("t_seconds", "Time.", ("p",), buckets=(0.1, 1.0))
        h.observe(0.05, "x")
        h.observe(0.5, "x")
        h.observe(5.0, "x")
        lines = exposition(h)
        self.assertIn("# TYPE t_seconds histogram", lines)
        self.assertIn('t_seconds_bucket{le="0.1",p="x"} 1.0', lines)
        self.assertIn('t_seconds_bucket{le="1",p="x"} 2.0', lines)
        self.assertIn('t_seconds_bucket{le="+Inf",p="x"} 3.0', lines)
        self.assertIn('t_seconds_sum{p="x"} 5.55', lines)
        self.assertIn('t_seconds_count{p="x"} 3.0', lines)

    def test_families(self) -> None:
        """Every metric keeps its name, type and HELP text, in the order they always had."""
        metrics = Metrics()
        metrics.gauge("g_now", "A gauge.", lambda: 7)
        lines = metrics.render().decode("utf-8").splitlines()
        self.assertEqual([line for line in lines if line.startswith("# ")], [
            "# HELP mxpolicyd_lookups_total Lookups answered, by protocol and result.",
            "# TYPE mxpolicyd_lookups_total counter",
            "# HELP mxpolicyd_lookup_seconds Time from request to answer, by protocol.",
            "# TYPE mxpolicyd_lookup_seconds histogram",
            "# HELP mxpolicyd_cache_lookups_total "
            "Lookups of a domain answered from memory (hit) or not (miss).",
            "# TYPE mxpolicyd_cache_lookups_total counter",
            "# HELP mxpolicyd_evaluations_total Domain evaluations finished.",
            "# TYPE mxpolicyd_evaluations_total counter",
            "# HELP mxpolicyd_evaluation_failures_total "
            "Evaluations that recorded a failure, by kind.",
            "# TYPE mxpolicyd_evaluation_failures_total counter",
            "# HELP mxpolicyd_downgrades_total "
            "Re-evaluations whose verdict was weaker than before.",
            "# TYPE mxpolicyd_downgrades_total counter",
            "# HELP mxpolicyd_reloads_total Configuration reloads, by outcome.",
            "# TYPE mxpolicyd_reloads_total counter",
            "# HELP mxpolicyd_overrides_total Answers forced by an administrator's entry, "
            "by kind (postfix, exim, exempt).",
            "# TYPE mxpolicyd_overrides_total counter",
            "# HELP mxpolicyd_minimum_temps_total "
            "Domain answers turned TEMP because the evidence misses a minimum level.",
            "# TYPE mxpolicyd_minimum_temps_total counter",
            "# HELP mxpolicyd_downgrade_guard_total Downgrades met by policy.downgrade "
            "(warned, held) and policies withdrawn by their domain (withdrawn).",
            "# TYPE mxpolicyd_downgrade_guard_total counter",
            "# HELP mxpolicyd_lookups_shed_total Lookups of an uncached domain answered "
            "at once, unevaluated, because lookup.max_waiting evaluations were already waiting.",
            "# TYPE mxpolicyd_lookups_shed_total counter",
            "# HELP mxpolicyd_cache_evictions_total "
            "Cached domains without a policy evicted to stay within lookup.max_negative.",
            "# TYPE mxpolicyd_cache_evictions_total counter",
            "# HELP g_now A gauge.",
            "# TYPE g_now gauge",
        ])
        # No samples of prometheus_client's default collectors (process_*, python_*).
        self.assertEqual([line for line in lines if not line.startswith("# ")], ["g_now 7.0"])

    def test_resource(self) -> None:
        """GET /metrics serves the text format; other paths are 404."""
        metrics = Metrics()
        metrics.lookups.inc("socketmap", "ok")
        request = DummyRequest([b"metrics"])
        request.path = b"/metrics"
        body = MetricsResource(metrics).render_GET(request)
        self.assertIn(b'\nmxpolicyd_lookups_total{protocol="socketmap",result="ok"} 1.0\n', body)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"),
                         [b"text/plain; version=0.0.4; charset=utf-8"])
        other = DummyRequest([b"x"])
        other.path = b"/x"
        MetricsResource(metrics).render_GET(other)
        self.assertEqual(other.responseCode, 404)


class CountingTests(EnforceWorld):
    """The lookup paths count results, cache outcomes, latency and evaluations."""

    def test_postfix(self) -> None:
        """Socketmap lookups are counted by result, with cache hits and misses."""
        metrics = Metrics()
        responder = PostfixResponder(self.clock, self.cache, BUILTIN_PROFILES, metrics=metrics)
        responder.lookup(b"postfix", b"example.test")
        responder.lookup(b"postfix", b"example.test")
        responder.lookup(b"postfix", b"[192.0.2.1]")
        responder.lookup(b"nosuch", b"example.test")
        self.assertEqual(metrics.lookups.values, {
            ("socketmap", "ok"): 2, ("socketmap", "notfound"): 1, ("socketmap", "perm"): 1})
        self.assertEqual(metrics.cache.values, {("miss",): 1, ("hit",): 1})
        self.assertEqual(sum(metrics.latency.counts[("socketmap",)]), 4)
        text = metrics.render()
        self.assertNotIn(b"example.test", text)

    def test_exim(self) -> None:
        """Exim lookups are counted by action."""
        metrics = Metrics()
        responder = EximResponder(self.cache, metrics)
        responder.lookup(b"example.test")
        responder.lookup(b"[192.0.2.1]")
        self.assertEqual(metrics.lookups.values, {("exim", "sts-enforce"): 1, ("exim", "none"): 1})

    def test_evaluations_and_failures(self) -> None:
        """Evaluations are counted, and failures by kind."""
        metrics = Metrics()
        cache = PolicyCache(self.clock, Evaluator(StsEvaluator(self.clock, self.resolver,
                                                               self.fetcher)), metrics=metrics)
        self.resolver.fail("_mta-sts.dead.test")
        cache.lookup("example.test")
        cache.lookup("dead.test")
        self.assertEqual(metrics.evaluations.values, {(): 2})
        self.assertEqual(metrics.failures.values, {("mta_sts_dns",): 1})


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "m.toml")
        self.write("[profiles.extra]\nstrict_testing = true\n")
        config = load(self.path)
        reactor = MemoryReactorClock()
        cache = PolicyCache(reactor, build_evaluator(config, reactor))
        metrics = Metrics()
        self.daemon = Daemon(
            MultiService(), cache, None,  # type: ignore[arg-type]
            PostfixResponder(reactor, cache, config.profiles, metrics=metrics),
            None, metrics, config, reactor,
        )

    def write(self, extra: str) -> None:
        with open(self.path, "w") as f:
            f.write('[daemon]\nstate_directory = "%s"\n[dns]\nnameservers = ["127.0.0.1"]\n%s'
                    % (self.dir, extra))

    def test_good_reload(self) -> None:
        """A valid file is applied: new map names answer, removed ones get PERM."""
        self.assertEqual(self.daemon.responder.lookup(b"extra", b"[x]"), b"NOTFOUND ")
        self.write("[profiles.other]\n")
        self.assertTrue(self.daemon.reload(self.path))
        self.assertEqual(self.daemon.responder.lookup(b"other", b"[x]"), b"NOTFOUND ")
        reply = self.daemon.responder.lookup(b"extra", b"[x]")
        assert isinstance(reply, bytes)
        self.assertTrue(reply.startswith(b"PERM"))
        self.assertEqual(self.daemon.metrics.reloads.values, {("applied",): 1})

    def test_bad_reload(self) -> None:
        """A bad file is refused, the key named in the log, and the old config kept."""
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.write('[lookup]\ndeadline = "soon"\n')
        self.assertFalse(self.daemon.reload(self.path))
        self.assertEqual(self.daemon.responder.lookup(b"extra", b"[x]"), b"NOTFOUND ")
        self.assertEqual(self.daemon.metrics.reloads.values, {("failed",): 1})
        errors = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("lookup.deadline must be a number", errors[0])
