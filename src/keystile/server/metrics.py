"""Prometheus metrics of the authorization server, served at ``/metrics``.

With several worker processes, set by ``keystile serve --workers N``, prometheus_client's
multiprocess mode aggregates the workers' figures (keystile/multiprocess_metrics.py).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from keystile import multiprocess_metrics

ENDPOINTS = ("token", "introspect", "revoke")
DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class ServerMetrics:
    """The metrics one app instance records. Each instance has its own registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "keystile_requests",
            "OAuth endpoint requests by endpoint and outcome (ok or the OAuth error code).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keystile_request_duration_seconds",
            "Time to answer an OAuth endpoint request.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.introspections = Counter(
            "keystile_introspections",
            "Introspection answers by result.",
            ["result"],
            registry=self.registry,
        )
        self.tokens_issued = Counter(
            "keystile_tokens_issued",
            "Access tokens issued.",
            ["grant_type"],
            registry=self.registry,
        )
        self.metadata_documents = Counter(
            "keystile_client_metadata_documents",
            "Client ID metadata document fetches by result (ok or refused).",
            ["result"],
            registry=self.registry,
        )
        for result in ("ok", "refused"):
            self.metadata_documents.labels(result)  # exposed at 0 before the first fetch
        self.revocations = Counter(
            "keystile_revocations",
            "Tokens revoked through the revocation endpoint.",
            registry=self.registry,
        )
        self.fast_answers = Counter(
            "keystile_introspection_fast_answers",
            "Introspection requests answered by the fast path, without ASGI (a share of"
            " keystile_requests_total{endpoint=introspect,outcome=ok}).",
            registry=self.registry,
        )
        self.replays = Counter(
            "keystile_replays_detected",
            "Authorization codes or refresh tokens presented again; each revoked its grant.",
            ["kind"],
            registry=self.registry,
        )
        self.shed = Counter(
            "keystile_requests_shed",
            "Requests answered 503 + Retry-After because max_in_flight requests were in "
            "progress in this process.",
            registry=self.registry,
        )
        # With --workers, each worker keeps its count in the shared files (summed over the
        # running workers); alone, the count is read at scrape time (no cost per request).
        self.shared_in_flight = multiprocess_metrics.enabled()
        self.in_flight = Gauge(
            "keystile_requests_in_flight",
            "Requests in progress, as max_in_flight counts them (with --workers: summed over "
            "the running workers).",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.event_delivery = Histogram(
            "keystile_event_delivery_seconds",
            "Time from an event's write (commit) to the first event stream of this process "
            "that sent it, measured once per event and process.",
            buckets=DELIVERY_BUCKETS,
            registry=self.registry,
        )
        # Children resolved once: labels() takes a lock and a dict lookup per call.
        self.ok = {e: self.requests.labels(e, "ok") for e in ENDPOINTS}
        self.timer = {e: self.latency.labels(e) for e in ENDPOINTS}
        self.active = self.introspections.labels("active")
        self.inactive = self.introspections.labels("inactive")

    def render(self) -> bytes:
        return multiprocess_metrics.render(self.registry)
