"""Tests for L{mxpolicyd.ops.metrics} and the counting done on the lookup paths."""

from __future__ import annotations

import os

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


class FormatTests(SynchronousTestCase):
    def test_counter(self) -> None:
        """A counter renders HELP, TYPE and one sample per label set, escaped."""
        c = Counter("x_total", "Things.", ("kind",))
        c.inc("a")
        c.inc("a")
        c.inc('b"\\')
        self.assertEqual(list(c.render()), [
            "# HELP x_total Things.",
            "# TYPE x_total counter",
            'x_total{kind="a"} 2',
            'x_total{kind="b\\"\\\\"} 1',
        ])

    def test_histogram(self) -> None:
        """A histogram renders cumulative buckets, +Inf, sum and count."""
        h = Histogram("t_seconds", "Time.", ("p",), buckets=(0.1, 1.0))
        h.observe(0.05, "x")
        h.observe(0.5, "x")
        h.observe(5.0, "x")
        lines = list(h.render())
        self.assertIn('t_seconds_bucket{p="x",le="0.1"} 1', lines)
        self.assertIn('t_seconds_bucket{p="x",le="1"} 2', lines)
        self.assertIn('t_seconds_bucket{p="x",le="+Inf"} 3', lines)
        self.assertIn('t_seconds_sum{p="x"} 5.55', lines)
        self.assertIn('t_seconds_count{p="x"} 3', lines)

    def test_resource(self) -> None:
        """GET /metrics serves the text format; other paths are 404."""
        metrics = Metrics()
        metrics.lookups.inc("socketmap", "ok")
        request = DummyRequest([b"metrics"])
        request.path = b"/metrics"
        body = MetricsResource(metrics).render_GET(request)
        self.assertIn(b'mxpolicyd_lookups_total{protocol="socketmap",result="ok"} 1', body)
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
