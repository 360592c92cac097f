"""The token endpoint for people: the authorization code grant with PKCE (RFC 6749 §4.1.3,
RFC 7636 §4.5-4.6), refresh tokens with rotation and reuse detection (RFC 6749 §6,
RFC 9700 §4.14), and the revocation cascade matrix (docs/users.md), over HTTP.

Codes are put in the store the way the authorization endpoint does it (tests/server/
test_authorize.py drives that endpoint through its pages), so each rule of the token
endpoint is checked on its own here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from keystile.clock import FixedClock
from keystile.core import pkce
from keystile.core.models import AuthorizationCode, Grant, User
from keystile.core.passwords import hash_password
from keystile.core.tokens import new_authorization_code, token_hash
from keystile.store.base import Store
from tests.conftest import API, OTHER_API, TOKEN, Creds, Setup

REDIRECT = "https://app.example.test/callback"
NATIVE_REDIRECT = "http://127.0.0.1:8765/cb"

_PASSWORD_HASH = hash_password("correct horse battery")  # once: argon2id is slow on purpose


@dataclass
class Flow:
    """A client able to run the code flow, and the user it runs it for."""

    client_id: str
    secret: str | None  # None: a public client
    redirect_uri: str
    user: User

    def auth(self) -> dict[str, Any]:
        return {"auth": (self.client_id, self.secret)} if self.secret else {}

    def ident(self) -> dict[str, str]:
        return {} if self.secret else {"client_id": self.client_id}


async def _user(store: Store, clock: FixedClock, name: str = "alice") -> User:
    user = User(
        user_id="usr_" + secrets.token_urlsafe(12),
        username=name,
        password_hash=_PASSWORD_HASH,
        enabled=True,
        created_at=clock.now(),
        updated_at=clock.now(),
    )
    await store.create_user(user)
    return user


async def _code_client(
    store: Store, register_client: Any, client_id: str, *, public: bool = False, **changes: Any
) -> Creds:
    creds: Creds = await register_client(client_id, default_audience=[API])
    client = await store.get_client(client_id)
    assert client is not None
    fields: dict[str, Any] = {
        "grant_types": frozenset({"authorization_code", "refresh_token"}),
        "redirect_uris": (REDIRECT, NATIVE_REDIRECT),
    }
    if public:
        fields["auth_method"] = "none"
    fields.update(changes)
    await store.update_client(replace(client, **fields))
    return creds


@pytest.fixture
async def flow(store, clock, register_client, setup: Setup) -> Flow:
    creds = await _code_client(store, register_client, "web-app")
    return Flow("web-app", creds.secret, REDIRECT, await _user(store, clock))


@pytest.fixture
async def public_flow(store, clock, register_client, setup: Setup) -> Flow:
    await _code_client(store, register_client, "spa", public=True)
    return Flow("spa", None, NATIVE_REDIRECT, await _user(store, clock, "bob"))


async def authorize(
    store: Store,
    clock: FixedClock,
    flow: Flow,
    *,
    scope: frozenset[str] = frozenset({"read", "write"}),
    aud: tuple[str, ...] = (API,),
    ttl: int = 60,
) -> tuple[str, str]:
    """What the authorization endpoint does once the user allowed: a grant and its code.
    Returns (code, code_verifier)."""
    now = clock.now()
    client = await store.get_client(flow.client_id)
    assert client is not None
    verifier = secrets.token_urlsafe(48)
    grant = Grant(
        grant_id="gr_" + secrets.token_urlsafe(12),
        client_id=flow.client_id,
        user_id=flow.user.user_id,
        username=flow.user.username,
        scope=scope,
        aud=aud,
        created_at=now,
        auth_time=now - 5,
        expires_at=now + client.refresh_token_max_ttl,
    )
    code = new_authorization_code()
    await store.create_authorization_code(
        grant,
        AuthorizationCode(
            code_hash=token_hash(code),
            grant_id=grant.grant_id,
            client_id=flow.client_id,
            redirect_uri=flow.redirect_uri,
            code_challenge=pkce.s256(verifier),
            created_at=now,
            expires_at=now + ttl,
        ),
    )
    return code, verifier


async def redeem(
    http: httpx.AsyncClient, flow: Flow, the_code: str, verifier: str, **form: Any
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": the_code,
        "redirect_uri": flow.redirect_uri,
        "code_verifier": verifier,
        **flow.ident(),
        **form,
    }
    return await http.post(
        TOKEN, data={k: v for k, v in data.items() if v is not None}, **flow.auth()
    )


async def refresh(http: httpx.AsyncClient, flow: Flow, token: str, **form: Any) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": token, **flow.ident(), **form}
    return await http.post(TOKEN, data=data, **flow.auth())


async def tokens_for(http, store, clock, flow: Flow, **kwargs: Any) -> dict[str, Any]:
    code, verifier = await authorize(store, clock, flow, **kwargs)
    r = await redeem(http, flow, code, verifier)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def active(introspect, setup: Setup, token: str, **form: Any) -> bool:
    r = await introspect(setup.rs, token, **form)
    assert r.status_code == 200, r.text
    return bool(r.json()["active"])


def assert_invalid_grant(r: httpx.Response) -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    assert r.headers["cache-control"] == "no-store"


class TestAuthorizationCode:
    async def test_code_gives_user_tokens(self, http, store, clock, flow, setup, introspect):
        """RFC 6749 §4.1.4/§5.1: access and refresh token; introspection of the access token
        names the user in sub and username (RFC 7662 §2.2)."""
        body = await tokens_for(http, store, clock, flow)

        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert body["scope"] == "read write"
        assert body["refresh_token"].startswith("ks_rt_")
        r = await introspect(setup.rs, body["access_token"])
        info = r.json()
        assert info["active"] is True
        assert info["sub"] == flow.user.user_id
        assert info["username"] == "alice"
        assert info["client_id"] == "web-app"
        assert info["aud"] == API
        assert info["scope"] == "read write"

    async def test_public_client_redeems_with_client_id_only(
        self, http, store, clock, public_flow, setup, introspect
    ):
        """A public client is identified by client_id (RFC 6749 §3.2.1, §4.1.3); PKCE is
        what binds the code to it (RFC 7636 §1)."""
        body = await tokens_for(http, store, clock, public_flow)

        assert await active(introspect, setup, body["access_token"])
        r = await introspect(setup.rs, body["access_token"])
        assert r.json()["username"] == "bob"

    async def test_confidential_client_must_authenticate(self, http, store, clock, flow):
        """Naming a confidential client without its secret is no authentication (§3.2.1)."""
        code, verifier = await authorize(store, clock, flow)
        r = await redeem(http, replace(flow, secret=None), code, verifier)

        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"
        assert "www-authenticate" in r.headers
        # The code was not touched: the real client still redeems it.
        assert (await redeem(http, flow, code, verifier)).status_code == 200

    async def test_public_client_gets_no_client_credentials(self, http, public_flow):
        """Only confidential clients may use client_credentials (RFC 6749 §4.4)."""
        r = await http.post(
            TOKEN, data={"grant_type": "client_credentials", "client_id": public_flow.client_id}
        )
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"

    async def test_wrong_verifier_fails_and_uses_up_the_code(self, http, store, clock, flow):
        """RFC 7636 §4.6: a verifier that does not hash to the challenge is invalid_grant;
        the code is single use (RFC 6749 §4.1.2), so a guess costs it."""
        code, verifier = await authorize(store, clock, flow)

        assert_invalid_grant(await redeem(http, flow, code, secrets.token_urlsafe(48)))
        assert_invalid_grant(await redeem(http, flow, code, verifier))

    @pytest.mark.parametrize(
        "verifier", ["short", "x" * 129, "has spaces in it and is long enough to pass 43 chars"]
    )
    async def test_malformed_verifier(self, http, store, clock, flow, verifier):
        """RFC 7636 §4.1: 43-128 unreserved characters."""
        code, _ = await authorize(store, clock, flow)
        assert_invalid_grant(await redeem(http, flow, code, verifier))

    @pytest.mark.parametrize(
        "redirect_uri",
        [REDIRECT + "/", REDIRECT + "?x=1", NATIVE_REDIRECT, "https://APP.example.test/callback"],
    )
    async def test_redirect_uri_must_be_the_same(self, http, store, clock, flow, redirect_uri):
        """RFC 6749 §4.1.3: identical to the authorization request's (simple string
        comparison, RFC 9700 §2.1), even where both are registered."""
        code, verifier = await authorize(store, clock, flow)
        assert_invalid_grant(await redeem(http, flow, code, verifier, redirect_uri=redirect_uri))

    @pytest.mark.parametrize("missing", ["code", "redirect_uri", "code_verifier"])
    async def test_missing_parameter_keeps_the_code(self, http, store, clock, flow, missing):
        """A malformed request is invalid_request (RFC 6749 §5.2) and leaves the code usable."""
        code, verifier = await authorize(store, clock, flow)
        r = await redeem(http, flow, code, verifier, **{missing: None})

        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"
        assert missing in r.json()["error_description"]
        assert (await redeem(http, flow, code, verifier)).status_code == 200

    async def test_code_of_another_client(self, http, store, clock, flow, public_flow):
        """RFC 6749 §4.1.3: the code must have been issued to the authenticated client."""
        code, verifier = await authorize(store, clock, flow)
        stolen = replace(public_flow, redirect_uri=flow.redirect_uri)
        assert_invalid_grant(await redeem(http, stolen, code, verifier))

    async def test_expired_code(self, http, store, clock, flow):
        """Codes are short-lived (RFC 6749 §4.1.2: 10 minutes at most; ours: 60 s)."""
        code, verifier = await authorize(store, clock, flow)
        clock.advance(60)
        assert_invalid_grant(await redeem(http, flow, code, verifier))

    @pytest.mark.parametrize("code", ["nonsense", "ks_at_" + "A" * 49, "ks_ac_" + "A" * 49])
    async def test_garbage_code(self, http, flow, code):
        """Not a keystile code at all: invalid_grant without a lookup."""
        assert_invalid_grant(await redeem(http, flow, code, secrets.token_urlsafe(48)))

    async def test_client_without_the_grant(self, http, store, clock, flow):
        """unauthorized_client (RFC 6749 §5.2) when the client may not use this grant."""
        client = await store.get_client(flow.client_id)
        await store.update_client(replace(client, grant_types=frozenset({"client_credentials"})))
        code, verifier = await authorize(store, clock, flow)

        r = await redeem(http, flow, code, verifier)
        assert r.status_code == 400
        assert r.json()["error"] == "unauthorized_client"

    async def test_no_refresh_token_without_the_refresh_grant(self, http, store, clock, flow):
        """A client without the refresh_token grant gets an access token only (§4.1.4)."""
        client = await store.get_client(flow.client_id)
        await store.update_client(replace(client, grant_types=frozenset({"authorization_code"})))

        body = await tokens_for(http, store, clock, flow)
        assert "refresh_token" not in body

    async def test_replayed_code_revokes_what_it_gave(
        self, http, store, clock, flow, setup, introspect
    ):
        """RFC 6749 §4.1.2: a code used twice is refused, and the tokens issued from it
        are revoked, each with its event, in the replay's transaction."""
        code, verifier = await authorize(store, clock, flow)
        body = (await redeem(http, flow, code, verifier)).json()
        assert await active(introspect, setup, body["access_token"])
        before = await store.latest_event_id()

        clock.advance(5)
        assert_invalid_grant(await redeem(http, flow, code, verifier))

        assert not await active(introspect, setup, body["access_token"])
        assert not await active(introspect, setup, body["refresh_token"])
        assert_invalid_grant(await refresh(http, flow, body["refresh_token"]))
        events = await store.events_after(before)
        assert sorted(e.type for e in events) == ["grant_revoked", "token_revoked", "token_revoked"]
        summary = next(e for e in events if e.type == "grant_revoked")
        assert summary.payload["reason"] == "code_replayed"
        assert summary.payload["sub"] == flow.user.user_id
        hashes = {e.payload["token_sha256"] for e in events if e.type == "token_revoked"}
        assert hashes == {
            token_hash(body["access_token"]).hex(),
            token_hash(body["refresh_token"]).hex(),
        }

    async def test_resource_narrows_the_audience(self, http, store, clock, flow, setup, introspect):
        """RFC 8707: the grant's audience is what the authorization request named."""
        body = await tokens_for(http, store, clock, flow, aud=(OTHER_API,))
        assert not await active(introspect, setup, body["access_token"])  # not for API

    async def test_resource_at_the_code_exchange(self, http, store, clock, flow, setup, introspect):
        """RFC 8707 §2.2: resource in the code's token request narrows the access token's
        audience to part of the grant's; one outside the grant is invalid_target, not a
        token for another audience than the client asked for."""
        code, verifier = await authorize(store, clock, flow, aud=(API, OTHER_API))
        r = await redeem(http, flow, code, verifier, resource=OTHER_API)
        assert r.status_code == 200, r.text
        access = r.json()["access_token"]
        assert not await active(introspect, setup, access)  # only OTHER_API now
        assert (await introspect(setup.other_rs, access)).json()["aud"] == OTHER_API

        code, verifier = await authorize(store, clock, flow, aud=(API,))
        r = await redeem(http, flow, code, verifier, resource=OTHER_API)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_target"
        assert r.headers["cache-control"] == "no-store"

    async def test_jwt_access_token_for_a_user(self, http, store, clock, flow, setup, introspect):
        """RFC 9068 §2.2: sub is the user, auth_time when they signed in (§2.2.1)."""
        client = await store.get_client(flow.client_id)
        await store.update_client(replace(client, token_format="jwt"))

        body = await tokens_for(http, store, clock, flow)

        claims = pyjwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["sub"] == flow.user.user_id
        assert claims["client_id"] == "web-app"
        assert claims["auth_time"] == clock.now() - 5
        assert claims["aud"] == API
        r = await introspect(setup.rs, body["access_token"])
        assert r.json()["username"] == "alice"
        assert body["refresh_token"].startswith("ks_rt_")  # refresh tokens stay opaque


class TestRefresh:
    async def test_rotation(self, http, store, clock, flow, setup, introspect):
        """Every refresh returns a new refresh token and retires the old one (RFC 9700
        §4.14.2); the access token issued before stays valid until it expires."""
        first = await tokens_for(http, store, clock, flow)
        clock.advance(10)

        r = await refresh(http, flow, first["refresh_token"])
        assert r.status_code == 200, r.text
        second = r.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert second["access_token"] != first["access_token"]
        assert second["scope"] == "read write"
        assert r.headers["cache-control"] == "no-store"
        assert await active(introspect, setup, second["access_token"])
        assert await active(introspect, setup, first["access_token"])
        assert not await active(introspect, setup, first["refresh_token"])
        assert await active(introspect, setup, second["refresh_token"])

    async def test_replay_revokes_the_grant(self, http, store, clock, flow, setup, introspect):
        """RFC 9700 §4.14.2: a retired refresh token presented again means two parties
        hold it; the whole grant is revoked, the legitimate holder's new tokens included."""
        first = await tokens_for(http, store, clock, flow)
        second = (await refresh(http, flow, first["refresh_token"])).json()
        before = await store.latest_event_id()

        assert_invalid_grant(await refresh(http, flow, first["refresh_token"]))

        for token in (first["access_token"], second["access_token"], second["refresh_token"]):
            assert not await active(introspect, setup, token)
        assert_invalid_grant(await refresh(http, flow, second["refresh_token"]))
        events = await store.events_after(before)
        assert [e.type for e in events].count("token_revoked") == 3
        summary = next(e for e in events if e.type == "grant_revoked")
        assert summary.payload["reason"] == "refresh_token_replayed"
        metrics = (await http.get("/metrics")).text
        assert 'keystile_replays_detected_total{kind="refresh_token"} 1.0' in metrics

    async def test_public_client_refreshes(
        self, http, store, clock, public_flow, setup, introspect
    ):
        """Public clients refresh with client_id only; rotation is what protects them
        (RFC 9700 §4.14.2)."""
        first = await tokens_for(http, store, clock, public_flow)
        r = await refresh(http, public_flow, first["refresh_token"])
        assert r.status_code == 200, r.text
        assert await active(introspect, setup, r.json()["access_token"])

    async def test_down_scoping(self, http, store, clock, flow, setup, introspect):
        """RFC 6749 §6: a narrower scope for the access token; the new refresh token keeps
        the original scope, so the next refresh may ask for all of it again."""
        first = await tokens_for(http, store, clock, flow)

        narrow = (await refresh(http, flow, first["refresh_token"], scope="read")).json()
        assert narrow["scope"] == "read"
        assert (await introspect(setup.rs, narrow["access_token"])).json()["scope"] == "read"
        wide = (await refresh(http, flow, narrow["refresh_token"])).json()
        assert wide["scope"] == "read write"

    async def test_scope_beyond_the_grant(self, http, store, clock, flow):
        """RFC 6749 §6: no scope the user did not grant; the refresh token survives."""
        first = await tokens_for(http, store, clock, flow, scope=frozenset({"read"}))

        r = await refresh(http, flow, first["refresh_token"], scope="read write")
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_scope"
        assert (await refresh(http, flow, first["refresh_token"])).status_code == 200

    async def test_resource_on_refresh(self, http, store, clock, flow, setup, introspect):
        """RFC 8707 §2.2: resource narrows the new access token's audience to part of the
        grant's; one outside it is invalid_target."""
        first = await tokens_for(http, store, clock, flow, aud=(API, OTHER_API))

        r = await refresh(http, flow, first["refresh_token"], resource="https://elsewhere.test")
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_target"
        body = (await refresh(http, flow, first["refresh_token"], resource=OTHER_API)).json()
        assert not await active(introspect, setup, body["access_token"])  # only OTHER_API now
        r = await introspect(setup.other_rs, body["access_token"])
        assert r.json()["aud"] == OTHER_API

    async def test_refresh_token_of_another_client(self, http, store, clock, flow, public_flow):
        """RFC 6749 §6: bound to the client it was issued to; refusing it changes nothing."""
        first = await tokens_for(http, store, clock, flow)

        assert_invalid_grant(await refresh(http, public_flow, first["refresh_token"]))
        assert (await refresh(http, flow, first["refresh_token"])).status_code == 200

    async def test_access_token_is_not_a_refresh_token(self, http, store, clock, flow):
        body = await tokens_for(http, store, clock, flow)
        assert_invalid_grant(await refresh(http, flow, body["access_token"]))

    async def test_idle_lifetime(self, http, store, clock, flow):
        """A refresh token unused for its idle lifetime expires (RFC 9700 §4.14.2)."""
        client = await store.get_client(flow.client_id)
        await store.update_client(replace(client, refresh_token_ttl=600))
        first = await tokens_for(http, store, clock, flow)

        clock.advance(599)
        second = (await refresh(http, flow, first["refresh_token"])).json()
        clock.advance(600)
        assert_invalid_grant(await refresh(http, flow, second["refresh_token"]))

    async def test_absolute_lifetime(self, http, store, clock, flow):
        """Rotation never stretches a grant past its absolute lifetime: the last refresh
        token expires with the grant."""
        client = await store.get_client(flow.client_id)
        await store.update_client(
            replace(client, refresh_token_ttl=600, refresh_token_max_ttl=1000)
        )
        body = await tokens_for(http, store, clock, flow)
        for _ in range(2):
            clock.advance(450)  # t = 450, 900
            r = await refresh(http, flow, body["refresh_token"])
            assert r.status_code == 200, r.text
            body = r.json()
        clock.advance(100)  # t = 1000: the grant is over, though the token is 100 s old
        assert_invalid_grant(await refresh(http, flow, body["refresh_token"]))

    async def test_refresh_token_introspection(self, http, store, clock, flow, setup, introspect):
        """A refresh token can be introspected by a caller the policy allows, with or
        without the hint (RFC 7662 §2.1)."""
        body = await tokens_for(http, store, clock, flow)

        for form in ({}, {"token_type_hint": "refresh_token"}, {"token_type_hint": "access_token"}):
            info = (await introspect(setup.rs, body["refresh_token"], **form)).json()
            assert info["active"] is True
            assert info["token_type"] == "refresh_token"
            assert info["username"] == "alice"
        # Not visible to a resource server outside the grant's audience (RFC 7662 §4).
        assert (await introspect(setup.other_rs, body["refresh_token"])).json() == {"active": False}


class TestCascade:
    """The revocation cascade matrix of docs/users.md, row by row."""

    async def test_access_token_revokes_itself_only(
        self, http, store, clock, flow, setup, introspect
    ):
        body = await tokens_for(http, store, clock, flow)
        r = await http.post("/oauth2/revoke", data={"token": body["access_token"]}, **flow.auth())

        assert r.status_code == 200
        assert not await active(introspect, setup, body["access_token"])
        assert await active(introspect, setup, body["refresh_token"])
        assert (await refresh(http, flow, body["refresh_token"])).status_code == 200

    async def test_refresh_token_revokes_its_grant(
        self, http, store, clock, flow, setup, introspect
    ):
        """RFC 7009 §2.1: revoking a refresh token also invalidates the access tokens of the
        same authorization grant."""
        body = await tokens_for(http, store, clock, flow)
        other = await tokens_for(http, store, clock, flow)  # another grant of the same user
        before = await store.latest_event_id()

        r = await http.post("/oauth2/revoke", data={"token": body["refresh_token"]}, **flow.auth())

        assert r.status_code == 200
        assert not await active(introspect, setup, body["access_token"])
        assert not await active(introspect, setup, body["refresh_token"])
        assert await active(introspect, setup, other["access_token"])
        events = await store.events_after(before)
        assert sorted(e.type for e in events) == ["grant_revoked", "token_revoked", "token_revoked"]
        assert next(e for e in events if e.type == "grant_revoked").payload["reason"] == (
            "refresh_token_revoked"
        )

    async def test_public_client_revokes_its_token(
        self, http, store, clock, public_flow, setup, introspect
    ):
        """RFC 7009 §2.1: a public client identifies itself with client_id."""
        body = await tokens_for(http, store, clock, public_flow)
        r = await http.post(
            "/oauth2/revoke", data={"token": body["refresh_token"], "client_id": "spa"}
        )
        assert r.status_code == 200
        assert not await active(introspect, setup, body["access_token"])

    async def test_another_client_cannot_revoke(
        self, http, store, clock, flow, public_flow, setup, introspect
    ):
        """RFC 7009 §2.1: only the client the token was issued to; others get 200 and
        change nothing."""
        body = await tokens_for(http, store, clock, flow)
        r = await http.post(
            "/oauth2/revoke", data={"token": body["refresh_token"], "client_id": "spa"}
        )
        assert r.status_code == 200
        assert await active(introspect, setup, body["access_token"])

    async def test_client_disabled_revokes_all_its_tokens(
        self, http, store, clock, flow, setup, introspect
    ):
        body = await tokens_for(http, store, clock, flow)
        code, verifier = await authorize(store, clock, flow)  # an outstanding code too

        await store.set_client_enabled(flow.client_id, False, clock.now())
        await store.set_client_enabled(flow.client_id, True, clock.now())

        assert not await active(introspect, setup, body["access_token"])
        assert not await active(introspect, setup, body["refresh_token"])
        assert_invalid_grant(await refresh(http, flow, body["refresh_token"]))
        assert_invalid_grant(await redeem(http, flow, code, verifier))

    @pytest.mark.parametrize("how", ["revoke_sessions", "disable"])
    async def test_user_cascade(self, http, store, clock, flow, setup, introspect, how):
        """`keystile user revoke-sessions` and disabling a user revoke all the user's grants,
        with an event per token and one summary, in one transaction."""
        a = await tokens_for(http, store, clock, flow)
        b = await tokens_for(http, store, clock, flow)
        code, verifier = await authorize(store, clock, flow)
        before = await store.latest_event_id()

        if how == "disable":
            n = await store.set_user_enabled(flow.user.user_id, False, clock.now())
        else:
            n = await store.revoke_user_sessions(flow.user.user_id, clock.now())

        assert n == 4
        for token in (a["access_token"], a["refresh_token"], b["access_token"]):
            assert not await active(introspect, setup, token)
        assert_invalid_grant(await refresh(http, flow, b["refresh_token"]))
        assert_invalid_grant(await redeem(http, flow, code, verifier))
        events = await store.events_after(before)
        assert [e.type for e in events].count("token_revoked") == 4
        summary = next(e for e in events if e.type == "user_sessions_revoked")
        assert summary.payload["sub"] == flow.user.user_id
        assert summary.payload["grants_revoked"] == 3
        assert summary.payload["reason"] == ("user_disabled" if how == "disable" else how)

    async def test_user_cascade_spares_other_users(
        self, http, store, clock, flow, public_flow, setup, introspect
    ):
        mine = await tokens_for(http, store, clock, flow)
        theirs = await tokens_for(http, store, clock, public_flow)

        await store.revoke_user_sessions(flow.user.user_id, clock.now())

        assert not await active(introspect, setup, mine["access_token"])
        assert await active(introspect, setup, theirs["access_token"])
        assert (await refresh(http, public_flow, theirs["refresh_token"])).status_code == 200
