"""Signed introspection answers (RFC 9701), per resource server: json, jwt or jwt-required."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import jwt as pyjwt
import pytest

from keystile import admin
from keystile.clock import FixedClock
from tests.conftest import API, INTROSPECT, ISSUER, TOKEN, Creds, RegisterClient
from tests.server.jwt_support import INTROSPECTION_JWT, METADATA, WALL, fetch_jwks, pyjwt_verify

CC = {"grant_type": "client_credentials"}
ASK_JWT = {"Accept": INTROSPECTION_JWT}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(WALL)


@dataclass
class Setup:
    app: Creds  # opaque tokens for API
    jwt_app: Creds  # JWT tokens for API
    rs: Creds  # introspects for API


@pytest.fixture
async def setup(
    register_client: RegisterClient, register_resource: Callable[..., Awaitable[None]]
) -> Setup:
    app = await register_client("app-1", default_audience=[API])
    jwt_app = await register_client("jwt-app", default_audience=[API], token_format="jwt")
    rs = await register_client("rs-1", grant_types=[], scopes=[])
    await register_resource(API, ["rs-1"], introspection_response="jwt")
    return Setup(app, jwt_app, rs)


async def issue(http: httpx.AsyncClient, creds: Creds) -> str:
    r = await http.post(TOKEN, data=CC, auth=creds.auth)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def ask(
    http: httpx.AsyncClient, rs: Creds, token: str, accept: str | None = INTROSPECTION_JWT
) -> httpx.Response:
    headers = {"Accept": accept} if accept is not None else {}
    return await http.post(INTROSPECT, data={"token": token}, auth=rs.auth, headers=headers)


async def set_mode(store, clock, mode: str) -> None:
    await admin.update_resource_server(store, clock, API, introspection_response=mode)


class TestSignedAnswer:
    async def test_verifies_against_jwks_with_typ_aud_and_claims(self, http, setup, clock):
        """A JWT typ token-introspection+jwt with iss, aud = caller and iat (RFC 9701 §5)."""
        token = await issue(http, setup.app)
        plain = (await ask(http, setup.rs, token, accept=None)).json()

        r = await ask(http, setup.rs, token)

        assert r.status_code == 200
        assert r.headers["content-type"] == INTROSPECTION_JWT
        assert r.headers["cache-control"] == "no-store"
        claims = pyjwt_verify(
            r.text, await fetch_jwks(http), audience="rs-1", typ="token-introspection+jwt"
        )
        assert claims == {
            "iss": ISSUER,
            "aud": "rs-1",
            "iat": clock.now(),
            "token_introspection": plain,
        }
        assert plain["active"] is True

    async def test_jwt_access_token_in_a_signed_answer(self, http, setup):
        """A JWT access token's answer is signed too, with its RFC 7662 members (RFC 9701 §5)."""
        token = await issue(http, setup.jwt_app)

        r = await ask(http, setup.rs, token)

        claims = pyjwt.decode(r.text, options={"verify_signature": False})
        assert claims["token_introspection"]["client_id"] == "jwt-app"
        assert claims["token_introspection"]["active"] is True

    async def test_inactive_answer_holds_only_active_false(self, http, setup):
        """An unknown token's signed answer holds only {"active": false} (RFC 9701 §5)."""
        r = await ask(http, setup.rs, "ks_at_" + "A" * 49)

        claims = pyjwt_verify(
            r.text, await fetch_jwks(http), audience="rs-1", typ="token-introspection+jwt"
        )
        assert claims["token_introspection"] == {"active": False}

    async def test_metadata_advertises_signing_algs(self, http, setup):
        """Metadata lists jwks_uri and the introspection signing algorithms (RFC 9701 §7)."""
        await issue(http, setup.jwt_app)

        body = (await http.get(METADATA)).json()

        assert body["introspection_signing_alg_values_supported"] == ["ES256"]
        assert body["jwks_uri"] == ISSUER + "/oauth2/jwks"


class TestNegotiation:
    @pytest.mark.parametrize(
        "accept",
        [
            None,
            "application/json",
            "*/*",
            f"{INTROSPECTION_JWT};q=0, application/json",
        ],
    )
    async def test_jwt_mode_answers_json_unless_asked(self, http, setup, accept):
        """In mode jwt, a caller not asking for a JWT (or refusing it) gets JSON (RFC 9701 §4)."""
        token = await issue(http, setup.app)

        r = await ask(http, setup.rs, token, accept=accept)

        assert r.headers["content-type"] == "application/json"
        assert r.json()["active"] is True

    async def test_jwt_among_other_types_is_chosen(self, http, setup):
        """The JWT type among others, with q > 0, gets the JWT (RFC 9110 §12.5.1)."""
        token = await issue(http, setup.app)

        r = await ask(http, setup.rs, token, accept=f"application/json;q=0.5, {INTROSPECTION_JWT}")

        assert r.headers["content-type"] == INTROSPECTION_JWT

    async def test_json_mode_disregards_accept(self, http, setup, store, clock):
        """The default mode json answers JSON even to a JWT-only Accept (RFC 9110 §12.5.1)."""
        await set_mode(store, clock, "json")
        token = await issue(http, setup.app)

        r = await ask(http, setup.rs, token)

        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"

    async def test_required_mode_refuses_plain_json_with_406(self, http, setup, store, clock):
        """In mode jwt-required, not asking for a JWT gets 406 and no token data (RFC 9701 §4)."""
        await set_mode(store, clock, "jwt-required")
        token = await issue(http, setup.app)

        for accept in (None, "application/json"):
            r = await ask(http, setup.rs, token, accept=accept)
            assert r.status_code == 406
            assert r.json()["error"] == "invalid_request"
            assert "active" not in r.text
        assert (await ask(http, setup.rs, token)).headers["content-type"] == INTROSPECTION_JWT

    async def test_jwt_mode_refuses_an_impossible_accept(self, http, setup):
        """An Accept naming neither JSON nor the JWT gets 406 in mode jwt (RFC 9110 §15.5.7)."""
        token = await issue(http, setup.app)

        r = await ask(http, setup.rs, token, accept="text/html")

        assert r.status_code == 406

    async def test_cached_caller_gets_the_new_mode(self, http, setup, store, clock):
        """A mode change reaches callers whose credentials are cached (the registry version)."""
        token = await issue(http, setup.app)
        assert (await ask(http, setup.rs, token)).headers["content-type"] == INTROSPECTION_JWT

        await set_mode(store, clock, "json")

        assert (await ask(http, setup.rs, token)).headers["content-type"] == "application/json"
