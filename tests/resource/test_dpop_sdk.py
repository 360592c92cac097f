"""The SDK's sender checks (keystile.resource.sender, RFC 9449 §7, RFC 8705 §3): a real AS
issues DPoP-bound tokens in-process, a TokenValidator introspects them, and the ASGI
middleware checks every request's proof against the introspected cnf."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keystile.clock import FixedClock
from keystile.core.dpop_state import NonceSource
from keystile.resource import TokenValidator
from keystile.resource.middleware import BearerAuthMiddleware
from keystile.resource.sender import SenderCheck
from tests.conftest import API, ISSUER, TOKEN, Setup
from tests.dpop_support import DpopKey

API_URL = "https://api.example.test/orders"
CC = {"grant_type": "client_credentials"}


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def key() -> DpopKey:
    return DpopKey("ES256")


@pytest.fixture
async def validator(app, setup: Setup) -> AsyncIterator[TokenValidator]:
    as_http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER)
    v = TokenValidator(
        introspection_endpoint=ISSUER + "/oauth2/introspect",
        client_id=setup.rs.client_id,
        client_secret=setup.rs.secret,
        events=False,
        audience=API,
        http=as_http,
    )
    yield v
    await v.close()
    await as_http.aclose()


def api_client(validator: TokenValidator, clock: FixedClock, **sender: Any) -> httpx.AsyncClient:
    """The API behind the middleware; clients use https://api.example.test (a TLS proxy)."""
    check = SenderCheck(clock=clock.now, **sender)
    mw = BearerAuthMiddleware(ok_app, validator, sender=check, origin="https://api.example.test")
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=mw), base_url="http://internal")


async def bound_token(http, setup: Setup, key: DpopKey, clock: FixedClock) -> str:
    proof = key.proof("POST", ISSUER + TOKEN, clock.now())
    r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers={"DPoP": proof})
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    return str(r.json()["access_token"])


def call(token: str, proof: str | None, scheme: str = "DPoP") -> dict[str, str]:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return headers


def assert_refused(r: httpx.Response, error: str) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"] == error
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert 'algs="ES256 EdDSA Ed25519 RS256"' in challenge
    assert f'error="{error}"' in challenge


class TestBoundToken:
    async def test_accepted_and_cached(self, http, setup, validator, clock, key):
        """The right proof passes; a second request with a new proof is served from the
        cache (one introspection) and its proof is still checked (RFC 9449 §7.1)."""
        token = await bound_token(http, setup, key, clock)
        async with api_client(validator, clock) as api:
            for _ in range(2):
                proof = key.proof("GET", API_URL, clock.now(), access_token=token)
                r = await api.get("/orders", headers=call(token, proof))
                assert r.status_code == 200, r.text
            assert validator.introspections == 1
            replay = key.proof("GET", API_URL, clock.now(), access_token=token)
            assert (await api.get("/orders", headers=call(token, replay))).status_code == 200
            r = await api.get("/orders", headers=call(token, replay))
            assert_refused(r, "invalid_dpop_proof")  # replayed jti (§11.1)
            assert validator.introspections == 1

    async def test_copied_token_without_key(self, http, setup, validator, clock, key):
        """A copied token is useless: as Bearer it is refused (§7.2), with no proof or a
        proof by another key too."""
        token = await bound_token(http, setup, key, clock)
        thief = DpopKey("ES256")
        async with api_client(validator, clock) as api:
            assert_refused(
                await api.get("/orders", headers=call(token, None, "Bearer")), "invalid_token"
            )
            assert_refused(
                await api.get("/orders", headers=call(token, None)), "invalid_dpop_proof"
            )
            stolen = thief.proof("GET", API_URL, clock.now(), access_token=token)
            r = await api.get("/orders", headers=call(token, stolen))
            assert_refused(r, "invalid_dpop_proof")
            assert "another key" in r.json()["error_description"]

    @pytest.mark.parametrize(
        ("make", "why"),
        [
            (lambda k, t, now: k.proof("POST", API_URL, now, access_token=t), "htm"),
            (
                lambda k, t, now: k.proof(
                    "GET", "https://api.example.test/other", now, access_token=t
                ),
                "htu",
            ),
            (
                lambda k, t, now: k.proof(
                    "GET", "http://api.example.test/orders", now, access_token=t
                ),
                "htu",
            ),
            (lambda k, t, now: k.proof("GET", API_URL, now - 600, access_token=t), "old"),
            (lambda k, t, now: k.proof("GET", API_URL, now, access_token="other"), "ath"),
            (lambda k, t, now: k.proof("GET", API_URL, now), "ath"),
            (
                lambda k, t, now: k.proof(
                    "GET", API_URL, now, access_token=t, header={"typ": "JWT"}
                ),
                "typ",
            ),
        ],
    )
    async def test_bad_proof(self, http, setup, validator, clock, key, make, why):
        """Wrong htm, htu (path, scheme), a stale iat, a wrong or missing ath, a wrong typ:
        401 invalid_dpop_proof naming the check (RFC 9449 §4.3, §7.1)."""
        token = await bound_token(http, setup, key, clock)
        async with api_client(validator, clock) as api:
            r = await api.get("/orders", headers=call(token, make(key, token, clock.now())))
        assert_refused(r, "invalid_dpop_proof")
        assert why in r.json()["error_description"]

    async def test_query_not_part_of_htu(self, http, setup, validator, clock, key):
        """A request with a query matches a proof whose htu has none (§4.3)."""
        token = await bound_token(http, setup, key, clock)
        async with api_client(validator, clock) as api:
            proof = key.proof("GET", API_URL, clock.now(), access_token=token)
            r = await api.get("/orders?page=2", headers=call(token, proof))
        assert r.status_code == 200, r.text

    async def test_nonce(self, http, setup, validator, clock, key):
        """With nonces on: 401 use_dpop_nonce and a DPoP-Nonce header (§9); the retry with
        it passes."""
        token = await bound_token(http, setup, key, clock)
        async with api_client(validator, clock, nonces=NonceSource(b"n" * 32)) as api:
            proof = key.proof("GET", API_URL, clock.now(), access_token=token)
            r = await api.get("/orders", headers=call(token, proof))
            assert_refused(r, "use_dpop_nonce")
            nonce = r.headers["dpop-nonce"]
            proof = key.proof("GET", API_URL, clock.now(), access_token=token, nonce=nonce)
            assert (await api.get("/orders", headers=call(token, proof))).status_code == 200

    async def test_without_sender_check_refused(self, http, setup, validator, clock, key):
        """Middleware without a SenderCheck refuses bound tokens: it cannot check them."""
        token = await bound_token(http, setup, key, clock)
        mw = BearerAuthMiddleware(ok_app, validator)
        transport = httpx.ASGITransport(app=mw)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://api.example.test"
        ) as api:
            r = await api.get("/orders", headers=call(token, None, "Bearer"))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_token"


class TestUnboundToken:
    async def test_bearer_if_bound(self, http, setup, validator, clock, issue_token):
        """mode if_bound: an unbound token is a bearer token as before."""
        token = await issue_token(setup.app)
        async with api_client(validator, clock) as api:
            assert (
                await api.get("/orders", headers=call(token, None, "Bearer"))
            ).status_code == 200
            # The DPoP scheme is for bound tokens only (§7.1).
            assert_refused(await api.get("/orders", headers=call(token, None)), "invalid_token")

    async def test_required(self, http, setup, validator, clock, issue_token):
        """mode required: an unbound token is refused."""
        token = await issue_token(setup.app)
        async with api_client(validator, clock, mode="required") as api:
            r = await api.get("/orders", headers=call(token, None, "Bearer"))
        assert_refused(r, "invalid_token")


def test_jwt_principal_carries_cnf(key):
    """A locally validated JWT access token's cnf (RFC 9449 §6.1) binds like an introspected
    one: the same SenderCheck refuses it as Bearer."""
    from keystile.resource.jwt import principal_from_claims
    from keystile.resource.sender import SenderRefused

    now = 1_800_000_000
    claims = {
        "iss": ISSUER,
        "aud": API,
        "sub": "app-1",
        "client_id": "app-1",
        "jti": "j",
        "iat": now,
        "exp": now + 60,
        "cnf": {"jkt": key.jkt},
    }
    principal = principal_from_claims(claims, issuer=ISSUER, audience=API, now=now, leeway=30)
    check = SenderCheck(clock=lambda: now)
    with pytest.raises(SenderRefused, match="DPoP-bound"):
        check.check(principal, scheme="bearer", token="t", proof=None, method="GET", url=API_URL)
    proof = key.proof("GET", API_URL, now, access_token="t")
    check.check(principal, scheme="dpop", token="t", proof=proof, method="GET", url=API_URL)


def test_request_url_shapes():
    """request_url: origin wins; else scheme and Host; root_path counted once, whether the
    server put it in path (uvicorn) or not (the ASGI spec)."""
    from keystile.resource.sender import request_url

    scope = {"scheme": "http", "headers": [(b"host", b"api.internal:8080")], "path": "/orders"}
    assert request_url(scope) == "http://api.internal:8080/orders"
    assert request_url(scope, "https://api.example.com/") == "https://api.example.com/orders"
    mounted = {**scope, "root_path": "/v1", "path": "/orders"}
    assert request_url(mounted) == "http://api.internal:8080/v1/orders"
    uvicorn_style = {**scope, "root_path": "/v1", "path": "/v1/orders"}
    assert request_url(uvicorn_style) == "http://api.internal:8080/v1/orders"
