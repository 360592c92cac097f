"""GET /admin/v1/stats and the dashboard add up every live AS process (docs/admin.md):
this process's counters now, the others' as they published them to the store, and a
process silent past the staleness bound is left out and purged. SQLite here; the same
checks on PostgreSQL in test_admin_postgres.py."""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path

import httpx
import pytest

from keystile.clock import FixedClock
from keystile.server.app import create_app
from keystile.server.instance_stats import InstanceStats, InstanceStatsBoard, stale_after
from keystile.server.metrics import ServerMetrics
from keystile.settings import ServerSettings
from keystile.store.base import Store
from tests.conftest import INTROSPECT, ISSUER, IssueToken, RegisterClient, Setup
from tests.server.admin_support import ADMIN, admin_tokens, bearer
from tests.server.test_admin_console import people, sign_in

__all__ = ["people"]  # a fixture, shared with the console's tests

OTHER = "other-host:4242:0badc0de"


@pytest.fixture
def settings(db_path: Path) -> ServerSettings:
    return ServerSettings(
        db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False, admin_api=True
    )


async def publish_other(store: Store, clock: FixedClock, *, active: int, inactive: int) -> None:
    """Stand in for another AS process: its row, as its publisher would write it."""
    other = InstanceStats(
        instance_id=OTHER,
        host="other-host",
        pid=4242,
        started_at=clock.now() - 60,
        updated_at=clock.now(),
        totals={"active": active, "inactive": inactive, "issued": 5, "revoked": 1},
        buckets={
            "introspect": [("0.001", 10.0), ("0.25", 20.0), ("+Inf", 20.0)],
            "event_delivery": [("0.001", 0.0), ("0.005", 3.0), ("0.05", 4.0), ("+Inf", 4.0)],
        },
        in_flight=1,
        subscribers=2,
        lag=3,
        rates={"active": 4.0, "inactive": 0.5},
        recent_delivery=[("0.001", 0.0), ("0.005", 1.0), ("0.05", 2.0), ("+Inf", 2.0)],
    )
    await store.publish_stats(OTHER, clock.now(), other.to_json(), clock.now() - 10)


async def check_stats_add_up(
    http: httpx.AsyncClient,
    register_client: RegisterClient,
    setup: Setup,
    issue_token: IssueToken,
    store: Store,
    clock: FixedClock,
    interval: float,
) -> None:
    """The shared body of the SQLite and PostgreSQL tests."""
    tokens = await admin_tokens(http, register_client)
    token = await issue_token(setup.app, scope="read")
    for _ in range(3):
        await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    await http.post(INTROSPECT, data={"token": "ks_at_unknown"}, auth=setup.rs.auth)
    await publish_other(store, clock, active=10, inactive=2)

    r = await http.get(f"{ADMIN}/stats", headers=bearer(tokens.read))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["stale_after"] == stale_after(interval)
    total = body["total"]
    assert total["instances"] == 2
    assert (total["totals"]["active"], total["totals"]["inactive"]) == (13, 3)
    assert total["rates"]["active"] == 4.0
    assert total["subscribers"] == 2
    assert total["lag"] == 3
    # 10 of the other's 20 introspections took at most 1 ms, so p99 needs its 250 ms bucket.
    assert total["latency"]["introspect"]["p99_ms"] == 250.0
    assert total["event_delivery"] == {"count": 4, "p50_ms": 5.0, "p99_ms": 50.0}
    assert total["recent_delivery"]["count"] == 2
    own, other = body["instances"]
    assert own["this_process"] is True
    assert own["instance_id"] == body["instance_id"]
    assert (own["totals"]["active"], own["totals"]["inactive"]) == (3, 1)
    assert other["instance_id"] == OTHER
    assert other["this_process"] is False
    assert (other["host"], other["pid"]) == ("other-host", 4242)

    # Silent past the bound: left out of the sum, and gone from the store.
    clock.advance(stale_after(interval) + 1)
    body = (await http.get(f"{ADMIN}/stats", headers=bearer(tokens.read))).json()
    assert body["total"]["instances"] == 1
    assert body["total"]["totals"]["active"] == 3
    assert [i["instance_id"] for i in body["instances"]] == [body["instance_id"]]
    await store.publish_stats("x", clock.now(), "{}", clock.now() - stale_after(interval))
    assert [row[0] for row in await store.live_stats(0)] == ["x"]


async def test_stats_add_up_live_instances(
    http: httpx.AsyncClient,
    register_client: RegisterClient,
    setup: Setup,
    issue_token: IssueToken,
    store: Store,
    clock: FixedClock,
    settings: ServerSettings,
) -> None:
    """The stats answer sums this process and another that published lately, shows each,
    and leaves out (then purges) a process silent past three intervals."""
    await check_stats_add_up(
        http, register_client, setup, issue_token, store, clock, settings.stats_interval
    )


async def test_stats_needs_an_admin_token_and_is_documented(
    http: httpx.AsyncClient, register_client: RegisterClient
) -> None:
    """GET /stats takes the same bearer tokens as the rest (read scope is enough) and is in
    the OpenAPI document."""
    assert (await http.get(f"{ADMIN}/stats")).status_code == 401
    tokens = await admin_tokens(http, register_client)
    document = (await http.get(f"{ADMIN}/openapi.json", headers=bearer(tokens.read))).json()
    assert document["paths"]["/stats"]["get"]["operationId"] == "getStats"
    assert "Stats" in document["components"]["schemas"]


async def test_own_process_only_when_not_publishing(
    settings: ServerSettings,
    register_client: RegisterClient,
    store: Store,
    clock: FixedClock,
) -> None:
    """With stats_interval = 0 no row is read: the answer is this process alone, and says
    so (stale_after null)."""
    app = create_app(settings.model_copy(update={"stats_interval": 0}), store=store, clock=clock)
    await publish_other(store, clock, active=10, inactive=2)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        tokens = await admin_tokens(http, register_client)
        body = (await http.get(f"{ADMIN}/stats", headers=bearer(tokens.read))).json()
    assert body["stale_after"] is None
    assert body["total"]["instances"] == 1
    assert body["total"]["totals"]["active"] == 0


async def test_publisher_writes_its_row_and_drops_it_on_stop(
    store: Store, clock: FixedClock
) -> None:
    """The publisher's row is live in the store while it runs, with rates after its second
    publication, and deleted when it stops cleanly."""

    async def no_lag() -> int:
        return 0

    metrics = ServerMetrics()
    ticks = itertools.count(100.0, 2.0)
    board = InstanceStatsBoard(
        metrics, store, clock, subscribers=lambda: 0, lag=no_lag, interval=1,
        monotonic=lambda: next(ticks),
    )  # fmt: skip
    await board.publish()
    metrics.active.inc(10)
    await board.publish()
    (row,) = await store.live_stats(clock.now() - 5)
    stats = InstanceStats.from_row(*row)
    assert stats is not None
    assert stats.instance_id == board.instance_id
    assert stats.totals["active"] == 10
    assert stats.rates["active"] == 5.0
    await board.start()  # publishes at once, then every interval
    await asyncio.sleep(0.05)
    await board.stop()
    assert await store.live_stats(0) == []


async def test_dashboard_adds_up_processes(
    http: httpx.AsyncClient, people: None, store: Store, clock: FixedClock
) -> None:
    """The dashboard's totals include another live process, its Processes table has a row
    for each, and the delivery chart shows the other's recent commit-to-sent delay."""
    await sign_in(http, "alice")
    await publish_other(store, clock, active=10, inactive=2)
    await http.get("/admin/")
    r = await http.get("/admin/")
    active = re.search(r'id="chart-active">.*?class="total">(\d+)<', r.text, re.S)
    assert active is not None
    assert int(active[1]) == 10
    assert "Every live process on this database (2)" in r.text
    rows = re.findall(r"<tr><td><code>([^<]+)</code>", r.text.split('id="instances"')[1])
    assert rows[1] == "other-host:4242"
    delivery = re.search(
        r'id="chart-delivery">.*?class="rate">([\d.]+)</span> ms now.*?class="total">(\d+)<',
        r.text,
        re.S,
    )
    assert delivery is not None
    assert (float(delivery[1]), int(delivery[2])) == (50.0, 4)
