"""A real nginx using `auth_request` against the gateway's forward-auth endpoint.

nginx (the Debian package) is started by the test on a free loopback port with the server
block of docs/gateway.md as printed there, its addresses pointed at the test's processes; the
gateway decides, nginx proxies to the toy upstream. Skipped, with the reason, where nginx is
not installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import service_unavailable
from tests.e2e.conftest import LOOPBACK, Demo, Server, ServerStarter, free_port, parse_demo
from tests.e2e.doc_blocks import doc_block
from tests.e2e.gateway_procs import Gateway, start_gateway, start_upstream, wait_until

pytestmark = pytest.mark.process

GATEWAY = """
[gateway]
port = {port}

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"

[[routes]]
path = "/"
scopes = ["read"]

[[routes]]
path = "/admin"
scopes = ["admin"]

[[routes]]
path = "/public"
public = true
"""

NGINX = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{site}
}}
"""


def site_config(gateway: int, upstream: int, port: int) -> str:
    """docs/gateway.md's nginx example, as printed, pointed at this test's processes."""
    text = doc_block("gateway-nginx").text
    for old, new in (
        ("listen 443 ssl;", f"listen {LOOPBACK}:{port};"),
        ("server 127.0.0.1:8080;", f"server {LOOPBACK}:{gateway};"),
        ("proxy_pass http://orders.internal:8000;", f"proxy_pass http://{LOOPBACK}:{upstream};"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@dataclass
class NginxStack:
    server: Server
    demo: Demo
    gateway: Gateway
    url: str

    def get(self, path: str, token: str | None = None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return httpx.get(self.url + path, headers=headers, trust_env=False, timeout=10)


def _start_nginx(binary: str, folder: Path, gateway_port: int, upstream_port: int):
    port = free_port()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / sub).mkdir(exist_ok=True)
    # As root, nginx's workers would switch to "nobody", who cannot use tmp_path.
    user = "user root;" if os.geteuid() == 0 else ""
    conf = folder / "nginx.conf"
    conf.write_text(
        NGINX.format(dir=folder, user=user, site=site_config(gateway_port, upstream_port, port))
    )
    with (folder / "nginx.stderr").open("wb") as stderr:
        proc = subprocess.Popen(
            [
                binary,
                "-p",
                str(folder),
                "-c",
                str(conf),
                "-e",
                str(folder / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.2):
                return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                pytest.fail(
                    "nginx did not start:\n"
                    + (folder / "nginx.stderr").read_text()
                    + (folder / "error.log").read_text()
                )
            time.sleep(0.05)


@pytest.fixture(scope="module")
def nginx_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStack]:
    """AS + toy upstream + gateway (forward-auth only) + nginx, for the module."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        service_unavailable("nginx is not installed (apt-get install nginx); .ci/run installs it")
    folder = tmp_path_factory.mktemp("nginx")
    starter = ServerStarter(folder)
    server = starter("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(folder)
    # The secret through the environment this time (the other tests use the file and a path).
    gateway = start_gateway(
        folder,
        GATEWAY.replace("AS_URL", server.url),
        env={"KEYSTILE_GATEWAY_CLIENT_SECRET": demo.rs.secret},
    )
    proc, port = _start_nginx(binary, folder, gateway.port, upstream.port)
    try:
        gateway.wait_events()
        yield NginxStack(server, demo, gateway, f"http://{LOOPBACK}:{port}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        gateway.stop()
        upstream.stop()
        starter.stop_all()


def test_allowed_through_nginx(nginx_stack: NginxStack):
    """A token with the scope passes nginx; upstream gets the gateway's identity headers and
    none of the caller's spoofed ones."""
    s = nginx_stack
    token = s.server.issue(s.demo.app, scope="read")
    spoof = {"X-Auth-Subject": "admin", "X-Auth-Username": "alice", "X_Auth_Subject": "root"}
    r = s.get("/orders?x=1", token, **spoof)
    assert r.status_code == 200, r.text
    seen = dict(r.json()["headers"])
    assert r.json()["path"] == "/orders"
    assert seen["x-auth-subject"] == "demo-app"
    assert seen["x-auth-scope"] == "read"
    assert "x-auth-username" not in seen
    # nginx drops header names with '_' by default (underscores_in_headers off).
    assert "x_auth_subject" not in seen
    assert "root" not in [v for _, v in r.json()["headers"]]


def test_public_through_nginx(nginx_stack: NginxStack):
    """A public route passes nginx without a token, with no identity headers upstream."""
    r = nginx_stack.get("/public/x", **{"X-Auth-Subject": "admin"})
    assert r.status_code == 200
    assert "x-auth-subject" not in dict(r.json()["headers"])


def test_denied_through_nginx(nginx_stack: NginxStack):
    """No token: nginx answers 401 with the gateway's challenge; a token without the
    route's scope: 403 with the insufficient_scope challenge."""
    s = nginx_stack
    bare = s.get("/orders")
    assert bare.status_code == 401
    assert bare.headers["www-authenticate"] == "Bearer"
    assert b"error" not in bare.content  # nginx's own 401 page, no error information
    token = s.server.issue(s.demo.app, scope="read")
    forbidden = s.get("/admin/users", token)
    assert forbidden.status_code == 403
    assert 'error="insufficient_scope"' in forbidden.headers["www-authenticate"]


def test_revoked_through_nginx(nginx_stack: NginxStack):
    """A token revoked at the AS is refused by nginx on the next request (the gateway's
    cache is evicted by the event stream)."""
    s = nginx_stack
    token = s.server.issue(s.demo.app, scope="read")
    assert s.get("/orders", token).status_code == 200
    assert s.get("/orders", token).status_code == 200  # a cache hit now
    applied = s.gateway.metric("keystile_gateway_events_applied_total")
    assert s.server.revoke(s.demo.app, token).status_code == 200
    wait_until(lambda: s.gateway.metric("keystile_gateway_events_applied_total") > applied)
    r = s.get("/orders", token)
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
