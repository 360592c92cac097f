"""`[gateway] workers`: several gateway processes on one port, each with its own cache and its
own subscription to the revocation event stream, so a revocation reaches every one of them."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import ServerStarter, parse_demo
from tests.e2e.gateway_procs import start_gateway, start_upstream, wait_until

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


def test_revocation_reaches_every_worker(start_server: ServerStarter, tmp_path):
    """With two workers, a token cached by both is refused by both once revoked: each worker
    follows the event stream (max_ttl is an hour, so only an event evicts it)."""
    server = start_server("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(tmp_path)
    (tmp_path / "rs.secret").write_text(demo.rs.secret + "\n")
    config = CONFIG.replace("AS_URL", server.url).replace("UPSTREAM", upstream.url)
    gateway = start_gateway(tmp_path, config)
    try:
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
    finally:
        gateway.stop()
        upstream.stop()


def test_workers_flag_overrides_the_file(start_server: ServerStarter, tmp_path):
    """`keystile gateway --workers 1` runs one process whatever the file says."""
    server = start_server("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(tmp_path)
    (tmp_path / "rs.secret").write_text(demo.rs.secret + "\n")
    config = CONFIG.replace("AS_URL", server.url).replace("UPSTREAM", upstream.url)
    gateway = start_gateway(tmp_path, config, args=["--workers", "1"])
    try:
        out = gateway.stdout_path.read_text()
        assert "listening on" in out
        assert "workers" not in out
        token = server.issue(demo.app, scope="read")
        assert fresh(gateway.url, token) == 200
    finally:
        gateway.stop()
        upstream.stop()
