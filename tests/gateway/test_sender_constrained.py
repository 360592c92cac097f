"""The gateway's sender checks per route (RFC 9449 §7, RFC 8705 §3), in-process: a real AS
issues DPoP-bound tokens, the gateway introspects them, and both the proxy and the
forward-auth endpoint (nginx, Traefik and Envoy shapes) check the proof against the original
method and URL. Routes have no upstream, so an allowed proxy request answers 404 ("only
answers forward-auth checks") and a refused one 401."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from keystile.gateway.app import GatewayApp
from keystile.gateway.config import parse_config
from keystile.resource import TokenValidator
from tests.conftest import ISSUER, TOKEN, Setup
from tests.dpop_support import DpopKey

PUBLIC = "https://api.example.test"
CC = {"grant_type": "client_credentials"}


@pytest.fixture(scope="module")
def key() -> DpopKey:
    return DpopKey("ES256")


@asynccontextmanager
async def make_gateway(app, setup: Setup, **listen: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway (no upstreams) in front of the in-process AS, reached from 10.0.0.5."""
    config = parse_config(
        {
            "gateway": {"trusted_proxies": ["10.0.0.0/8"], **listen},
            "authorization_server": {
                "introspection_endpoint": ISSUER + "/oauth2/introspect",
                "client_id": setup.rs.client_id,
                "client_secret": setup.rs.secret,
                "events": False,
            },
            "routes": [
                {"path": "/orders", "scopes": ["read"]},
                {"path": "/strict", "sender_constrained": "required"},
            ],
        }
    )
    as_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER)
    validator = TokenValidator(
        introspection_endpoint=ISSUER + "/oauth2/introspect",
        client_id=setup.rs.client_id,
        client_secret=setup.rs.secret,
        events=False,
        http=as_http,
    )
    gw = GatewayApp(config, validator=validator)
    transport = httpx.ASGITransport(app=gw, client=("10.0.0.5", 5000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.internal") as client:
            yield client
    finally:
        await gw.shutdown()
        await as_http.aclose()


@pytest.fixture
async def gateway(app, setup: Setup) -> AsyncIterator[httpx.AsyncClient]:
    async with make_gateway(app, setup) as client:
        yield client


async def bound_token(http, setup: Setup, key: DpopKey, clock) -> str:
    proof = key.proof("POST", ISSUER + TOKEN, clock.now())
    r = await http.post(
        TOKEN, data={**CC, "scope": "read"}, auth=setup.app.auth, headers={"DPoP": proof}
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def proof(key: DpopKey, method: str, url: str, token: str, **kw: Any) -> str:
    return key.proof(method, url, int(time.time()), access_token=token, **kw)


def headers(token: str, dpop: str | None, scheme: str = "DPoP", **more: str) -> dict[str, str]:
    out = {"Authorization": f"{scheme} {token}", **more}
    if dpop is not None:
        out["DPoP"] = dpop
    return out


FORWARDED = {"Host": "api.example.test", "X-Forwarded-Proto": "https"}


class TestProxy:
    async def test_right_proof_passes(self, gateway, http, setup, clock, key):
        """A bound token with a proof for the caller's URL (https, from the trusted proxy's
        X-Forwarded-Proto) passes the policy."""
        token = await bound_token(http, setup, key, clock)
        p = proof(key, "GET", PUBLIC + "/orders", token)
        r = await gateway.get("/orders?x=1", headers=headers(token, p, **FORWARDED))
        assert r.status_code == 404, r.text  # allowed: the route has no upstream

    async def test_copied_token_refused(self, gateway, http, setup, clock, key):
        """Without the key a copied token is refused: as Bearer, without a proof, and with
        a proof by another key; each with a DPoP challenge (RFC 9449 §7.1)."""
        token = await bound_token(http, setup, key, clock)
        thief = DpopKey("ES256")
        cases = [
            headers(token, None, "Bearer", **FORWARDED),
            headers(token, None, **FORWARDED),
            headers(token, proof(thief, "GET", PUBLIC + "/orders", token), **FORWARDED),
        ]
        for h in cases:
            r = await gateway.get("/orders", headers=h)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"].startswith("DPoP ")

    @pytest.mark.parametrize(
        ("method", "url"),
        [
            ("POST", PUBLIC + "/orders"),
            ("GET", PUBLIC + "/other"),
            ("GET", "http://api.example.test/orders"),
        ],
    )
    async def test_wrong_htm_htu(self, gateway, http, setup, clock, key, method, url):
        """A proof for another method, path or scheme is invalid_dpop_proof."""
        token = await bound_token(http, setup, key, clock)
        r = await gateway.get(
            "/orders", headers=headers(token, proof(key, method, url, token), **FORWARDED)
        )
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_dpop_proof"

    async def test_replay(self, gateway, http, setup, clock, key):
        """The same proof twice: the second is refused (RFC 9449 §11.1)."""
        token = await bound_token(http, setup, key, clock)
        h = headers(token, proof(key, "GET", PUBLIC + "/orders", token), **FORWARDED)
        assert (await gateway.get("/orders", headers=h)).status_code == 404
        r = await gateway.get("/orders", headers=h)
        assert r.status_code == 401
        assert "used before" in r.json()["error_description"]

    async def test_required_route(self, gateway, http, setup, clock, key, issue_token):
        """sender_constrained = "required" refuses bearer tokens; "if_bound" takes them."""
        bearer = await issue_token(setup.app, scope="read")
        h = headers(bearer, None, "Bearer", **FORWARDED)
        assert (await gateway.get("/orders", headers=h)).status_code == 404
        r = await gateway.get("/strict", headers=h)
        assert r.status_code == 401
        token = await bound_token(http, setup, key, clock)
        h = headers(token, proof(key, "GET", PUBLIC + "/strict", token), **FORWARDED)
        assert (await gateway.get("/strict", headers=h)).status_code == 404


class TestForwardAuth:
    async def test_nginx(self, gateway, http, setup, clock, key):
        """nginx auth_request: method and URI from X-Original-*, scheme from
        X-Forwarded-Proto; the proof is judged against them."""
        token = await bound_token(http, setup, key, clock)
        nginx = {
            "X-Original-URI": "/orders?page=2",
            "X-Original-Method": "DELETE",
            "X-Original-Host": "api.example.test",
            "X-Forwarded-Proto": "https",
        }
        good = proof(key, "DELETE", PUBLIC + "/orders", token)
        r = await gateway.get("/_keystile/auth", headers=headers(token, good, **nginx))
        assert r.status_code == 200, r.text
        bad = proof(key, "GET", PUBLIC + "/orders", token)
        r = await gateway.get("/_keystile/auth", headers=headers(token, bad, **nginx))
        assert r.status_code == 401

    async def test_traefik(self, gateway, http, setup, clock, key):
        """Traefik forwardAuth: X-Forwarded-Method/-Proto/-Host/-Uri."""
        token = await bound_token(http, setup, key, clock)
        traefik = {
            "X-Forwarded-Method": "PUT",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "api.example.test",
            "X-Forwarded-Uri": "/orders/7",
        }
        good = proof(key, "PUT", PUBLIC + "/orders/7", token)
        r = await gateway.get("/_keystile/auth", headers=headers(token, good, **traefik))
        assert r.status_code == 200, r.text
        r = await gateway.get("/_keystile/auth", headers=headers(token, None, "Bearer", **traefik))
        assert r.status_code == 401

    async def test_envoy(self, gateway, http, setup, clock, key):
        """Envoy ext_authz: the original method, Host and path (after path_prefix)."""
        token = await bound_token(http, setup, key, clock)
        envoy = {"Host": "api.example.test", "X-Forwarded-Proto": "https"}
        good = proof(key, "POST", PUBLIC + "/orders/new", token)
        r = await gateway.post("/_keystile/auth/orders/new", headers=headers(token, good, **envoy))
        assert r.status_code == 200, r.text


class TestScaledOut:
    async def test_replay_refused_by_another_instance(
        self, app, http, setup, clock, key, redis_url
    ):
        """With dpop_replay_redis, a proof used at one gateway instance is refused by
        another (RFC 9449 §11.1)."""
        token = await bound_token(http, setup, key, clock)
        h = headers(token, proof(key, "GET", PUBLIC + "/orders", token), **FORWARDED)
        async with (
            make_gateway(app, setup, dpop_replay_redis=redis_url) as one,
            make_gateway(app, setup, dpop_replay_redis=redis_url) as two,
        ):
            assert (await one.get("/orders", headers=h)).status_code == 404
            r = await two.get("/orders", headers=h)
            assert r.status_code == 401
            assert "used before" in r.json()["error_description"]

    async def test_redis_down_checks_per_process(self, app, http, setup, clock, key):
        """An unreachable Redis fails no request: each instance still refuses its own
        replays."""
        token = await bound_token(http, setup, key, clock)
        h = headers(token, proof(key, "GET", PUBLIC + "/orders", token), **FORWARDED)
        async with make_gateway(app, setup, dpop_replay_redis="redis://127.0.0.1:9/0") as gw:
            assert (await gw.get("/orders", headers=h)).status_code == 404
            assert (await gw.get("/orders", headers=h)).status_code == 401

    async def test_nonces(self, app, http, setup, clock, key):
        """dpop_nonce: 401 use_dpop_nonce with DPoP-Nonce, then the retry passes (§9)."""
        token = await bound_token(http, setup, key, clock)
        async with make_gateway(app, setup, dpop_nonce=True, dpop_nonce_secret="s") as gw:
            first = headers(token, proof(key, "GET", PUBLIC + "/orders", token), **FORWARDED)
            r = await gw.get("/orders", headers=first)
            assert r.status_code == 401
            assert r.json()["error"] == "use_dpop_nonce"
            nonce = r.headers["dpop-nonce"]
            retry = proof(key, "GET", PUBLIC + "/orders", token, nonce=nonce)
            r = await gw.get("/orders", headers=headers(token, retry, **FORWARDED))
            assert r.status_code == 404, r.text
