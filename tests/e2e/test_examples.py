"""The files under examples/ run: configurations load and serve, the FastAPI and Flask apps
protect their routes against a real AS, the FastAPI example's own tests pass with plain
pytest, and the two-instance script serves one issuer from PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keystile.gateway.config import load_config
from keystile.settings import ServerSettings
from tests.conftest import Creds
from tests.e2e.conftest import (
    KEYSTILE,
    LOOPBACK,
    DemoServer,
    RunKeystile,
    Server,
    clean_env,
    free_port,
    stop_process,
    wait_port,
)
from tests.e2e.doc_blocks import EXAMPLES, doc_block
from tests.e2e.gateway_procs import start_gateway, start_upstream

pytestmark = pytest.mark.process

API = "https://api.example.com"  # the examples' default resource identifier


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[object]:
    """Start a process that listens on ``port``; stopped (by its PID) at teardown."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], port: int, env: dict[str, str], cwd: Path = EXAMPLES) -> None:
        log = tmp_path / f"proc-{len(started)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        started.append(proc)
        wait_port(proc, port, log)

    yield start
    for proc in started:
        stop_process(proc)


@dataclass
class OrdersSetup:
    server: Server
    api: Creds  # the API's introspecting client (orders-api)
    shop: Creds  # a client that gets tokens for the API


@pytest.fixture
def orders(demo_server: DemoServer, run_keystile: RunKeystile) -> OrdersSetup:
    """The AS set up as docs/sdk.md says: orders-api introspects for the API."""
    server = demo_server.server
    db = ["--db", str(server.db)]

    def create(*args: str) -> str:
        done = run_keystile("client", "create", *args, "--json", *db)
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout)["client_secret"])

    api = Creds("orders-api", create("orders-api", "--grant-type", "none"))
    done = run_keystile("resource", "create", API, "--client", "orders-api", *db)
    assert done.returncode == 0, done.stderr
    shop = Creds("shop", create("shop", "--scope", "orders:read orders:write", "--audience", API))
    return OrdersSetup(server, api, shop)


def app_env(setup: OrdersSetup) -> dict[str, str]:
    return clean_env(
        ISSUER=setup.server.url,
        API=API,
        ORDERS_API_SECRET=setup.api.secret,
        PYTHONDONTWRITEBYTECODE="1",
    )


def check_orders_api(url: str, setup: OrdersSetup) -> None:
    """What both example apps must do: 401 without a token, 200 with orders:read, 403 on
    POST without orders:write, 201 with it, 401 once revoked."""
    reader = setup.server.issue(setup.shop, scope="orders:read")
    writer = setup.server.issue(setup.shop, scope="orders:read orders:write")
    with httpx.Client(base_url=url, trust_env=False, timeout=10) as http:
        bare = http.get("/orders")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"].startswith('Bearer realm="orders"')
        ok = http.get("/orders", headers={"authorization": f"Bearer {reader}"})
        assert ok.status_code == 200, ok.text
        assert ok.json()["sub"] == "shop"
        denied = http.post("/orders", headers={"authorization": f"Bearer {reader}"})
        assert denied.status_code == 403
        created = http.post("/orders", headers={"authorization": f"Bearer {writer}"})
        assert created.status_code == 201, created.text
        assert created.json() == {"created_by": "shop"}
        meta = http.get("/.well-known/oauth-protected-resource")
        assert meta.status_code == 200
        documented = json.loads(
            doc_block("sdk-metadata-document").text.replace(
                "https://auth.example.com", setup.server.url
            )
        )
        assert meta.json() == documented
        assert setup.server.revoke(setup.shop, reader).status_code == 200
        # The event stream evicts the cached answer within milliseconds.
        deadline = time.monotonic() + 5
        while http.get("/orders", headers={"authorization": f"Bearer {reader}"}).status_code != 401:
            assert time.monotonic() < deadline, "a revoked token was still accepted"
            time.sleep(0.02)


# -- configuration files -------------------------------------------------------------------------


def test_keystile_toml_loads() -> None:
    """examples/keystile.toml (docs/configuration.md) loads with the real settings loader."""
    settings = ServerSettings.load(EXAMPLES / "keystile.toml")
    assert settings.port == 8443
    assert settings.issuer == "https://auth.example.com"
    assert settings.log_format == "json"
    assert settings.tls


def test_gateway_toml_loads_and_serves(demo_server: DemoServer, tmp_path: Path) -> None:
    """examples/gateway.toml (docs/gateway.md) loads as printed, and a gateway started from
    it (addresses pointed at a real AS and a toy upstream) passes a public route, refuses a
    bare request on a protected one, and answers /healthz and /metrics."""
    config = load_config(
        EXAMPLES / "gateway.toml", environ={"KEYSTILE_GATEWAY_CLIENT_SECRET": "ks_cs_x"}
    )
    assert [r.name for r in config.routes] == ["health", "orders", "orders-write", "catalog"]
    assert config.identity_headers.subject == "X-Auth-Subject"

    server, demo = demo_server.server, demo_server.demo
    upstream = start_upstream(tmp_path)
    text = (EXAMPLES / "gateway.toml").read_text()
    for old, new in (
        ("port = 8080", "port = {port}"),
        ('"https://auth.example.com"', f'"{server.url}"'),
        ('client_id = "gateway"', 'client_id = "demo-rs"'),
        ('"http://127.0.0.1:9001"', f'"{upstream.url}"'),
        ('"http://orders.internal:8000"', f'"{upstream.url}"'),
        ('"http://catalog.internal:8000/v2"', f'"{upstream.url}/v2"'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    secret = tmp_path / "secret"
    secret.write_text(demo.rs.secret)
    text = text.replace('"/run/secrets/gateway-client-secret"', f'"{secret}"')
    gateway = start_gateway(tmp_path, text)
    try:
        gateway.wait_events()
        assert gateway.http.get("/status").status_code == 200
        bare = gateway.http.get("/catalog/items")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"] == 'Bearer realm="example-api"'
        token = server.issue(demo.app, scope="read")
        # demo-app's token lacks catalog:read
        r = gateway.http.get("/catalog/items", headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 403
        assert gateway.http.get("/metrics").status_code == 200
    finally:
        gateway.stop()
        upstream.stop()


# -- the SDK examples ------------------------------------------------------------------------------


def test_fastapi_example_against_a_real_as(orders: OrdersSetup, spawn) -> None:
    """examples/fastapi_app.py under uvicorn, as its docstring says to run it, against a
    real AS: the documented refusals, scopes, metadata document and revocation."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--factory", "fastapi_app:main"]
    spawn([*argv, "--port", str(port), "--log-level", "warning"], port, app_env(orders))
    check_orders_api(f"http://{LOOPBACK}:{port}", orders)


def test_flask_example_against_a_real_as(orders: OrdersSetup, spawn) -> None:
    """examples/flask_app.py under `flask run`, against a real AS: the same answers."""
    port = free_port()
    argv = [sys.executable, "-m", "flask", "--app", "flask_app", "run", "--port", str(port)]
    spawn(argv, port, app_env(orders))
    check_orders_api(f"http://{LOOPBACK}:{port}", orders)


def test_fastapi_example_tests_pass_with_plain_pytest(tmp_path: Path) -> None:
    """examples/test_fastapi_app.py passes when run the way a user would, outside this
    project (no asyncio_mode = auto, no project conftest)."""
    for name in ("fastapi_app.py", "test_fastapi_app.py"):
        shutil.copy2(EXAMPLES / name, tmp_path / name)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fastapi_app.py"],
        cwd=tmp_path,
        env=clean_env(PYTHONDONTWRITEBYTECODE="1"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


# -- scale-out -----------------------------------------------------------------------------------


def test_scale_out_script(pg_url: str, tmp_path: Path) -> None:
    """examples/scale-out.sh starts two instances on one PostgreSQL database: both name the
    one issuer, a token issued by one is introspected and revoked through the other, and
    stopping the script stops both."""
    ports = [free_port(), free_port()]
    issuer = f"http://{LOOPBACK}:{free_port()}"
    env = clean_env(KEYSTILE_DB=pg_url, ISSUER=issuer, PORTS=" ".join(map(str, ports)))
    env["PATH"] = f"{KEYSTILE.parent}{os.pathsep}{env['PATH']}"
    log = tmp_path / "scale-out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sh", str(EXAMPLES / "scale-out.sh")],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        for port in ports:
            wait_port(proc, port, log)
        a, b = (httpx.Client(base_url=f"http://{LOOPBACK}:{p}", trust_env=False) for p in ports)
        with a, b:
            for http in (a, b):
                meta = http.get("/.well-known/oauth-authorization-server").json()
                assert meta["issuer"] == issuer
            done = subprocess.run(
                [str(KEYSTILE), "client", "create", "app", "--scope", "read", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            app = Creds("app", json.loads(done.stdout)["client_secret"])
            done = subprocess.run(
                [str(KEYSTILE), "client", "create", "rs", "--grant-type", "none", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            rs = Creds("rs", json.loads(done.stdout)["client_secret"])
            subprocess.run(
                [str(KEYSTILE), "resource", "create", "https://api.test", "--client", "rs"],
                env=env,
                capture_output=True,
                timeout=30,
                check=True,
            )
            form = {"grant_type": "client_credentials", "resource": "https://api.test"}
            token = a.post("/oauth2/token", data=form, auth=app.auth).json()["access_token"]
            claims = b.post("/oauth2/introspect", data={"token": token}, auth=rs.auth).json()
            assert claims["active"] is True
            assert claims["iss"] == issuer
            assert b.post("/oauth2/revoke", data={"token": token}, auth=app.auth).is_success
            gone = a.post("/oauth2/introspect", data={"token": token}, auth=rs.auth).json()
            assert gone == {"active": False}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    for port in ports:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((LOOPBACK, port), timeout=0.2).close()
            except OSError:
                break
            assert time.monotonic() < deadline, f"an instance still listens on {port}"
            time.sleep(0.05)
