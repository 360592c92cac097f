"""Phantom tokens against a real AS: upstream gets the signed introspection answer (RFC 9701)."""

from __future__ import annotations

from pathlib import Path

import jwt as pyjwt
import pytest

from tests.e2e.conftest import DEMO_AUDIENCE, Cli, DemoServer
from tests.e2e.gateway_procs import start_gateway, start_upstream, wait_until

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret = "RS_SECRET"

[[routes]]
path = "/phantom"
upstream = "UPSTREAM"
scopes = ["read"]
phantom_token = true

[[routes]]
path = "/plain"
upstream = "UPSTREAM"
"""


def verify(as_url: str, token: str) -> dict[str, object]:
    """PyJWT checks the answer as an upstream would: keys from the AS's JWKS over HTTP."""
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == "token-introspection+jwt"
    key = pyjwt.PyJWKClient(f"{as_url}/oauth2/jwks", cache_keys=False).get_signing_key_from_jwt(
        token
    )
    claims: dict[str, object] = pyjwt.decode(
        token, key.key, algorithms=[header["alg"]], audience="demo-rs", issuer=as_url
    )
    return claims


def test_phantom_token(demo_server: DemoServer, cli: Cli, tmp_path: Path):
    """On a phantom_token route the upstream receives the AS's signed introspection JWT
    instead of the caller's token (also handed to forward-auth callers); a revoked token is
    refused; and an AS that answers plain JSON makes the route fail closed (503)."""
    server, demo = demo_server.server, demo_server.demo
    meta = server.http.get("/.well-known/oauth-authorization-server").json()
    # keystile signs introspection answers (RFC 9701): this test must never be skipped.
    assert meta["introspection_signing_alg_values_supported"]
    db = ["--db", str(server.db)]
    done = cli("resource", "update", DEMO_AUDIENCE, "--introspection-response", "jwt", *db)
    assert done.exit_code == 0, done.output
    upstream = start_upstream(tmp_path)
    config = (
        CONFIG.replace("AS_URL", server.url)
        .replace("RS_SECRET", demo.rs.secret)
        .replace("UPSTREAM", upstream.url)
    )
    gateway = start_gateway(tmp_path, config)
    try:
        gateway.wait_events()
        token = server.issue(demo.app, scope="read")
        auth = {"Authorization": f"Bearer {token}"}

        r = gateway.http.get("/phantom/orders", headers=auth)
        assert r.status_code == 200, r.text
        seen = dict(r.json()["headers"])
        assert all(token not in value for value in seen.values())
        phantom = seen["authorization"].removeprefix("Bearer ")
        claims = verify(server.url, phantom)
        answer = claims["token_introspection"]
        assert isinstance(answer, dict)
        assert answer["active"] is True
        assert answer["client_id"] == "demo-app"
        assert answer["scope"] == "read"
        assert seen["x-auth-client-id"] == "demo-app"

        again = dict(gateway.http.get("/phantom/orders", headers=auth).json()["headers"])
        assert again["authorization"] == seen["authorization"]  # kept, not fetched again

        fa = gateway.http.get("/_keystile/auth", headers={**auth, "X-Forwarded-Uri": "/phantom/x"})
        assert fa.status_code == 200
        assert fa.headers["authorization"] == seen["authorization"]

        plain = dict(gateway.http.get("/plain", headers=auth).json()["headers"])
        assert plain["authorization"] == f"Bearer {token}"

        applied = gateway.metric("keystile_gateway_events_applied_total")
        assert server.revoke(demo.app, token).status_code == 200
        wait_until(lambda: gateway.metric("keystile_gateway_events_applied_total") > applied)
        assert gateway.http.get("/phantom/orders", headers=auth).status_code == 401

        done = cli("resource", "update", DEMO_AUDIENCE, "--introspection-response", "json", *db)
        assert done.exit_code == 0, done.output
        fresh = {"Authorization": f"Bearer {server.issue(demo.app, scope='read')}"}
        refused = gateway.http.get("/phantom/orders", headers=fresh)
        assert refused.status_code == 503
        # The AS is up: the caller is told what is missing, not that it cannot be reached.
        assert refused.json() == {
            "error": "temporarily_unavailable",
            "error_description": "this route needs signed introspection answers (RFC 9701),"
            " and the authorization server does not give them to the gateway's resource server",
        }
        assert gateway.http.get("/plain", headers=fresh).status_code == 200
    finally:
        gateway.stop()
        upstream.stop()
