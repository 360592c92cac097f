"""RP-initiated logout (RP-Initiated Logout 1.0 §2, §3) at GET|POST /oauth2/logout, against the
real app and a real SQLite file."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keystile import admin
from keystile.clock import FixedClock
from tests.conftest import ISSUER
from tests.server.jwt_support import WALL
from tests.server.oidc_support import (
    AUTHORIZE,
    END_SESSION,
    POST_LOGOUT,
    RP,
    TOKEN,
    USERINFO,
    Rp,
    auth_params,
    make_rp,
    tokens,
)
from tests.server.test_authorize import hidden


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(WALL)


@pytest.fixture
async def rp(register_client, store, clock) -> Rp:
    return await make_rp(register_client, store, clock)


async def signed_in(http: httpx.AsyncClient, rp: Rp, **params: str) -> dict[str, object]:
    """Sign in through the code flow; the token response (with its ID token)."""
    return await tokens(http, rp, scope="openid", **params)


async def still_signed_in(http: httpx.AsyncClient) -> bool:
    r = await http.get(AUTHORIZE, params=auth_params())
    return 'action="/login"' not in r.text


def redirected(r: httpx.Response) -> tuple[str, dict[str, list[str]]]:
    assert r.status_code in (302, 303), r.text
    parts = urlsplit(r.headers["location"])
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


class TestWithIdTokenHint:
    async def test_logout_returns_to_the_rp_with_state(self, http, rp: Rp) -> None:
        """§2, §3: a valid id_token_hint for the signed-in user ends the session at once
        and redirects to the registered post_logout_redirect_uri with state."""
        body = await signed_in(http, rp)
        r = await http.get(
            END_SESSION,
            params={
                "id_token_hint": body["id_token"],
                "post_logout_redirect_uri": POST_LOGOUT,
                "state": "bye 1",
            },
        )
        target, query = redirected(r)
        assert target == POST_LOGOUT
        assert query == {"state": ["bye 1"]}
        assert "__Host-ks_session=" in r.headers["set-cookie"]
        assert not await still_signed_in(http)
        # The client's grants are kept by default: its tokens still work.
        ok = await http.get(USERINFO, headers={"Authorization": f"Bearer {body['access_token']}"})
        assert ok.status_code == 200

    async def test_client_setting_revokes_its_grants(self, http, rp: Rp, store, clock) -> None:
        """With --logout-revokes-grants the client's grants for the user are revoked too:
        access tokens get 401 at UserInfo, refresh tokens no longer work."""
        await admin.update_client(store, clock, RP, logout_revokes_grants=True)
        body = await signed_in(http, rp)
        r = await http.get(END_SESSION, params={"id_token_hint": body["id_token"]})
        assert r.status_code == 200
        assert "You are signed out" in r.text
        r = await http.get(USERINFO, headers={"Authorization": f"Bearer {body['access_token']}"})
        assert r.status_code == 401
        r = await http.post(
            TOKEN,
            data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
            auth=rp.creds.auth,
        )
        assert r.json()["error"] == "invalid_grant"

    async def test_post_works_too(self, http, rp: Rp) -> None:
        """§2: the OP supports POST with the same parameters as a form."""
        body = await signed_in(http, rp)
        r = await http.post(
            END_SESSION,
            data={"id_token_hint": body["id_token"], "post_logout_redirect_uri": POST_LOGOUT},
        )
        assert r.status_code == 303
        assert r.headers["location"] == POST_LOGOUT
        assert not await still_signed_in(http)

    async def test_expired_hint_is_accepted(self, http, rp: Rp, clock) -> None:
        """§2: an ID token past its exp still names the user and the RP."""
        body = await signed_in(http, rp)
        clock.advance(7200)
        r = await http.get(
            END_SESSION,
            params={"id_token_hint": body["id_token"], "post_logout_redirect_uri": POST_LOGOUT},
        )
        assert redirected(r)[0] == POST_LOGOUT

    async def test_hint_for_another_user_asks(self, http, http_from, rp: Rp, store, clock) -> None:
        """A hint naming someone other than who is signed in here: the person is asked."""
        body = await signed_in(http, rp)  # alice's ID token
        await admin.create_user(store, clock, username="bob", password="another long password")
        # Another browser, where bob is signed in, gets a logout request with alice's hint.
        async with http_from("198.51.100.9") as other:
            page = await other.get(AUTHORIZE, params=auth_params())
            r = await other.post(
                "/login",
                data={**hidden(page.text), "username": "bob", "password": "another long password"},
            )
            assert r.status_code == 303
            r = await other.get(END_SESSION, params={"id_token_hint": body["id_token"]})
            assert r.status_code == 200
            assert "asks to sign you out" in r.text
            assert await still_signed_in(other)


class TestConfirmation:
    async def test_without_hint_the_person_confirms(self, http, rp: Rp) -> None:
        """§2: without id_token_hint the OP asks; Sign out (with its CSRF token) ends the
        session and then redirects as asked (client_id names the client)."""
        await signed_in(http, rp)
        params = {"client_id": RP, "post_logout_redirect_uri": POST_LOGOUT, "state": "s1"}
        page = await http.get(END_SESSION, params=params)
        assert page.status_code == 200
        assert "Example RP" in page.text
        assert await still_signed_in(http)
        r = await http.post(END_SESSION, data={**hidden(page.text), "decision": "logout"})
        target, query = redirected(r)
        assert (target, query) == (POST_LOGOUT, {"state": ["s1"]})
        assert not await still_signed_in(http)

    async def test_stay_signed_in(self, http, rp: Rp) -> None:
        await signed_in(http, rp)
        page = await http.get(END_SESSION)
        r = await http.post(END_SESSION, data={**hidden(page.text), "decision": "stay"})
        assert r.status_code == 200
        assert await still_signed_in(http)

    async def test_confirmation_needs_its_csrf_token(self, http, rp: Rp) -> None:
        """A forged confirmation (wrong CSRF token) changes nothing: 403."""
        await signed_in(http, rp)
        page = await http.get(END_SESSION)
        fields = {**hidden(page.text), "csrf": "forged", "decision": "logout"}
        r = await http.post(END_SESSION, data=fields)
        assert r.status_code == 403
        assert await still_signed_in(http)

    async def test_nobody_signed_in(self, http, rp: Rp) -> None:
        """No session: nothing to end, straight back to the RP (§3)."""
        r = await http.get(
            END_SESSION, params={"client_id": RP, "post_logout_redirect_uri": POST_LOGOUT}
        )
        assert redirected(r)[0] == POST_LOGOUT


class TestRefused:
    @pytest.mark.parametrize(
        "uri",
        [
            "https://evil.example/out",
            POST_LOGOUT + "/",
            POST_LOGOUT + "?x=1",
            POST_LOGOUT.upper(),
        ],
    )
    async def test_unregistered_post_logout_uri(self, http, rp: Rp, uri: str) -> None:
        """§3: post_logout_redirect_uri is compared exactly with the registered ones; no
        match: an error page, no redirect, and the session stays."""
        body = await signed_in(http, rp)
        r = await http.get(
            END_SESSION, params={"id_token_hint": body["id_token"], "post_logout_redirect_uri": uri}
        )
        assert r.status_code == 400
        assert "location" not in r.headers
        assert await still_signed_in(http)

    async def test_uri_without_a_client(self, http, rp: Rp) -> None:
        """§3: a post_logout_redirect_uri with neither id_token_hint nor client_id."""
        r = await http.get(END_SESSION, params={"post_logout_redirect_uri": POST_LOGOUT})
        assert r.status_code == 400

    async def test_client_id_must_match_the_hint(self, http, rp: Rp, register_client) -> None:
        """§2: client_id, when sent with id_token_hint, is the hint's audience."""
        await register_client("rp-2", redirect_uris=[POST_LOGOUT], scopes=["openid"])
        body = await signed_in(http, rp)
        r = await http.get(
            END_SESSION, params={"id_token_hint": body["id_token"], "client_id": "rp-2"}
        )
        assert r.status_code == 400

    async def test_forged_hint(self, http, rp: Rp) -> None:
        """An ID token signed by a key we do not publish is no hint."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = int(time.time())
        forged = pyjwt.encode(
            {"iss": ISSUER, "sub": rp.user.user_id, "aud": RP, "iat": now, "at_hash": "x"},
            key,
            algorithm="ES256",
            headers={"kid": "not-ours"},
        )
        r = await http.get(
            END_SESSION, params={"id_token_hint": forged, "post_logout_redirect_uri": POST_LOGOUT}
        )
        assert r.status_code == 400

    async def test_access_token_is_not_a_hint(self, http, rp: Rp, store, clock) -> None:
        """A JWT access token is signed by the same keys but is not an ID token."""
        await admin.update_client(
            store, clock, RP, token_format="jwt", default_audience=["https://api.example.test"]
        )
        await admin.create_resource_server(
            store, clock, identifier="https://api.example.test", introspection_clients=[]
        )
        body = await signed_in(http, rp)
        r = await http.get(END_SESSION, params={"id_token_hint": body["access_token"]})
        assert r.status_code == 400
        r = await http.get(END_SESSION, params={"id_token_hint": body["id_token"]})
        assert r.status_code == 200
