"""
Metrics: counters and a latency histogram, served in Prometheus's text
format on their own listener.

The lookup path only increments integers in dicts; the text is rendered when
Prometheus scrapes.  Labels are bounded sets (protocol, result, kind): never
a domain name, which would make a series per destination.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable

from twisted.web.resource import Resource
from twisted.web.server import Request

# Seconds: the cached path is microseconds, a first evaluation up to the
# lookup deadline.
BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0)


class Counter:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, by: float = 1) -> None:
        self.values[label_values] = self.values.get(label_values, 0) + by

    def render(self) -> Iterable[str]:
        yield "# HELP %s %s" % (self.name, self.help)
        yield "# TYPE %s counter" % (self.name,)
        for values, count in sorted(self.values.items()):
            yield "%s%s %s" % (self.name, _labels(self.labels, values), _number(count))


class Gauge:
    """A value read at scrape time from the object that owns it."""

    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name = name
        self.help = help
        self.read = read

    def render(self) -> Iterable[str]:
        yield "# HELP %s %s" % (self.name, self.help)
        yield "# TYPE %s gauge" % (self.name,)
        yield "%s %s" % (self.name, _number(self.read()))


class Histogram:
    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (),
                 buckets: tuple[float, ...] = BUCKETS) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.buckets = buckets
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

    def render(self) -> Iterable[str]:
        yield "# HELP %s %s" % (self.name, self.help)
        yield "# TYPE %s histogram" % (self.name,)
        for values, counts in sorted(self.counts.items()):
            total = 0
            for bound, count in zip(self.buckets + (float("inf"),), counts):
                total += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                yield "%s_bucket%s %d" % (
                    self.name, _labels(self.labels + ("le",), values + (le,)), total)
            yield "%s_sum%s %s" % (self.name, _labels(self.labels, values),
                                   _number(self.sums[values]))
            yield "%s_count%s %d" % (self.name, _labels(self.labels, values), total)


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{%s}" % ",".join(
        '%s="%s"' % (n, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for n, v in zip(names, values)
    )


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return "%d" % value
    return repr(float(value))


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

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.gauges.append(Gauge(name, help, read))

    def render(self) -> bytes:
        lines: list[str] = []
        metrics: list[Counter | Histogram | Gauge] = [
            self.lookups, self.latency, self.cache, self.evaluations,
            self.failures, self.downgrades, self.reloads,
            self.overrides, self.minimums, self.guard, self.shed, self.evictions,
            *self.gauges,
        ]
        for metric in metrics:
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode("utf-8")


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
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self._metrics.render()
