"""`keystile serve --workers N` answers without Nagle delays on its inherited socket."""

from __future__ import annotations

import statistics
import time

import pytest

from tests.e2e.conftest import ServerStarter

pytestmark = pytest.mark.process


def test_workers_answer_without_a_40_ms_stall(start_server: ServerStarter) -> None:
    """With two workers, small requests on one keep-alive connection take milliseconds,
    not the ~40 ms of Nagle plus delayed ACK (TCP_NODELAY must be set on the workers'
    TCP socket, which uvicorn's `fd=` path loses by rebuilding it as a UNIX socket)."""
    server = start_server("--workers", "2", "--no-demo")
    timings = []
    for _ in range(30):
        started = time.perf_counter()
        r = server.http.post("/oauth2/introspect", data={"token": "x"})
        timings.append(time.perf_counter() - started)
        assert r.status_code == 401
    assert statistics.median(timings) < 0.02, timings
