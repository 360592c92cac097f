"""Several worker processes on one SQLite file behave as one server."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import Creds
from tests.e2e.conftest import RunKeystile, ServerStarter, clean_env, parse_demo

pytestmark = pytest.mark.process


def _total(metrics: str, endpoint: str) -> float:
    pattern = rf'^keystile_requests_total{{endpoint="{endpoint}",outcome="ok"}} (\S+)$'
    found = re.search(pattern, metrics, re.MULTILINE)
    assert found, metrics
    return float(found.group(1))


def test_two_workers_share_tokens_revocations_and_metrics(start_server: ServerStarter):
    """With --workers 2, every request sees the same tokens and revocations whichever
    worker answers, and /metrics sums the counts of both workers."""
    server = start_server("--workers", "2", "--log-level", "warning")
    demo = parse_demo(server.stdout)
    tokens = [server.issue(demo.app) for _ in range(6)]
    for token in tokens:  # new connections spread over both workers
        with server.http.stream(
            "POST",
            "/oauth2/introspect",
            data={"token": token},
            auth=demo.rs.auth,
            headers={"connection": "close"},
        ) as r:
            r.read()
            assert r.status_code == 200
            assert r.json()["active"] is True
    assert server.revoke(demo.app, tokens[0]).status_code == 200
    for _ in range(4):
        r = server.http.post(
            "/oauth2/introspect",
            data={"token": tokens[0]},
            auth=demo.rs.auth,
            headers={"connection": "close"},
        )
        assert r.json() == {"active": False}
    metrics = server.http.get("/metrics").text
    assert _total(metrics, "token") == 6
    assert _total(metrics, "introspect") == 10
    assert _total(metrics, "revoke") == 1
    assert _in_flight(server.http.get("/metrics").text) == 0

    # Requests in progress: token requests whose bodies have not all arrived, on new
    # connections (so on both workers). Every scrape, whichever worker answers it, counts
    # all of them; once the callers hang up, none.
    waiting = []
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(
            b"POST /oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"grant_type=client_credentials"
        )
        waiting.append(sock)
    try:
        deadline = time.monotonic() + 5
        while _in_flight(server.http.get("/metrics").text) != 5:
            assert time.monotonic() < deadline, "in-flight requests not summed"
            time.sleep(0.05)
        for _ in range(6):  # fresh connections: both workers answer scrapes
            r = server.http.get("/metrics", headers={"connection": "close"})
            assert _in_flight(r.text) == 5
    finally:
        for sock in waiting:
            sock.close()
    deadline = time.monotonic() + 5
    while _in_flight(server.http.get("/metrics").text) != 0:
        assert time.monotonic() < deadline, "finished requests still counted"
        time.sleep(0.05)


def _in_flight(metrics: str) -> float:
    """The one keystile_requests_in_flight sample (no per-worker series)."""
    found = re.findall(r"^keystile_requests_in_flight(\{[^}]*\})? (\S+)$", metrics, re.MULTILINE)
    assert len(found) == 1, found
    assert found[0][0] == "", found
    return float(found[0][1])


def test_two_workers_add_up_in_the_admin_stats(
    start_server: ServerStarter, run_keystile: RunKeystile, tmp_path: Path
) -> None:
    """With --workers 2 on SQLite each worker publishes its dashboard counters to the file,
    so GET /admin/v1/stats, whichever worker answers, counts both workers' introspections
    and lists both."""
    env = clean_env(KEYSTILE_STATS_INTERVAL="0.5")
    server = start_server("--workers", "2", "--admin-api", "--log-level", "warning", env=env)
    demo = parse_demo(server.stdout)
    done = run_keystile(
        "client", "create", "ops", "--scope", "keystile:admin:read", "--json",
        "--db", str(tmp_path / "keystile.db"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    secret = done.stdout.split('"client_secret": "')[1].split('"')[0]
    admin = server.issue(Creds("ops", secret), scope="keystile:admin:read")
    token = server.issue(demo.app)
    for _ in range(12):  # new connections spread over both workers
        r = server.http.post(
            "/oauth2/introspect",
            data={"token": token},
            auth=demo.rs.auth,
            headers={"connection": "close"},
        )
        assert r.json()["active"] is True
    deadline = time.monotonic() + 5
    while True:
        r = server.http.get(
            "/admin/v1/stats",
            headers={"Authorization": f"Bearer {admin}", "connection": "close"},
        )
        total = r.json()["total"]
        if total["instances"] == 2 and total["totals"]["active"] == 12:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    assert sum(i["totals"]["active"] for i in r.json()["instances"]) == 12
