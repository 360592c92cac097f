"""An AS behind a private CA: `[authorization_server] ca_file` in the gateway, `ca_file=` in the
SDK. Real processes: `keystile serve` over TLS with a certificate no default store trusts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from keystile.errors import IntrospectionUnavailable
from keystile.resource import SyncTokenValidator, TokenValidator
from tests.e2e.conftest import (
    CLI_TIMEOUT,
    KEYSTILE,
    DemoServer,
    ServerStarter,
    Tls,
    clean_env,
    parse_demo,
)
from tests.e2e.gateway_procs import start_gateway, start_upstream

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret = "RS_SECRET"
CA_LINE

[[routes]]
path = "/api"
upstream = "UPSTREAM"
"""


@pytest.fixture(scope="module")
def tls_as(tmp_path_factory: pytest.TempPathFactory, tls_files: Tls):
    starter = ServerStarter(tmp_path_factory.mktemp("tls-as"))
    server = starter("--log-level", "warning", tls=tls_files)
    yield DemoServer(server, parse_demo(server.stdout))
    starter.stop_all()


def _config(tls_as: DemoServer, upstream_url: str, ca_line: str) -> str:
    return (
        CONFIG.replace("AS_URL", tls_as.server.url)
        .replace("RS_SECRET", tls_as.demo.rs.secret)
        .replace("UPSTREAM", upstream_url)
        .replace("CA_LINE", ca_line)
    )


def test_gateway_trusts_the_as_through_ca_file_only(
    tmp_path: Path, tls_as: DemoServer, tls_files: Tls
) -> None:
    """With ca_file (relative to the config's folder) the gateway discovers, introspects and
    relays; without it the same certificate is refused: 503 to the caller, and the log says
    why (certificate verification), never a token let through."""
    token = tls_as.server.issue(tls_as.demo.app, scope="read")
    (tmp_path / "as-ca.pem").write_bytes(tls_files.cert.read_bytes())
    upstream = start_upstream(tmp_path)
    trusting = start_gateway(tmp_path, _config(tls_as, upstream.url, 'ca_file = "as-ca.pem"'))
    default = start_gateway(tmp_path, _config(tls_as, upstream.url, ""), name="default")
    try:
        auth = {"Authorization": f"Bearer {token}"}
        r = trusting.http.get("/api/echo", headers=auth)
        assert r.status_code == 200, r.text
        trusting.wait_events()
        r = default.http.get("/api/echo", headers=auth)
        assert r.status_code == 503
        assert "CERTIFICATE_VERIFY_FAILED" in default.stderr
        assert token not in default.stderr
    finally:
        trusting.stop()
        default.stop()
        upstream.stop()


def test_gateway_refuses_to_start_with_an_unreadable_ca_file(tmp_path: Path) -> None:
    """A ca_file that is missing or not PEM certificates stops the gateway at start with exit
    code 2 and the setting's name, instead of failing every request later."""
    (tmp_path / "not-pem.pem").write_text("hello\n")
    for name, expect in (("missing.pem", "No such file"), ("not-pem.pem", "cannot load")):
        config = tmp_path / "gw.toml"
        config.write_text(
            _config_min(f'ca_file = "{name}"'),
        )
        done = subprocess.run(
            [str(KEYSTILE), "gateway", "--config", str(config)],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=CLI_TIMEOUT,
        )
        assert done.returncode == 2, done.stderr
        assert "authorization_server.ca_file" in done.stderr
        assert expect in done.stderr


def _config_min(ca_line: str) -> str:
    return (
        CONFIG.replace("{port}", "1")
        .replace("AS_URL", "https://127.0.0.1:1")
        .replace("RS_SECRET", "x" * 32)
        .replace("UPSTREAM", "http://127.0.0.1:2")
        .replace("CA_LINE", ca_line)
    )


async def test_sdk_validator_with_ca_file(tls_as: DemoServer, tls_files: Tls) -> None:
    """TokenValidator(ca_file=...) introspects over TLS against the private CA; without it the
    AS cannot be reached (fail closed: IntrospectionUnavailable, not a pass)."""
    token = tls_as.server.issue(tls_as.demo.app, scope="read")
    common = {
        "client_id": "demo-rs",
        "client_secret": tls_as.demo.rs.secret,
        "issuer": tls_as.server.url,
        "events": False,
    }
    async with TokenValidator(**common, ca_file=tls_files.cert) as validator:
        principal = await validator.validate(token)
        assert principal.client_id == "demo-app"
    plain = TokenValidator(**common)
    try:
        with pytest.raises(IntrospectionUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await plain.validate(token)  # discovery on first use, over the refused TLS
    finally:
        await plain.close()
    with SyncTokenValidator(**common, ca_file=tls_files.cert) as sync_validator:
        assert sync_validator.validate(token).client_id == "demo-app"
    with pytest.raises(ValueError, match="not both"):
        TokenValidator(**common, ca_file=tls_files.cert, http=object())  # type: ignore[arg-type]
