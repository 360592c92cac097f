"""The dashboard's counters of every AS process (docs/admin.md): each process publishes its
own into the store every ``stats_interval`` seconds, off the request path, and the console
and ``GET /admin/v1/stats`` add up the processes heard of lately.

On PostgreSQL that is every instance on the database; on SQLite, every worker of
``keystile serve --workers N`` on the file. A process not heard of for three intervals is
gone: its row is ignored, and deleted by the next process that publishes. A process that
stops cleanly deletes its row at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from keystile.clock import Clock
from keystile.errors import KeystileError
from keystile.server.metrics import ENDPOINTS, ServerMetrics
from keystile.store.base import Store

log = logging.getLogger("keystile.server")

# Counters added up across processes: (key, metric sample, labels it must carry).
COUNTERS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("active", "keystile_introspections_total", {"result": "active"}),
    ("inactive", "keystile_introspections_total", {"result": "inactive"}),
    ("issued", "keystile_tokens_issued_total", {}),
    ("revoked", "keystile_revocations_total", {}),
    ("throttled", "keystile_requests_total", {"outcome": "too_many_requests"}),
    ("shed", "keystile_requests_shed_total", {}),
)
_KEYS = tuple(key for key, _, _ in COUNTERS)
_BUCKET = "keystile_request_duration_seconds_bucket"
_DELIVERY_BUCKET = "keystile_event_delivery_seconds_bucket"
DELIVERY = "event_delivery"  # its key among the buckets: commit to first send of an event
_IN_FLIGHT = "keystile_requests_in_flight"


def stale_after(interval: float) -> int:
    """Seconds after which a process's row is ignored: three intervals (at least 2, as
    rows are stamped in whole seconds)."""
    return max(2, math.ceil(3 * interval))


@dataclass(slots=True)
class InstanceStats:
    """One process's counters at one moment; ``rates`` are per second over its last
    publishing interval (empty before its second publication)."""

    instance_id: str
    host: str
    pid: int
    started_at: int
    updated_at: int
    totals: dict[str, float]
    # endpoint -> [(upper bound as Prometheus writes it, cumulative count), ...]
    buckets: dict[str, list[tuple[str, float]]]
    in_flight: int
    subscribers: int
    lag: int
    rates: dict[str, float] = field(default_factory=dict)
    # Event deliveries in its last publishing interval, by bucket (not cumulative over time).
    recent_delivery: list[tuple[str, float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "started_at": self.started_at,
                "totals": self.totals,
                "buckets": {e: [list(b) for b in bs] for e, bs in self.buckets.items()},
                "in_flight": self.in_flight,
                "subscribers": self.subscribers,
                "lag": self.lag,
                "rates": self.rates,
                "recent_delivery": [list(b) for b in self.recent_delivery],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_row(cls, instance_id: str, updated_at: int, raw: str) -> InstanceStats | None:
        """A row another process wrote; None if it cannot be read (another release)."""
        try:
            data = json.loads(raw)
            return cls(
                instance_id=instance_id,
                host=str(data["host"]),
                pid=int(data["pid"]),
                started_at=int(data["started_at"]),
                updated_at=updated_at,
                # Every counter present (a row of another release may lack one, or have more).
                totals={key: float(data["totals"].get(key, 0)) for key in _KEYS},
                buckets={
                    str(e): [(str(le), float(n)) for le, n in bs]
                    for e, bs in data["buckets"].items()
                },
                in_flight=int(data["in_flight"]),
                subscribers=int(data["subscribers"]),
                lag=int(data["lag"]),
                rates={key: float(data["rates"].get(key, 0)) for key in _KEYS}
                if data.get("rates")
                else {},
                recent_delivery=[(str(le), float(n)) for le, n in data.get("recent_delivery", [])],
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def read_counters(
    metrics: ServerMetrics,
) -> tuple[dict[str, float], dict[str, list[tuple[str, float]]], int]:
    """This process's counter totals, latency buckets and requests in progress, from its
    own registry (with --workers, each worker's own figures)."""
    totals = dict.fromkeys((key for key, _, _ in COUNTERS), 0.0)
    buckets: dict[str, list[tuple[str, float]]] = {}
    in_flight = 0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == _IN_FLIGHT:
                in_flight = int(s.value)
                continue
            if s.name == _BUCKET:
                buckets.setdefault(s.labels["endpoint"], []).append((s.labels["le"], s.value))
                continue
            if s.name == _DELIVERY_BUCKET:
                buckets.setdefault(DELIVERY, []).append((s.labels["le"], s.value))
                continue
            for key, name, labels in COUNTERS:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    totals[key] += s.value
    for bs in buckets.values():
        bs.sort(key=lambda b: float(b[0]))
    return totals, buckets, in_flight


def quantile(buckets: list[tuple[str, float]], q: float) -> float | None:
    """The ``q`` quantile in milliseconds: the upper bound of the bucket it falls in."""
    ordered = sorted((float(le), n) for le, n in buckets)
    if not ordered or ordered[-1][1] == 0:
        return None
    target = q * ordered[-1][1]
    for bound, count in ordered:
        if count >= target:
            return bound * 1000
    return None


def subtract(
    after: list[tuple[str, float]], before: list[tuple[str, float]]
) -> list[tuple[str, float]]:
    """Bucket counts gained between two cumulative readings of one histogram."""
    earlier = dict(before)
    return [(le, max(n - earlier.get(le, 0.0), 0.0)) for le, n in after]


def merge(*readings: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Bucket counts of several processes added up (same bounds everywhere)."""
    into: dict[str, float] = {}
    for reading in readings:
        for le, n in reading:
            into[le] = into.get(le, 0.0) + n
    return list(into.items())


def delivery_view(buckets: list[tuple[str, float]]) -> dict[str, Any]:
    """Events delivered, and the p50/p99 of their delay from commit to first send (ms)."""
    count = max((n for le, n in buckets if le == "+Inf"), default=0.0)
    return {
        "count": int(count),
        "p50_ms": quantile(buckets, 0.5),
        "p99_ms": quantile(buckets, 0.99),
    }


def add_up(instances: list[InstanceStats]) -> dict[str, Any]:
    """The fleet's figures: counters, rates, subscribers and requests in progress added
    up; latency quantiles from the added-up buckets; the lag of the process furthest
    behind (each process streams the same log)."""
    totals = dict.fromkeys((key for key, _, _ in COUNTERS), 0.0)
    rates = dict.fromkeys((key for key, _, _ in COUNTERS), 0.0)
    merged: dict[str, dict[str, float]] = {}
    for inst in instances:
        for key in totals:
            totals[key] += inst.totals.get(key, 0.0)
            rates[key] += inst.rates.get(key, 0.0)
        for endpoint, bs in inst.buckets.items():
            into = merged.setdefault(endpoint, {})
            for le, n in bs:
                into[le] = into.get(le, 0.0) + n
    latency = {}
    for endpoint in ENDPOINTS:
        bs = list(merged.get(endpoint, {}).items())
        latency[endpoint] = {"p50_ms": quantile(bs, 0.5), "p99_ms": quantile(bs, 0.99)}
    return {
        "instances": len(instances),
        "totals": {k: int(v) for k, v in totals.items()},
        "rates": {k: round(v, 3) for k, v in rates.items()},
        "latency": latency,
        "in_flight": sum(i.in_flight for i in instances),
        "subscribers": sum(i.subscribers for i in instances),
        "lag": max((i.lag for i in instances), default=0),
        DELIVERY: delivery_view(list(merged.get(DELIVERY, {}).items())),
        "recent_delivery": delivery_view(merge(*(i.recent_delivery for i in instances))),
    }


def instance_view(inst: InstanceStats, *, own: bool) -> dict[str, Any]:
    """One process's row, as GET /admin/v1/stats and the dashboard show it."""
    return {
        "instance_id": inst.instance_id,
        "host": inst.host,
        "pid": inst.pid,
        "this_process": own,
        "started_at": inst.started_at,
        "updated_at": inst.updated_at,
        "totals": {k: int(v) for k, v in inst.totals.items()},
        "rates": {k: round(v, 3) for k, v in inst.rates.items()},
        "latency": {
            endpoint: {
                "p50_ms": quantile(inst.buckets.get(endpoint, []), 0.5),
                "p99_ms": quantile(inst.buckets.get(endpoint, []), 0.99),
            }
            for endpoint in ENDPOINTS
        },
        "in_flight": inst.in_flight,
        "subscribers": inst.subscribers,
        "lag": inst.lag,
        DELIVERY: delivery_view(inst.buckets.get(DELIVERY, [])),
    }


class InstanceStatsBoard:
    """This process's side: takes its snapshots, publishes them, reads the others'."""

    def __init__(
        self,
        metrics: ServerMetrics,
        store: Store,
        clock: Clock,
        *,
        subscribers: Callable[[], int],
        lag: Callable[[], Awaitable[int]],
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.clock = clock
        self.subscribers = subscribers
        self.lag = lag
        self.interval = interval
        self.monotonic = monotonic
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # The pid alone could come back after a restart; the random part never does.
        self.instance_id = f"{self.host}:{self.pid}:{secrets.token_hex(4)}"
        self.started_at = clock.now()
        self.rates: dict[str, float] = {}
        self.recent_delivery: list[tuple[str, float]] = []
        self._last: tuple[float, dict[str, float], list[tuple[str, float]]] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        """Whether processes publish (stats_interval > 0), so the others can be read."""
        return self.interval > 0

    async def snapshot(self) -> InstanceStats:
        """This process now, with the rates of its last publishing interval."""
        totals, buckets, in_flight = read_counters(self.metrics)
        return InstanceStats(
            instance_id=self.instance_id,
            host=self.host,
            pid=self.pid,
            started_at=self.started_at,
            updated_at=self.clock.now(),
            totals=totals,
            buckets=buckets,
            in_flight=in_flight,
            subscribers=self.subscribers(),
            lag=await self.lag(),
            rates=dict(self.rates),
            recent_delivery=list(self.recent_delivery),
        )

    async def publish(self) -> None:
        """Take a snapshot, update the rates, and write it (one small write)."""
        snap = await self.snapshot()
        at = self.monotonic()
        delivery = snap.buckets.get(DELIVERY, [])
        if self._last is not None:
            span = max(at - self._last[0], 1e-6)
            self.rates = {
                k: max(v - self._last[1].get(k, 0.0), 0.0) / span for k, v in snap.totals.items()
            }
            self.recent_delivery = subtract(delivery, self._last[2])
            snap.rates = dict(self.rates)
            snap.recent_delivery = list(self.recent_delivery)
        self._last = (at, snap.totals, delivery)
        now = snap.updated_at
        await self.store.publish_stats(
            self.instance_id, now, snap.to_json(), now - stale_after(self.interval)
        )

    async def others(self) -> list[InstanceStats]:
        """The other processes heard of within the staleness bound."""
        if not self.shared:
            return []
        since = self.clock.now() - stale_after(self.interval)
        found = []
        for instance_id, updated_at, raw in await self.store.live_stats(since):
            if instance_id == self.instance_id:
                continue
            inst = InstanceStats.from_row(instance_id, updated_at, raw)
            if inst is not None:
                found.append(inst)
        return found

    async def view(self) -> dict[str, Any]:
        """GET /admin/v1/stats: the fleet added up, and each process."""
        own = await self.snapshot()
        others = await self.others()
        return {
            "instance_id": self.instance_id,
            "stale_after": stale_after(self.interval) if self.shared else None,
            "total": add_up([own, *others]),
            "instances": [
                instance_view(own, own=True),
                *(instance_view(o, own=False) for o in others),
            ],
        }

    # -- the background task ------------------------------------------------------------

    async def start(self) -> None:
        if self.shared and self._task is None:
            self._task = asyncio.create_task(self._run(), name="keystile-instance-stats")

    async def _run(self) -> None:
        while True:
            try:
                await self.publish()
            except Exception as exc:  # e.g. the store is down: try again next time
                log.warning("instance stats not published", extra={"error": str(exc)})
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is None:
            return
        task, self._task = self._task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Gone at once from every dashboard, rather than after the staleness bound.
        with contextlib.suppress(KeystileError):
            await self.store.drop_stats(self.instance_id)
