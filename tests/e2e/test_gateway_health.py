"""The gateway's /healthz and event-stream gauge tell the stream's real state."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import ServerStarter, parse_demo
from tests.e2e.gateway_procs import Gateway, start_gateway, start_upstream, wait_until

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret = "RS_SECRET"
events = EVENTS

[[routes]]
path = "/api"
upstream = "UPSTREAM"
"""


def stream_state(gateway: Gateway) -> str:
    r = gateway.http.get("/healthz")
    assert r.status_code == 200
    return str(r.json()["event_stream"])


def test_event_stream_state_through_an_outage(tmp_path: Path, start_server: ServerStarter):
    """With events on and the AS not up yet, /healthz says ``connecting`` (never ``off``) and
    the gauge says 0; then ``connected`` / 1 once the AS is up; ``unavailable`` / 0 when the
    AS goes away; and ``off`` / -1 only for a gateway with events switched off."""
    server = start_server("--log-level", "warning")
    demo = parse_demo(server.stdout)
    server.stop()  # the AS is down when the gateway starts
    upstream = start_upstream(tmp_path)
    config = (
        CONFIG.replace("AS_URL", server.url)
        .replace("RS_SECRET", demo.rs.secret)
        .replace("UPSTREAM", upstream.url)
    )
    gateway = start_gateway(tmp_path, config.replace("EVENTS", "true"))
    quiet = start_gateway(tmp_path, config.replace("EVENTS", "false"), name="quiet")
    try:
        assert stream_state(gateway) == "connecting"
        assert gateway.metric("keystile_gateway_event_stream_connected") == 0
        assert stream_state(quiet) == "off"
        assert quiet.metric("keystile_gateway_event_stream_connected") == -1

        again = start_server("--log-level", "warning", db=server.db, port=server.port)
        wait_until(lambda: stream_state(gateway) == "connected", 15)
        assert gateway.metric("keystile_gateway_event_stream_connected") == 1
        assert stream_state(quiet) == "off"

        again.stop()
        wait_until(lambda: stream_state(gateway) == "unavailable", 10)
        assert gateway.metric("keystile_gateway_event_stream_connected") == 0
    finally:
        quiet.stop()
        gateway.stop()
        upstream.stop()
