"""Prometheus metrics of the gateway, in a registry of its own, served at ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from keystile.resource.introspector import TokenValidator

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_UPSTREAM = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _ValidatorCollector(Collector):
    """Figures the SDK keeps itself, read at scrape time (no cost per request)."""

    def __init__(self, validator: TokenValidator) -> None:
        self.validator = validator

    def collect(self) -> Iterator[Metric]:
        v = self.validator
        stream = v.stream
        applied = CounterMetricFamily(
            "keystile_gateway_events_applied",
            "Revocation events applied to the cache (token_revoked, client_disabled, reset...).",
        )
        applied.add_metric([], float(getattr(stream, "applied", 0)))
        yield applied
        connected = GaugeMetricFamily(
            "keystile_gateway_event_stream_connected",
            "1 while the revocation event stream is live, 0 otherwise (-1: events off).",
        )
        # 0 also before the first connection (the AS not reachable yet): events are on.
        state = -1.0 if not v.events_enabled else float(bool(v.cache.stream_connected))
        connected.add_metric([], state)
        yield connected
        evictions = CounterMetricFamily(
            "keystile_gateway_cache_evictions", "Cache entries dropped by revocation events."
        )
        evictions.add_metric([], float(v.cache.evictions))
        yield evictions
        entries = GaugeMetricFamily("keystile_gateway_cache_entries", "Entries in the cache.")
        entries.add_metric([], float(len(v.cache)))
        yield entries


class _FastCollector(Collector):
    """How many requests the fast path answered, kept as plain ints (no lock per request)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        fast = CounterMetricFamily(
            "keystile_gateway_fast_answers",
            "Requests the fast path answered without ASGI, by mode (proxy or forward_auth).",
            labels=["mode"],
        )
        fast.add_metric(["proxy"], float(self.metrics.fast_proxy))
        fast.add_metric(["forward_auth"], float(self.metrics.fast_forward_auth))
        yield fast


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

    def watch(self, validator: TokenValidator) -> None:
        self.registry.register(_ValidatorCollector(validator))

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
        return generate_latest(self.registry)
