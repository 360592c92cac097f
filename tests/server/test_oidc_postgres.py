"""OpenID Connect over the PostgreSQL store, in process: the code flow with an ID token, the
nonce refused again (the advisory-locked check), refresh, UserInfo and RP-initiated logout
that revokes the client's grants, with the same answers as on SQLite."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator

import httpx
import pytest

from keystile import admin
from keystile.clock import FixedClock
from keystile.settings import ServerSettings
from keystile.store.postgres import PostgresStore
from tests.conftest import ISSUER
from tests.server.jwt_support import WALL
from tests.server.oidc_support import (
    AUTHORIZE,
    END_SESSION,
    POST_LOGOUT,
    RP,
    TOKEN,
    USERINFO,
    allow,
    at_hash,
    auth_params,
    code_for,
    make_rp,
    query,
    verify_id_token,
)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(WALL)


@pytest.fixture
def settings(pg_url: str) -> ServerSettings:
    # PostgreSQL needs a configured key-encryption key for signing keys (docs/tokens.md).
    kek = base64.b64encode(os.urandom(32)).decode()
    return ServerSettings(db=pg_url, issuer=ISSUER, purge_interval=0, key_encryption_key=kek)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url)
    await s.open()
    yield s
    await s.close()


async def test_oidc_flow_on_postgres(
    http: httpx.AsyncClient, register_client, store: PostgresStore, clock: FixedClock
) -> None:
    """ID token (nonce, at_hash), nonce replay refused, refresh with the same sub, UserInfo,
    and logout revoking the client's grants (UserInfo then 401) on PostgreSQL."""
    rp = await make_rp(register_client, store, clock, logout_revokes_grants=True)
    params = auth_params(scope="openid email")
    code = await code_for(http, params)
    r = await http.post(
        TOKEN,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": "https://rp.example.test/cb",
            "code_verifier": "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        },
        auth=rp.creds.auth,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    claims = await verify_id_token(http, body["id_token"])
    assert claims["nonce"] == params["nonce"]
    assert claims["at_hash"] == at_hash(body["access_token"])

    again = auth_params(nonce=params["nonce"], prompt="consent")
    got = query(await allow(http, await http.get(AUTHORIZE, params=again)))
    assert got["error"] == "invalid_request"

    r = await http.post(
        TOKEN,
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        auth=rp.creds.auth,
    )
    refreshed = r.json()
    assert (await verify_id_token(http, refreshed["id_token"]))["sub"] == rp.user.user_id

    bearer = {"Authorization": f"Bearer {refreshed['access_token']}"}
    r = await http.get(USERINFO, headers=bearer)
    assert r.json() == {
        "sub": rp.user.user_id,
        "email": "alice@example.test",
        "email_verified": True,
    }

    r = await http.get(
        END_SESSION,
        params={"id_token_hint": body["id_token"], "post_logout_redirect_uri": POST_LOGOUT},
    )
    assert r.headers["location"] == POST_LOGOUT
    assert (await http.get(USERINFO, headers=bearer)).status_code == 401
    assert (await admin.get_client(store, RP)).logout_revokes_grants is True
    # Signed out: the next request asks to sign in.
    assert 'action="/login"' in (await http.get(AUTHORIZE, params=auth_params())).text
