"""The console's live dashboard (docs/admin.md): the counters of this process, sampled
each time the page is drawn, plus those every other live process published
(server/instance_stats.py), as rates over the last samples.

No Prometheus needed: this process's figures are read from the app's registry; the
others' from the store, where each process publishes its own every few seconds.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from keystile.server.instance_stats import (
    DELIVERY,
    InstanceStatsBoard,
    add_up,
    instance_view,
    merge,
    quantile,
    subtract,
)
from keystile.server.metrics import ENDPOINTS

SAMPLES = 60  # points kept per chart
CHART_WIDTH = 600
CHART_HEIGHT = 80

# Counters charted as per-second rates: (key in instance_stats.COUNTERS, label).
_RATES: tuple[tuple[str, str], ...] = (
    ("active", "Introspections: active"),
    ("inactive", "Introspections: inactive"),
    ("issued", "Tokens issued"),
    ("revoked", "Revocations"),
    ("throttled", "Throttled requests (429)"),
)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    totals: dict[str, float]  # this process's counters
    others: dict[str, float]  # the other processes' rates, as they last published them
    delivery: list[tuple[str, float]]  # this process's delivery histogram (cumulative)
    others_delivery: list[tuple[str, float]]  # the others' deliveries in their last interval


class Dashboard:
    """Samples the counters of this process (and reads the others') for the charts."""

    def __init__(
        self, board: InstanceStatsBoard, *, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.board = board
        self.now = now
        self.samples: deque[Sample] = deque(maxlen=SAMPLES + 1)

    async def view(self) -> dict[str, Any]:
        """Take a sample now; everything the dashboard page shows."""
        own = await self.board.snapshot()
        others = await self.board.others()
        others_rates = {key: sum(o.rates.get(key, 0.0) for o in others) for key, _ in _RATES}
        others_delivery = merge(*(o.recent_delivery for o in others))
        self.samples.append(
            Sample(
                self.now(), own.totals, others_rates, own.buckets.get(DELIVERY, []),
                others_delivery,
            )
        )  # fmt: skip
        points = list(self.samples)
        fleet = add_up([own, *others])
        charts = []
        for key, label in _RATES:
            rates = []
            for before, after in itertools.pairwise(points):
                span = max(after.at - before.at, 1e-6)
                mine = max(after.totals[key] - before.totals[key], 0.0) / span
                rates.append(mine + after.others[key])
            charts.append(_chart(key, label, rates, fleet["totals"][key]))
        charts.append(_delivery_chart(points, fleet[DELIVERY]))
        latency = [
            {
                "endpoint": endpoint,
                "p50": _ms(fleet["latency"][endpoint]["p50_ms"]),
                "p99": _ms(fleet["latency"][endpoint]["p99_ms"]),
            }
            for endpoint in ENDPOINTS
        ]
        return {
            "charts": charts,
            "latency": latency,
            "in_flight": fleet["in_flight"],
            "shed": fleet["totals"]["shed"],
            "subscribers": fleet["subscribers"],
            "lag": fleet["lag"],
            "samples": len(points),
            "shared": self.board.shared,
            "instances": [
                instance_view(own, own=True),
                *(instance_view(o, own=False) for o in others),
            ],
        }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"≤ {value:g} ms"


def _delivery_chart(points: list[Sample], since_start: dict[str, Any]) -> dict[str, Any]:
    """How fast revocations reach the event streams: per page load, the p99 of the delay
    from each event's commit to its first send (ms), over the events sent in between."""
    values = []
    for before, after in itertools.pairwise(points):
        gained = merge(subtract(after.delivery, before.delivery), after.others_delivery)
        values.append(quantile(gained, 0.99) or 0.0)
    chart = _chart(
        "delivery",
        "Revocation events: commit to sent, p99",
        values,
        since_start["count"],
        unit=" ms",
        total_label="events sent since start",
    )
    chart["p99"] = _ms(since_start["p99_ms"])
    return chart


def _chart(
    key: str,
    label: str,
    rates: list[float],
    total: float,
    *,
    unit: str = "/s",
    total_label: str = "since start",
) -> dict[str, Any]:
    """Bars for an inline SVG (attributes only: the page's CSP allows no inline style)."""
    peak = max(rates, default=0.0)
    width = CHART_WIDTH / SAMPLES
    bars = []
    offset = SAMPLES - len(rates)
    for i, rate in enumerate(rates):
        height = 0.0 if peak == 0 else CHART_HEIGHT * rate / peak
        bars.append(
            {
                "x": round((offset + i) * width, 1),
                "y": round(CHART_HEIGHT - height, 1),
                "w": round(width - 1, 1),
                "h": round(height, 1),
            }
        )
    return {
        "key": key,
        "label": label,
        "now": f"{rates[-1]:.1f}" if rates else "-",
        "peak": f"{peak:.1f}",
        "total": int(total),
        "unit": unit,
        "total_label": total_label,
        "bars": bars,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
    }
