"""`[gateway] workers`: several gateway processes on one port, each with its own cache and its
own subscription to the revocation event stream, so a revocation reaches every one of them;
/metrics adds up the figures of all of them."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keystile.gateway.metrics import PUBLISH_INTERVAL
from tests.e2e.conftest import Demo, Server, ServerStarter, parse_demo
from tests.e2e.gateway_procs import Gateway, Upstream, start_gateway, start_upstream, wait_until

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}
workers = 2

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret_file = "rs.secret"

[cache]
max_ttl = 3600

[[routes]]
path = "/api"
upstream = "UPSTREAM"
scopes = ["read"]
"""


def fresh(url: str, token: str) -> int:
    """One request on a new connection (the kernel hands it to either worker)."""
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(f"{url}/api/w", headers=headers, trust_env=False, timeout=5).status_code


@dataclass
class Stack:
    server: Server
    demo: Demo
    upstream: Upstream
    gateway: Gateway
    config: str
    tmp: Path  # the gateway's TMPDIR, where it makes its metrics folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One AS, one upstream and one two-worker gateway for the whole module."""
    folder = tmp_path_factory.mktemp("gateway-workers")
    starter = ServerStarter(folder)
    server = starter("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(folder)
    (folder / "rs.secret").write_text(demo.rs.secret + "\n")
    config = CONFIG.replace("AS_URL", server.url).replace("UPSTREAM", upstream.url)
    tmp = folder / "tmp"
    tmp.mkdir()
    gateway = start_gateway(folder, config, env={"TMPDIR": str(tmp)})
    try:
        yield Stack(server, demo, upstream, gateway, config, tmp)
    finally:
        gateway.stop()
        upstream.stop()
        starter.stop_all()
    assert list(tmp.iterdir()) == [], "the gateway left its metrics folder behind"


def scrape(url: str) -> dict[str, float]:
    """/metrics on a new connection (either worker may answer), as {series: value}."""
    text = httpx.get(f"{url}/metrics", trust_env=False, timeout=5).text
    found = re.findall(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)
    return {series: float(value) for series, value in found}


ALLOWED = 'keystile_gateway_requests_total{mode="proxy",outcome="allowed",route="*/api"}'
MISSES = 'keystile_gateway_cache_lookups_total{result="miss"}'
FAST = 'keystile_gateway_fast_answers_total{mode="proxy"}'
ENTRIES = "keystile_gateway_cache_entries"
CONNECTED = "keystile_gateway_event_stream_connected"


def test_revocation_reaches_every_worker(stack: Stack):
    """With two workers, a token cached by both is refused by both once revoked: each worker
    follows the event stream (max_ttl is an hour, so only an event evicts it)."""
    gateway, server, demo = stack.gateway, stack.server, stack.demo
    assert "(2 workers)" in gateway.stdout_path.read_text()

    def all_connected() -> bool:
        states = {
            httpx.get(f"{gateway.url}/healthz", trust_env=False).json()["event_stream"]
            for _ in range(12)
        }
        return states == {"connected"}

    wait_until(all_connected, 15.0, 0.1)
    token = server.issue(demo.app, scope="read")
    assert [fresh(gateway.url, token) for _ in range(20)] == [200] * 20
    assert server.revoke(demo.app, token).status_code == 200
    wait_until(lambda: {fresh(gateway.url, token) for _ in range(20)} == {401}, 3.0)


def test_metrics_add_up_over_the_workers(stack: Stack):
    """/metrics, whichever worker answers it, counts the requests of both workers: the same
    total on every scrape. A new token misses once in each worker's cache, so two misses
    show both served some; entries are summed, the stream state is the workers' minimum."""
    gateway, server, demo = stack.gateway, stack.server, stack.demo
    gateway.wait_events()
    wait_until(lambda: scrape(gateway.url).get(CONNECTED) == 1.0, 5.0, 0.05)
    time.sleep(PUBLISH_INTERVAL * 1.2)  # each worker has published what came before
    before = scrape(gateway.url)
    token = server.issue(demo.app, scope="read")
    sent = 0
    while sent < 20 or (sent < 200 and scrape(gateway.url)[MISSES] < before[MISSES] + 2):
        assert fresh(gateway.url, token) == 200
        sent += 1
    for _ in range(8):  # new connections: both workers answer some of the scrapes
        after = scrape(gateway.url)
        assert after[ALLOWED] - before.get(ALLOWED, 0) == sent
        assert after[MISSES] - before[MISSES] == 2  # one per worker: both served
    # The figures read at scrape time reach the others' scrapes within a second.
    wait_until(
        lambda: (
            {
                (s[FAST] - before.get(FAST, 0), s[ENTRIES] - before[ENTRIES], s[CONNECTED])
                for s in (scrape(gateway.url) for _ in range(6))
            }
            == {(sent - 2, 2, 1)}
        ),
        3.0,
        0.1,
    )
    folders = list(stack.tmp.glob("keystile-prom-*"))
    assert len(folders) == 1, "the gateway shares its metrics in one temporary folder"
    assert list(folders[0].glob("counter_*.db"))


def test_workers_flag_overrides_the_file(stack: Stack, tmp_path: Path):
    """`keystile gateway --workers 1` runs one process whatever the file says, with its
    metrics in memory (no multiprocess folder)."""
    (tmp_path / "rs.secret").write_text(stack.demo.rs.secret + "\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    gateway = start_gateway(
        tmp_path, stack.config, args=["--workers", "1"], env={"TMPDIR": str(tmp)}
    )
    try:
        out = gateway.stdout_path.read_text()
        assert "listening on" in out
        assert "workers" not in out
        token = stack.server.issue(stack.demo.app, scope="read")
        assert fresh(gateway.url, token) == 200
        assert (
            gateway.metric(
                "keystile_gateway_requests_total", route="*/api", mode="proxy", outcome="allowed"
            )
            == 1
        )
        assert list(tmp.iterdir()) == []
    finally:
        gateway.stop()


def test_a_dead_worker_leaves_the_gauges_but_not_the_counters(stack: Stack):
    """A worker killed outright (no shutdown of its own) is replaced; its gauges leave the sum
    and the minimum over the running workers, while what it counted stays in the totals."""
    gateway = stack.gateway
    (folder,) = stack.tmp.glob("keystile-prom-*")
    live = {int(f.stem.rpartition("_")[2]) for f in folder.glob("gauge_livemin_*.db")}
    assert len(live) == 2
    before = scrape(gateway.url)[ALLOWED]
    victim = min(live)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not list(folder.glob(f"gauge_live*_{victim}.db")), 5.0, 0.05)
    assert (folder / f"counter_{victim}.db").exists()
    assert {scrape(gateway.url)[ALLOWED] for _ in range(6)} == {before}
