"""
Metrics: counters and a latency histogram, served in Prometheus's text
format on their own listener.

The lookup path only increments integers in dicts; prometheus_client writes
the text when Prometheus scrapes, from metric families that L{Metrics}, a
custom collector, builds out of those dicts there and then.  Its own Counter
and Histogram would take a lock on every increment of every lookup.  Labels
are bounded sets (protocol, result, kind): never a domain name, which would
make a series per destination.
"""

from __future__ import annotations

import bisect
from itertools import accumulate
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from twisted.web.resource import Resource
from twisted.web.server import Request

# Seconds: the cached path is microseconds, a first evaluation up to the
# lookup deadline.
BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0)

# What prometheus_client serves a scraper that asks for no format in
# particular: the text format 0.0.4, and its content type.  Its constant
# CONTENT_TYPE_LATEST says version 0.0.4 in 0.16 but 1.0.0 in 0.26, for the
# same text; and OpenMetrics, which Prometheus would negotiate, is not
# offered, so that a scrape reads as it did before prometheus_client.
_encode, CONTENT_TYPE = choose_encoder("")


class Counter:
    """A counter's values by label set, for the lookup path to increment."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, by: float = 1) -> None:
        self.values[label_values] = self.values.get(label_values, 0) + by

    def family(self) -> Metric:
        """The samples as they are now, for one scrape."""
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for values, count in sorted(self.values.items()):
            family.add_metric(values, count)
        return family


class Gauge:
    """A value read at scrape time from the object that owns it."""

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name = name
        self.help = help
        self.read = read

    def family(self) -> Metric:
        return GaugeMetricFamily(self.name, self.help, value=self.read())


class Histogram:
    """Counts per bucket by label set, for the lookup path to increment."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = BUCKETS) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.buckets = buckets
        # The le values written before prometheus_client (le="1", not its
        # "1.0"): a series keeps its name across the upgrade.
        self._bounds = tuple(_le(bound) for bound in buckets) + ("+Inf",)
        # Per label set: a count per bucket (plus +Inf), and the sum.
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}

    def observe(self, seconds: float, *label_values: str) -> None:
        counts = self.counts.get(label_values)
        if counts is None:
            counts = self.counts[label_values] = [0] * (len(self.buckets) + 1)
            self.sums[label_values] = 0.0
        counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.sums[label_values] += seconds

    def family(self) -> Metric:
        """Cumulative buckets, sum and count as they are now, for one scrape."""
        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for values, counts in sorted(self.counts.items()):
            family.add_metric(values, list(zip(self._bounds, accumulate(counts))),
                              self.sums[values])
        return family


def _le(bound: float) -> str:
    if bound == int(bound):
        return "%d" % bound
    return repr(float(bound))


class Metrics:
    """Every metric the daemon exports; the parts increment them."""

    def __init__(self) -> None:
        self.lookups = Counter(
            "mxpolicyd_lookups_total", "Lookups answered, by protocol and result.",
            ("protocol", "result"))
        self.latency = Histogram(
            "mxpolicyd_lookup_seconds", "Time from request to answer, by protocol.",
            ("protocol",))
        self.cache = Counter(
            "mxpolicyd_cache_lookups_total",
            "Lookups of a domain answered from memory (hit) or not (miss).", ("outcome",))
        self.evaluations = Counter(
            "mxpolicyd_evaluations_total", "Domain evaluations finished.")
        self.failures = Counter(
            "mxpolicyd_evaluation_failures_total",
            "Evaluations that recorded a failure, by kind.", ("kind",))
        self.downgrades = Counter(
            "mxpolicyd_downgrades_total",
            "Re-evaluations whose verdict was weaker than before.")
        self.reloads = Counter(
            "mxpolicyd_reloads_total", "Configuration reloads, by outcome.", ("outcome",))
        # The administrator's policy: overrides are counted per answer;
        # minimums and the downgrade guard when a domain's answer comes to
        # be decided by them.
        self.overrides = Counter(
            "mxpolicyd_overrides_total",
            "Answers forced by an administrator's entry, by kind "
            "(postfix, exim, exempt).", ("kind",))
        self.minimums = Counter(
            "mxpolicyd_minimum_temps_total",
            "Domain answers turned TEMP because the evidence misses a minimum level.")
        self.guard = Counter(
            "mxpolicyd_downgrade_guard_total",
            "Downgrades met by policy.downgrade (warned, held) and policies "
            "withdrawn by their domain (withdrawn).", ("outcome",))
        # The cache's bounds (lookup.max_waiting, lookup.max_negative).
        self.shed = Counter(
            "mxpolicyd_lookups_shed_total",
            "Lookups of an uncached domain answered at once, unevaluated, because "
            "lookup.max_waiting evaluations were already waiting.")
        self.evictions = Counter(
            "mxpolicyd_cache_evictions_total",
            "Cached domains without a policy evicted to stay within lookup.max_negative.")
        self.gauges: list[Gauge] = []
        # Private: the daemon's metrics only, none of prometheus_client's
        # default process and platform collectors.
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def collect(self) -> Iterable[Metric]:
        """prometheus_client's collector protocol: every metric, read now."""
        metrics: list[Counter | Histogram | Gauge] = [
            self.lookups, self.latency, self.cache, self.evaluations,
            self.failures, self.downgrades, self.reloads,
            self.overrides, self.minimums, self.guard, self.shed, self.evictions,
            *self.gauges,
        ]
        for metric in metrics:
            yield metric.family()

    def render(self) -> bytes:
        """One scrape's text, in the format L{CONTENT_TYPE} names."""
        return _encode(self._registry)


class MetricsResource(Resource):
    """GET /metrics in Prometheus's text format, version 0.0.4."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            return b"not found: try /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        return self._metrics.render()
