"""Several worker processes on one SQLite file behave as one server."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import ServerStarter, parse_demo

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
