"""The gateway when the authorization server is down: deny with 503, or stale within bounds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import Demo, Server, ServerStarter, parse_demo
from tests.e2e.gateway_procs import Gateway, Upstream, start_gateway, start_upstream, wait_until

pytestmark = pytest.mark.process

STALE_MAX_AGE = 4.0

CONFIG = """
[gateway]
port = {port}

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret = "RS_SECRET"
timeout = 1.0

[cache]
max_ttl = 0.3
degraded_ttl = 0.3
negative_ttl = 0

[[routes]]
path = "/deny"
upstream = "UPSTREAM"

[[routes]]
path = "/stale"
upstream = "UPSTREAM"
on_unavailable = "stale"
stale_max_age = STALE_MAX_AGE

[[routes]]
path = "/stale-realtime"
upstream = "UPSTREAM"
realtime = true
on_unavailable = "stale"
stale_max_age = STALE_MAX_AGE
"""


@dataclass
class Outage:
    server: Server
    demo: Demo
    upstream: Upstream
    gateway: Gateway

    def get(self, path: str, token: str) -> httpx.Response:
        return self.gateway.http.get(path, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def outage(tmp_path) -> Iterator[Outage]:
    """An AS, an upstream and a gateway with tiny cache lifetimes, for one test."""
    starter = ServerStarter(tmp_path)
    server = starter("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(tmp_path)
    config = (
        CONFIG.replace("AS_URL", server.url)
        .replace("RS_SECRET", demo.rs.secret)
        .replace("UPSTREAM", upstream.url)
        .replace("STALE_MAX_AGE", str(STALE_MAX_AGE))
    )
    gateway = start_gateway(tmp_path, config)
    try:
        gateway.wait_events()
        yield Outage(server, demo, upstream, gateway)
    finally:
        gateway.stop()
        upstream.stop()
        starter.stop_all()


def test_as_down_deny_and_stale(outage: Outage):
    """With the AS down: a deny route answers 503 + Retry-After (never 401); a stale route
    passes a token seen active within stale_max_age, but never one that was revoked, never
    one it has not seen, and nothing once stale_max_age has passed."""
    s = outage
    good = s.server.issue(s.demo.app, scope="read")
    revoked = s.server.issue(s.demo.app, scope="read")
    inactive = s.server.issue(s.demo.app, scope="read")
    unseen = s.server.issue(s.demo.app, scope="read")
    seen_at = time.monotonic()
    for token in (good, revoked, inactive):
        assert s.get("/stale", token).status_code == 200
    assert s.get("/stale-realtime", good).status_code == 200

    # Revoked while the stream is up: the event evicts it from the gateway's cache.
    applied = s.gateway.metric("keystile_gateway_events_applied_total")
    assert s.server.revoke(s.demo.app, revoked).status_code == 200
    wait_until(lambda: s.gateway.metric("keystile_gateway_events_applied_total") > applied)
    # Revoked, then seen inactive by a realtime check (the answer replaces the cached one).
    s.server.revoke(s.demo.app, inactive)
    assert s.get("/stale-realtime", inactive).status_code == 401

    s.server.stop()
    time.sleep(0.4)  # past max_ttl: nothing is a cache hit any more

    denied = s.get("/deny", good)
    assert denied.status_code == 503
    assert denied.headers["retry-after"] == "1"
    assert denied.json()["error"] == "temporarily_unavailable"
    assert "www-authenticate" not in denied.headers

    assert s.get("/stale", good).status_code == 200
    assert s.get("/stale-realtime", good).status_code == 200
    assert (
        s.gateway.metric(
            "keystile_gateway_requests_total", route="*/stale", mode="proxy", outcome="stale"
        )
        == 1
    )
    # Never stale: 503, or 401 where the SDK remembers the revocation event without the AS.
    assert s.get("/stale", revoked).status_code in (401, 503)
    assert s.get("/stale", inactive).status_code in (401, 503)
    assert s.get("/stale", unseen).status_code == 503

    fa = s.gateway.http.get(
        "/_keystile/auth", headers={"Authorization": f"Bearer {good}", "X-Original-URI": "/deny"}
    )
    assert fa.status_code == 503

    time.sleep(max(0.0, seen_at + STALE_MAX_AGE + 0.2 - time.monotonic()))
    assert s.get("/stale", good).status_code == 503


def test_as_back_after_outage(outage: Outage, start_server: ServerStarter):
    """When the AS returns on the same port, the gateway validates tokens again without a
    restart and its event stream reconnects."""
    s = outage
    token = s.server.issue(s.demo.app, scope="read")
    s.server.stop()
    assert s.get("/deny", token).status_code == 503
    again = start_server("--log-level", "warning", db=s.server.db, port=s.server.port)
    assert s.get("/deny", token).status_code == 200
    wait_until(lambda: s.gateway.http.get("/healthz").json()["event_stream"] == "connected", 10)
    again.stop()
