"""Two real `keystile serve` processes on one PostgreSQL schema: GET /admin/v1/stats on
either adds up both (docs/admin.md, "Dashboard"), and a process that stops leaves the sum:
at once when it stops cleanly, after the staleness bound when it is killed."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from keystile.server.instance_stats import stale_after
from tests.conftest import Creds
from tests.e2e.conftest import Demo, RunKeystile, Server, ServerStarter, clean_env, parse_demo
from tests.e2e.test_events import Stream

pytestmark = pytest.mark.process

INTERVAL = 0.5  # stats_interval of both processes: publish twice a second
ADMIN_STATS = "/admin/v1/stats"


@dataclass
class Pair:
    a: Server
    b: Server
    demo: Demo
    admin_token: str


@pytest.fixture
def pair(pg_url: str, start_server: ServerStarter, run_keystile: RunKeystile) -> Pair:
    """A (with the demo clients) and B on one fresh schema, admin API on, and an admin
    token (read scope) from A."""
    env = clean_env(KEYSTILE_STATS_INTERVAL=str(INTERVAL))
    a = start_server("--demo", "--admin-api", "--db", pg_url, db_flag=False, env=env)
    b = start_server("--no-demo", "--admin-api", "--db", pg_url, db_flag=False, env=env)
    done = run_keystile(
        "client", "create", "ops", "--scope", "keystile:admin:read", "--json", "--db", pg_url
    )
    assert done.returncode == 0, done.stderr
    secret = done.stdout.split('"client_secret": "')[1].split('"')[0]
    token = a.issue(Creds("ops", secret), scope="keystile:admin:read")
    return Pair(a, b, parse_demo(a.stdout), token)


def stats(server: Server, token: str) -> dict[str, Any]:
    r = server.http.get(ADMIN_STATS, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def eventually(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check`` held; fails after ``within``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, "condition not met in time"
        time.sleep(0.1)
    return time.monotonic() - started


def burst(pair: Pair) -> None:
    """20 active introspections on A; 7 active and 2 inactive on B."""
    token = pair.a.issue(pair.demo.app, scope="read")
    for _ in range(20):
        assert pair.a.introspect(pair.demo.rs, token).json()["active"] is True
    for _ in range(7):
        assert pair.b.introspect(pair.demo.rs, token).json()["active"] is True
    for _ in range(2):
        assert pair.b.introspect(pair.demo.rs, "ks_at_unknown").json() == {"active": False}


def by_pid(body: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {i["pid"]: i for i in body["instances"]}


class TestFleetStats:
    def test_either_instance_shows_the_sum_and_both_rows(self, pair: Pair) -> None:
        """After a burst on each, the stats of A and of B both count 27 active and 2
        inactive introspections from 2 instances, with each process's own share."""
        burst(pair)
        a, b = pair.a, pair.b

        def summed(server: Server) -> bool:
            total = stats(server, pair.admin_token)["total"]
            return total["instances"] == 2 and (
                total["totals"]["active"],
                total["totals"]["inactive"],
            ) == (27, 2)

        for server in (a, b):
            eventually(lambda server=server: summed(server), within=5)  # type: ignore[misc]
        body = stats(a, pair.admin_token)
        rows = by_pid(body)
        assert set(rows) == {a.proc.pid, b.proc.pid}
        assert rows[a.proc.pid]["this_process"] is True
        assert rows[a.proc.pid]["totals"]["active"] == 20
        assert (rows[b.proc.pid]["totals"]["active"], rows[b.proc.pid]["totals"]["inactive"]) == (
            7,
            2,
        )
        assert body["total"]["latency"]["introspect"]["p99_ms"] is not None

    def test_killed_instance_leaves_the_sum_after_the_bound(self, pair: Pair) -> None:
        """B killed (no shutdown code runs) still counts until its row is older than the
        staleness bound, then A's stats leave it out; a clean stop leaves at once."""
        burst(pair)
        a, b = pair.a, pair.b
        eventually(lambda: stats(a, pair.admin_token)["total"]["instances"] == 2, within=5)
        b.kill()
        killed = time.monotonic()
        assert stats(a, pair.admin_token)["total"]["instances"] == 2  # not yet stale
        eventually(lambda: stats(a, pair.admin_token)["total"]["instances"] == 1, within=10)
        gone_after = time.monotonic() - killed
        # Rows are stamped in whole seconds and renewed every INTERVAL.
        assert stale_after(INTERVAL) - 1 - INTERVAL <= gone_after <= stale_after(INTERVAL) + 2
        body = stats(a, pair.admin_token)
        assert [i["pid"] for i in body["instances"]] == [a.proc.pid]
        assert body["total"]["totals"]["active"] == 20

    def test_cleanly_stopped_instance_leaves_at_once(
        self, pair: Pair, start_server: ServerStarter, pg_url: str
    ) -> None:
        """A third process stopped with SIGTERM deletes its row as it exits."""
        env = clean_env(KEYSTILE_STATS_INTERVAL=str(INTERVAL))
        c = start_server("--no-demo", "--admin-api", "--db", pg_url, db_flag=False, env=env)
        eventually(lambda: stats(pair.a, pair.admin_token)["total"]["instances"] == 3, within=5)
        assert c.stop() in (0, -signal.SIGTERM)
        assert stats(pair.a, pair.admin_token)["total"]["instances"] == 2


class TestDeliveryDelay:
    def test_revocation_on_b_sent_by_a_is_measured_and_added_up(self, pair: Pair) -> None:
        """A revocation committed through B and sent on a stream open on A is measured by
        A (commit to send, well under a second with NOTIFY); B's stats count it too, from
        A's published snapshot."""
        a, b, demo = pair.a, pair.b, pair.demo
        stream = Stream(a, demo.rs).start()
        try:
            stream.next("ready")
            token = b.issue(demo.app)
            assert b.revoke(demo.app, token).status_code == 200
            stream.next("token_revoked")
        finally:
            stream.close()
        own = by_pid(stats(a, pair.admin_token))[a.proc.pid]
        assert own["event_delivery"]["count"] == 1
        assert own["event_delivery"]["p99_ms"] is not None
        assert own["event_delivery"]["p99_ms"] <= 1000
        eventually(
            lambda: stats(b, pair.admin_token)["total"]["event_delivery"]["count"] == 1, within=5
        )
