"""Prometheus metrics of the gateway, in a registry of its own, served at ``/metrics``.

With ``--workers N`` every worker records into prometheus_client's multiprocess files and
``/metrics`` adds them up (keystile/multiprocess_metrics.py). The figures the gateway reads
at scrape time in one process (fast-path answers, the SDK's cache and event stream) are
published into those files by each worker instead, every ``PUBLISH_INTERVAL`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from keystile import multiprocess_metrics

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from keystile.resource.introspector import TokenValidator

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_UPSTREAM = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PUBLISH_INTERVAL = 1.0  # seconds: how stale another worker's scrape-time figures may be

_APPLIED = (
    "keystile_gateway_events_applied",
    "Revocation events applied to the cache (token_revoked, client_disabled, reset...).",
)
_CONNECTED = (
    "keystile_gateway_event_stream_connected",
    "1 while the revocation event stream is live, 0 otherwise (-1: events off).",
)
_EVICTIONS = ("keystile_gateway_cache_evictions", "Cache entries dropped by revocation events.")
_ENTRIES = ("keystile_gateway_cache_entries", "Entries in the cache.")
_FAST_ANSWERS = (
    "keystile_gateway_fast_answers",
    "Requests the fast path answered without ASGI, by mode (proxy or forward_auth).",
)


def _validator_figures(v: TokenValidator) -> tuple[float, float, float, float]:
    """Events applied, stream state (1 live, 0 not, -1 events off), evictions, entries."""
    # 0 also before the first connection (the AS not reachable yet): events are on.
    state = -1.0 if not v.events_enabled else float(bool(v.cache.stream_connected))
    applied = float(getattr(v.stream, "applied", 0))
    return applied, state, float(v.cache.evictions), float(len(v.cache))


class _ValidatorCollector(Collector):
    """Figures the SDK keeps itself, read at scrape time (no cost per request)."""

    def __init__(self, validator: TokenValidator) -> None:
        self.validator = validator

    def collect(self) -> Iterator[Metric]:
        applied, state, evictions, entries = _validator_figures(self.validator)
        applied_family = CounterMetricFamily(*_APPLIED)
        applied_family.add_metric([], applied)
        yield applied_family
        connected = GaugeMetricFamily(*_CONNECTED)
        connected.add_metric([], state)
        yield connected
        evictions_family = CounterMetricFamily(*_EVICTIONS)
        evictions_family.add_metric([], evictions)
        yield evictions_family
        entries_family = GaugeMetricFamily(*_ENTRIES)
        entries_family.add_metric([], entries)
        yield entries_family


class _FastCollector(Collector):
    """How many requests the fast path answered, kept as plain ints (no lock per request)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        fast = CounterMetricFamily(*_FAST_ANSWERS, labels=["mode"])
        fast.add_metric(["proxy"], float(self.metrics.fast_proxy))
        fast.add_metric(["forward_auth"], float(self.metrics.fast_forward_auth))
        yield fast


class _Published:
    """With --workers: this worker's scrape-time figures, copied into multiprocess metrics
    that /metrics adds up over the workers. Counters grow by what changed since the last
    copy; cache entries are summed over the live workers, and the event stream counts as
    connected only while every live worker's stream is (the minimum)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.validator: TokenValidator | None = None
        # Not in the gateway's registry: their values live in the multiprocess files.
        self.fast = Counter(*_FAST_ANSWERS, ["mode"], registry=None)
        self.fast_proxy = self.fast.labels("proxy")
        self.fast_forward_auth = self.fast.labels("forward_auth")
        self.applied = Counter(*_APPLIED, registry=None)
        self.evictions = Counter(*_EVICTIONS, registry=None)
        self.entries = Gauge(*_ENTRIES, registry=None, multiprocess_mode="livesum")
        self.connected = Gauge(*_CONNECTED, registry=None, multiprocess_mode="livemin")
        self._last: dict[str, float] = {}

    def _advance(self, counter: Counter, key: str, now: float) -> None:
        delta = now - self._last.get(key, 0.0)
        if delta < 0:  # the source started over (a new event stream object): count it all
            delta = now
        if delta:
            counter.inc(delta)
        self._last[key] = now

    def publish(self) -> None:
        m = self.metrics
        self._advance(self.fast_proxy, "fast_proxy", float(m.fast_proxy))
        self._advance(self.fast_forward_auth, "fast_forward_auth", float(m.fast_forward_auth))
        if self.validator is not None:
            applied, state, evictions, entries = _validator_figures(self.validator)
            self._advance(self.applied, "applied", applied)
            self._advance(self.evictions, "evictions", evictions)
            self.entries.set(entries)
            self.connected.set(state)


class GatewayMetrics:
    """The metrics one gateway records."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "keystile_gateway_requests",
            "Requests by route, mode (proxy or forward_auth) and outcome.",
            ["route", "mode", "outcome"],
            registry=self.registry,
        )
        self.cache = Counter(
            "keystile_gateway_cache_lookups",
            "Token cache lookups: hit, miss, or negative (a cached 'inactive').",
            ["result"],
            registry=self.registry,
        )
        self.introspection = Histogram(
            "keystile_gateway_introspection_duration_seconds",
            "Time to get an answer from the authorization server (cache misses and realtime).",
            ["kind"],
            buckets=_FAST,
            registry=self.registry,
        )
        self.upstream = Histogram(
            "keystile_gateway_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, by route.",
            ["route"],
            buckets=_UPSTREAM,
            registry=self.registry,
        )
        self.cache_hit = self.cache.labels("hit")
        self.cache_miss = self.cache.labels("miss")
        self.cache_negative = self.cache.labels("negative")
        self.introspect_miss = self.introspection.labels("miss")
        self.introspect_realtime = self.introspection.labels("realtime")
        self._requests: dict[tuple[str, str, str], Counter] = {}
        self._upstream: dict[str, Histogram] = {}
        self.fast_proxy = 0  # fast-path answers (gateway/fastpath.py)
        self.fast_forward_auth = 0
        self.registry.register(_FastCollector(self))
        self._published = _Published(self) if multiprocess_metrics.enabled() else None
        self._publishing: asyncio.Task[None] | None = None

    def watch(self, validator: TokenValidator) -> None:
        self.registry.register(_ValidatorCollector(validator))
        if self._published is not None:
            self._published.validator = validator

    def start(self) -> None:
        """With --workers: publish this worker's scrape-time figures now and every
        ``PUBLISH_INTERVAL`` seconds (called on the running loop, at startup)."""
        if self._published is not None and self._publishing is None:
            self._published.publish()
            self._publishing = asyncio.create_task(
                self._publish_every(self._published), name="keystile-gateway-metrics"
            )

    async def _publish_every(self, published: _Published) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL)
            published.publish()

    async def stop(self) -> None:
        """At shutdown: a last publication, so the counters hold all this worker counted,
        then its live gauges leave the sum and the minimum."""
        if self._publishing is not None:
            self._publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publishing
            self._publishing = None
        if self._published is not None:
            self._published.publish()
            multiprocess_metrics.process_ended()

    def request(self, route: str, mode: str, outcome: str) -> None:
        key = (route, mode, outcome)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(route, mode, outcome)
        child.inc()

    def upstream_time(self, route: str, seconds: float) -> None:
        child = self._upstream.get(route)
        if child is None:
            child = self._upstream[route] = self.upstream.labels(route)
        child.observe(seconds)

    def render(self) -> bytes:
        if self._published is not None:
            self._published.publish()  # this worker's figures as of now; the others' ≤ 1 s old
        return multiprocess_metrics.render(self.registry)
