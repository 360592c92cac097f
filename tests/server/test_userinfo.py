"""The UserInfo endpoint (OIDC Core 1.0 §5.3) and user claims (§5.1, §5.4), answering exactly
as introspection judges the access token (RFC 6750 errors), against the real app."""

from __future__ import annotations

import json

import httpx
import pytest

from keystile import admin
from keystile.clock import FixedClock
from tests.server.jwt_support import WALL
from tests.server.oidc_support import RP, USERINFO, Rp, make_rp, tokens

REVOKE = "/oauth2/revoke"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(WALL)


@pytest.fixture
async def rp(register_client, store, clock) -> Rp:
    return await make_rp(register_client, store, clock)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class TestClaims:
    async def test_openid_only_gives_sub(self, http: httpx.AsyncClient, rp: Rp) -> None:
        """§5.3.2: sub, always, equal to the ID token's; nothing the scopes did not ask for."""
        body = await tokens(http, rp, scope="openid")
        r = await http.get(USERINFO, headers=bearer(body["access_token"]))
        assert r.status_code == 200
        assert r.json() == {"sub": rp.user.user_id}
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"

    async def test_profile_and_email_scopes(self, http, rp: Rp) -> None:
        """§5.4: profile gives name and preferred_username (the username by default),
        email gives email and email_verified."""
        body = await tokens(http, rp, scope="openid profile email")
        r = await http.get(USERINFO, headers=bearer(body["access_token"]))
        assert r.json() == {
            "sub": rp.user.user_id,
            "name": "Alice Liddell",
            "preferred_username": "alice",
            "email": "alice@example.test",
            "email_verified": True,
        }

    async def test_post_with_the_header_or_the_form(self, http, rp: Rp) -> None:
        """§5.3.1: POST works too, with the Bearer header or the form field (RFC 6750
        §2.2)."""
        token = (await tokens(http, rp, scope="openid email"))["access_token"]
        r = await http.post(USERINFO, headers=bearer(token))
        assert r.status_code == 200
        assert r.json()["email"] == "alice@example.test"
        r = await http.post(USERINFO, data={"access_token": token})
        assert r.status_code == 200
        assert r.json()["sub"] == rp.user.user_id

    async def test_claims_request_userinfo_member(self, http, rp: Rp) -> None:
        """§5.5: claims asked for in the userinfo member come back without their scope,
        and only those."""
        claims = json.dumps({"userinfo": {"email": None}})
        body = await tokens(http, rp, scope="openid", claims=claims)
        r = await http.get(USERINFO, headers=bearer(body["access_token"]))
        assert r.json() == {"sub": rp.user.user_id, "email": "alice@example.test"}

    async def test_changed_claims_show_at_once(self, http, rp: Rp, store, clock) -> None:
        """`keystile user update` changes what UserInfo answers from the next call; unset
        claims are left out (§5.3.2), and a new email is unverified."""
        token = (await tokens(http, rp, scope="openid profile email"))["access_token"]
        await admin.update_user(store, clock, "alice", name="", email="a@example.test")
        r = await http.get(USERINFO, headers=bearer(token))
        assert r.json() == {
            "sub": rp.user.user_id,
            "preferred_username": "alice",
            "email": "a@example.test",
            "email_verified": False,
        }

    async def test_jwt_access_token(self, http, rp: Rp, store, clock) -> None:
        """An RFC 9068 JWT access token is accepted like an opaque one."""
        await admin.update_client(
            store,
            clock,
            RP,
            token_format="jwt",
            default_audience=["https://api.example.test"],
        )
        await admin.create_resource_server(
            store, clock, identifier="https://api.example.test", introspection_clients=[]
        )
        token = (await tokens(http, rp, scope="openid email"))["access_token"]
        assert token.count(".") == 2
        r = await http.get(USERINFO, headers=bearer(token))
        assert r.status_code == 200
        assert r.json()["email"] == "alice@example.test"


class TestErrors:
    async def test_no_token(self, http, rp: Rp) -> None:
        """RFC 6750 §3.1: no credentials: 401 with a bare Bearer challenge, no error code."""
        r = await http.get(USERINFO)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"

    async def test_revoked_token_is_refused_at_once(self, http, rp: Rp) -> None:
        """Consistent with introspection: revoked, the access token gets 401 invalid_token
        with its challenge on the very next call (RFC 6750 §3.1)."""
        token = (await tokens(http, rp))["access_token"]
        assert (await http.get(USERINFO, headers=bearer(token))).status_code == 200
        r = await http.post(REVOKE, data={"token": token}, auth=rp.creds.auth)
        assert r.status_code == 200
        r = await http.get(USERINFO, headers=bearer(token))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_token"
        assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')

    async def test_revoked_grant(self, http, rp: Rp) -> None:
        """Revoking the refresh token revokes the grant and so the access token too."""
        body = await tokens(http, rp)
        await http.post(REVOKE, data={"token": body["refresh_token"]}, auth=rp.creds.auth)
        r = await http.get(USERINFO, headers=bearer(body["access_token"]))
        assert r.status_code == 401

    async def test_expired_token(self, http, rp: Rp, clock) -> None:
        token = (await tokens(http, rp))["access_token"]
        clock.advance(3600)
        r = await http.get(USERINFO, headers=bearer(token))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_token"

    async def test_disabled_user(self, http, rp: Rp, store, clock) -> None:
        """Disabling the user revokes their tokens: invalid_token."""
        token = (await tokens(http, rp))["access_token"]
        await admin.set_user_enabled(store, clock, "alice", False)
        assert (await http.get(USERINFO, headers=bearer(token))).status_code == 401

    @pytest.mark.parametrize(
        "token", ["ks_at_garbage", "not-a-token", "a.b.c", "ks_rt_" + "A" * 49]
    )
    async def test_unknown_tokens(self, http, rp: Rp, token: str) -> None:
        r = await http.get(USERINFO, headers=bearer(token))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_token"

    async def test_refresh_token_is_not_an_access_token(self, http, rp: Rp) -> None:
        body = await tokens(http, rp)
        r = await http.get(USERINFO, headers=bearer(body["refresh_token"]))
        assert r.status_code == 401

    async def test_token_without_openid(self, http, rp: Rp) -> None:
        """§5.3.1 (RFC 6750 §3.1): an access token of a plain OAuth grant lacks the openid
        scope: 403 insufficient_scope, naming the scope."""
        token = (await tokens(http, rp, scope="read"))["access_token"]
        r = await http.get(USERINFO, headers=bearer(token))
        assert r.status_code == 403
        assert r.json()["error"] == "insufficient_scope"
        assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope", scope="openid"'

    async def test_client_credentials_token(self, http, rp: Rp, register_client) -> None:
        """A machine's token names no user: invalid_token."""
        m2m = await register_client("m2m", scopes=["openid"])
        r = await http.post(TOKEN_PATH, data={"grant_type": "client_credentials"}, auth=m2m.auth)
        token = r.json()["access_token"]
        r = await http.get(USERINFO, headers=bearer(token))
        assert r.status_code == 401

    async def test_two_methods_at_once(self, http, rp: Rp) -> None:
        """RFC 6750 §2: a token in the header and the body is invalid_request (400)."""
        token = (await tokens(http, rp))["access_token"]
        r = await http.post(USERINFO, headers=bearer(token), data={"access_token": token})
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"

    async def test_malformed_header(self, http, rp: Rp) -> None:
        r = await http.get(USERINFO, headers={"Authorization": "Bearer a b"})
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"


TOKEN_PATH = "/oauth2/token"
