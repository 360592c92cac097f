"""OpenID Connect on the code flow (OIDC Core 1.0, Discovery 1.0): ID tokens, nonce, at_hash,
prompt, max_age, login_hint, claims and refresh, against the real app and a real SQLite file."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest

from keystile import admin
from keystile.clock import FixedClock
from keystile.settings import ServerSettings
from tests.conftest import ISSUER
from tests.server.jwt_support import WALL
from tests.server.oidc_support import (
    AUTHORIZE,
    DISCOVERY,
    PASSWORD,
    REDIRECT,
    RP,
    TOKEN,
    USERNAME,
    Rp,
    allow,
    at_hash,
    auth_params,
    code_for,
    exchange,
    log_in,
    make_rp,
    query,
    tokens,
    verify_id_token,
)
from tests.server.test_authorize import hidden


@pytest.fixture
def clock() -> FixedClock:
    # PyJWT checks exp and iat against the real clock.
    return FixedClock(WALL)


@pytest.fixture
async def rp(register_client, store, clock) -> Rp:
    return await make_rp(register_client, store, clock)


class TestDiscovery:
    async def test_openid_configuration(self, http: httpx.AsyncClient, rp: Rp) -> None:
        """Discovery §3, §4: the required members, beside RFC 8414 with the same issuer and
        jwks_uri, and the endpoints and choices an RP needs."""
        r = await http.get(DISCOVERY)
        assert r.status_code == 200
        doc = r.json()
        oauth = (await http.get("/.well-known/oauth-authorization-server")).json()
        assert doc["issuer"] == oauth["issuer"] == ISSUER
        assert doc["jwks_uri"] == oauth["jwks_uri"] == ISSUER + "/oauth2/jwks"
        assert doc["authorization_endpoint"] == ISSUER + AUTHORIZE
        assert doc["token_endpoint"] == ISSUER + TOKEN
        assert doc["userinfo_endpoint"] == ISSUER + "/oauth2/userinfo"
        assert doc["end_session_endpoint"] == ISSUER + "/oauth2/logout"
        assert doc["response_types_supported"] == ["code"]
        assert doc["subject_types_supported"] == ["public"]
        # The active key's first; RS256 (Discovery §3: MUST be included) and the others are
        # signed by ID-token keys made on first need.
        assert doc["id_token_signing_alg_values_supported"] == [
            "ES256",
            "RS256",
            "Ed25519",
            "EdDSA",
        ]
        assert {"openid", "profile", "email"} <= set(doc["scopes_supported"])
        assert {"sub", "auth_time", "nonce", "at_hash", "email", "name"} <= set(
            doc["claims_supported"]
        )
        assert doc["claims_parameter_supported"] is True
        assert doc["request_uri_parameter_supported"] is False
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert r.headers["cache-control"] == "public, max-age=300"


class TestIdToken:
    async def test_code_flow_gives_a_verifiable_id_token(self, http, rp: Rp, clock) -> None:
        """OIDC Core §3.1.3.3, §2: the token response carries an ID token signed with the
        active key (ES256), with iss, sub (the user's stable id), aud, azp, exp, iat,
        auth_time, the request's nonce and at_hash of the access token (§3.1.3.6)."""
        params = auth_params()
        r = await exchange(http, rp, await code_for(http, params))
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {
            "access_token",
            "token_type",
            "expires_in",
            "scope",
            "refresh_token",
            "id_token",
        }
        header = pyjwt.get_unverified_header(body["id_token"])
        assert header["alg"] == "ES256"
        assert header["typ"] == "JWT"
        claims = await verify_id_token(http, body["id_token"])
        assert claims["sub"] == rp.user.user_id
        assert claims["aud"] == RP
        assert claims["azp"] == RP
        assert claims["iat"] == clock.now()
        assert claims["exp"] == clock.now() + 3600
        assert claims["auth_time"] == clock.now()
        assert claims["nonce"] == params["nonce"]
        assert claims["at_hash"] == at_hash(body["access_token"])
        # Identity claims come from UserInfo unless the claims request asks (§5.4, §5.5).
        assert "email" not in claims
        assert "name" not in claims

    async def test_no_id_token_without_openid(self, http, rp: Rp) -> None:
        """OIDC Core §3.1.2.1: without scope openid it is plain OAuth, no ID token."""
        body = await tokens(http, rp, scope="read")
        assert "id_token" not in body

    async def test_no_nonce_no_nonce_claim(self, http, rp: Rp) -> None:
        """OIDC Core §3.1.2.1: nonce is optional on the code flow; sent, it is echoed
        (§2); not sent, the ID token has none."""
        body = await tokens(http, rp, nonce=None)
        claims = await verify_id_token(http, body["id_token"])
        assert "nonce" not in claims

    async def test_nonce_replay_is_refused_while_the_code_lives(self, http, rp: Rp, clock):
        """OIDC Core §15.5.2: a nonce sent again while a code carrying it lives is refused
        (invalid_request at the redirect URI); after the code expired it is not remembered."""
        first = auth_params()
        await code_for(http, first)
        again = auth_params(nonce=first["nonce"], prompt="consent")
        r = await http.get(AUTHORIZE, params=again)
        r = await allow(http, r)
        got = query(r)
        assert got["error"] == "invalid_request"
        assert got["state"] == again["state"]
        assert "nonce" in got["error_description"]

        clock.advance(61)  # the first code expired
        later = auth_params(nonce=first["nonce"], prompt="consent")
        assert await code_for(http, later)

    async def test_nonce_of_another_client_is_not_a_replay(
        self, http, rp: Rp, register_client
    ) -> None:
        """Nonces are remembered per client: another RP may happen to send the same one."""
        await register_client("rp-2", redirect_uris=[REDIRECT], scopes=["openid"], name="Other RP")
        first = auth_params()
        await code_for(http, first)
        other = auth_params(client_id="rp-2", nonce=first["nonce"])
        assert await code_for(http, other)

    async def test_claims_request_puts_claims_in_the_id_token(self, http, rp: Rp) -> None:
        """OIDC Core §5.5: claims asked for in the id_token member are in the ID token."""
        claims_request = {"id_token": {"email": {"essential": True}, "name": None}}
        body = await tokens(http, rp, claims=json.dumps(claims_request))
        claims = await verify_id_token(http, body["id_token"])
        assert claims["email"] == "alice@example.test"
        assert claims["name"] == "Alice Liddell"
        assert "email_verified" not in claims

    @pytest.mark.parametrize("claims", ["not json", "[1]", '{"id_token": ["email"]}'])
    async def test_malformed_claims_request(self, http, rp: Rp, claims: str) -> None:
        """OIDC Core §5.5: a claims parameter that is not a JSON object of objects is an
        invalid_request sent to the redirect URI."""
        r = await http.get(AUTHORIZE, params=auth_params(claims=claims))
        assert query(r)["error"] == "invalid_request"

    async def test_rs256_client(self, http, rp: Rp, store, clock) -> None:
        """OIDC Registration §2: a client with id_token_signed_response_alg RS256 gets RS256
        ID tokens, signed by an ID-token key made on first need and published in the JWKS;
        access tokens and other clients stay on the active ES256 key."""
        await admin.update_client(store, clock, RP, id_token_signed_response_alg="RS256")
        body = await tokens(http, rp)
        header = pyjwt.get_unverified_header(body["id_token"])
        assert header["alg"] == "RS256"
        claims = await verify_id_token(http, body["id_token"])
        assert claims["at_hash"] == at_hash(body["access_token"])
        keys = {k.kid: k for k in await store.list_signing_keys()}
        assert keys[header["kid"]].use_for == "id_token"
        assert [k.alg for k in keys.values() if k.use_for == "all"] == ["ES256"]
        # The same key signs the next one: made once.
        again = await tokens(http, rp)
        assert pyjwt.get_unverified_header(again["id_token"])["kid"] == header["kid"]
        assert len(await store.list_signing_keys()) == 2

    async def test_rotation_retires_the_id_token_key(
        self, http, rp: Rp, store, clock, settings
    ) -> None:
        """`keystile key rotate` retires every active key; an RS256 ID-token key is made
        again on the next need, and the retired one stays published for a while."""
        from keystile import key_admin

        await admin.update_client(store, clock, RP, id_token_signed_response_alg="RS256")
        first = pyjwt.get_unverified_header((await tokens(http, rp))["id_token"])["kid"]
        kek = key_admin.load_kek(settings)
        assert kek is not None
        await key_admin.rotate(store, clock, kek)
        body = await tokens(http, rp, prompt="consent")
        second = pyjwt.get_unverified_header(body["id_token"])["kid"]
        assert second != first
        published = {k["kid"] for k in (await http.get("/oauth2/jwks")).json()["keys"]}
        assert {first, second} <= published

    async def test_es256_named_explicitly(self, http, rp: Rp, store, clock) -> None:
        """A client that names the active key's algorithm gets it."""
        await admin.update_client(store, clock, RP, id_token_signed_response_alg="ES256")
        body = await tokens(http, rp)
        assert pyjwt.get_unverified_header(body["id_token"])["alg"] == "ES256"


class TestIdTokenLifetime:
    @pytest.fixture
    def settings(self, db_path: Path) -> ServerSettings:
        return ServerSettings(
            db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False, id_token_ttl=600
        )

    async def test_id_token_ttl_sets_exp(self, http, rp: Rp, clock) -> None:
        """id_token_ttl sets exp = iat + ttl, on the code exchange and on refresh (§12.2)."""
        body = (await exchange(http, rp, await code_for(http, auth_params()))).json()
        claims = await verify_id_token(http, body["id_token"])
        assert claims["exp"] == claims["iat"] + 600 == clock.now() + 600
        clock.advance(60)
        r = await http.post(
            TOKEN,
            data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
            auth=rp.creds.auth,
        )
        assert r.status_code == 200, r.text
        again = await verify_id_token(http, r.json()["id_token"])
        assert again["exp"] == clock.now() + 600


class TestRefresh:
    async def test_refresh_gives_a_new_id_token(self, http, rp: Rp, clock) -> None:
        """OIDC Core §12.2: a refreshed ID token has the same iss, sub, aud, azp and
        auth_time, a new iat, no nonce, and at_hash of the new access token."""
        first = await tokens(http, rp)
        before = await verify_id_token(http, first["id_token"])
        clock.advance(120)
        r = await http.post(
            TOKEN,
            data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            auth=rp.creds.auth,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        after = await verify_id_token(http, body["id_token"])
        for name in ("iss", "sub", "aud", "azp", "auth_time"):
            assert after[name] == before[name]
        assert after["iat"] == before["iat"] + 120
        assert "nonce" not in after
        assert after["at_hash"] == at_hash(body["access_token"])

    async def test_no_id_token_on_refresh_without_openid(self, http, rp: Rp) -> None:
        """Only openid grants get ID tokens on refresh."""
        first = await tokens(http, rp, scope="read")
        r = await http.post(
            TOKEN,
            data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
            auth=rp.creds.auth,
        )
        assert r.status_code == 200
        assert "id_token" not in r.json()


class TestPrompt:
    async def test_prompt_none_without_a_session(self, http, rp: Rp) -> None:
        """OIDC Core §3.1.2.6: prompt=none and nobody signed in: login_required, with state
        and iss, and no page shown."""
        params = auth_params(prompt="none")
        got = query(await http.get(AUTHORIZE, params=params))
        assert got["error"] == "login_required"
        assert got["state"] == params["state"]
        assert got["iss"] == ISSUER

    async def test_prompt_none_without_consent(self, http, rp: Rp) -> None:
        """§3.1.2.6: signed in, but consent was never remembered: consent_required."""
        await code_for(http, auth_params())  # signs in; consent not remembered
        got = query(await http.get(AUTHORIZE, params=auth_params(prompt="none")))
        assert got["error"] == "consent_required"

    async def test_prompt_none_with_remembered_consent(self, http, rp: Rp) -> None:
        """§3.1.2.1: signed in and consent remembered: a code, with no page shown."""
        r = await http.get(AUTHORIZE, params=auth_params())
        r = await allow(http, await log_in(http, r), remember="yes")
        assert "code" in query(r)
        got = query(await http.get(AUTHORIZE, params=auth_params(prompt="none")))
        assert "code" in got

    async def test_prompt_none_with_another_user_hinted(self, http, rp: Rp) -> None:
        """§3.1.2.6: prompt=none, and login_hint names someone other than who is signed
        in: interaction_required."""
        r = await http.get(AUTHORIZE, params=auth_params())
        await allow(http, await log_in(http, r), remember="yes")
        params = auth_params(prompt="none", login_hint="bob")
        assert query(await http.get(AUTHORIZE, params=params))["error"] == "interaction_required"
        params = auth_params(prompt="none", login_hint=rp.user.user_id)
        assert "code" in query(await http.get(AUTHORIZE, params=params))

    async def test_sub_value_is_answered_only_for_that_user(self, http, rp: Rp) -> None:
        """OIDC Core §5.5.1: claims={"id_token": {"sub": {"value": X}}} gets a code only while
        X is the signed-in user: with prompt=none another user gets login_required, without
        it the sign-in page asks for the right account; X itself gets its code."""
        r = await http.get(AUTHORIZE, params=auth_params())
        await allow(http, await log_in(http, r), remember="yes")
        other = json.dumps({"id_token": {"sub": {"value": "usr_someone_else"}}})
        got = query(await http.get(AUTHORIZE, params=auth_params(prompt="none", claims=other)))
        assert got["error"] == "login_required"
        assert "code" not in got
        page = await http.get(AUTHORIZE, params=auth_params(claims=other))
        assert page.status_code == 200
        assert 'action="/login"' in page.text
        assert "asked for another account" in page.text
        mine = json.dumps({"id_token": {"sub": {"value": rp.user.user_id}}})
        got = query(await http.get(AUTHORIZE, params=auth_params(prompt="none", claims=mine)))
        assert "code" in got
        for bad in ({"value": 7}, {"value": ""}):
            claims = json.dumps({"id_token": {"sub": bad}})
            got = query(await http.get(AUTHORIZE, params=auth_params(claims=claims)))
            assert got["error"] == "invalid_request"

    @pytest.mark.parametrize("prompt", ["none login", "select_account", "bogus"])
    async def test_bad_prompt(self, http, rp: Rp, prompt: str) -> None:
        """§3.1.2.1: none with another value, or an unsupported value: invalid_request."""
        got = query(await http.get(AUTHORIZE, params=auth_params(prompt=prompt)))
        assert got["error"] == "invalid_request"

    async def test_prompt_login_asks_again(self, http, rp: Rp, store, clock) -> None:
        """§3.1.2.1 prompt=login: a signed-in user signs in again; auth_time is the new
        sign-in's."""
        await code_for(http, auth_params())
        clock.advance(300)
        r = await http.get(AUTHORIZE, params=auth_params(prompt="login"))
        assert 'action="/login"' in r.text
        r = await log_in(http, r)
        r = await allow(http, r)
        body = (await exchange(http, rp, query(r)["code"])).json()
        claims = await verify_id_token(http, body["id_token"])
        assert claims["auth_time"] == clock.now()

    async def test_prompt_consent_asks_again(self, http, rp: Rp) -> None:
        """§3.1.2.1 prompt=consent: the consent page even when consent is remembered."""
        r = await http.get(AUTHORIZE, params=auth_params())
        await allow(http, await log_in(http, r), remember="yes")
        r = await http.get(AUTHORIZE, params=auth_params(prompt="consent"))
        assert 'action="/oauth2/consent"' in r.text


class TestMaxAgeAndLoginHint:
    async def test_max_age_exceeded_asks_to_sign_in(self, http, rp: Rp, clock) -> None:
        """§3.1.2.1 max_age: a sign-in older than max_age seconds must be redone; the ID
        token's auth_time is then the new one."""
        await code_for(http, auth_params())
        clock.advance(100)
        r = await http.get(AUTHORIZE, params=auth_params(max_age="60"))
        assert 'action="/login"' in r.text
        body = await tokens(http, rp, max_age="60")
        claims = await verify_id_token(http, body["id_token"])
        assert claims["auth_time"] == clock.now()

    async def test_max_age_zero_after_sign_in(self, http, rp: Rp, clock) -> None:
        """max_age=0 asks for a sign-in every time, and that sign-in satisfies it even when
        a second passes before the request resumes."""
        await code_for(http, auth_params())
        clock.advance(1)
        r = await http.get(AUTHORIZE, params=auth_params(max_age="0"))
        assert 'action="/login"' in r.text
        r = await http.post(
            "/login", data={**hidden(r.text), "username": USERNAME, "password": PASSWORD}
        )
        assert r.status_code == 303
        assert "max_age" not in r.headers["location"]
        clock.advance(1)
        r = await http.get(r.headers["location"])
        assert 'action="/oauth2/consent"' in r.text

    async def test_max_age_not_exceeded(self, http, rp: Rp, clock) -> None:
        """A sign-in younger than max_age is kept: auth_time is the original sign-in."""
        signed_in = clock.now()
        await code_for(http, auth_params())
        clock.advance(30)
        body = await tokens(http, rp, max_age="60")
        claims = await verify_id_token(http, body["id_token"])
        assert claims["auth_time"] == signed_in

    async def test_max_age_with_prompt_none(self, http, rp: Rp, clock) -> None:
        """§3.1.2.6: prompt=none and the sign-in is too old: login_required."""
        r = await http.get(AUTHORIZE, params=auth_params())
        await allow(http, await log_in(http, r), remember="yes")
        clock.advance(100)
        got = query(await http.get(AUTHORIZE, params=auth_params(prompt="none", max_age="60")))
        assert got["error"] == "login_required"

    @pytest.mark.parametrize("max_age", ["-1", "abc", "1.5"])
    async def test_bad_max_age(self, http, rp: Rp, max_age: str) -> None:
        got = query(await http.get(AUTHORIZE, params=auth_params(max_age=max_age)))
        assert got["error"] == "invalid_request"

    async def test_login_hint_fills_in_the_username(self, http, rp: Rp) -> None:
        """§3.1.2.1 login_hint: the login page starts with the hinted username."""
        r = await http.get(AUTHORIZE, params=auth_params(login_hint=USERNAME))
        assert f'value="{USERNAME}"' in r.text


class TestConsentPage:
    async def test_consent_page_names_the_identity_claims(self, http, rp: Rp) -> None:
        """The consent page says which facts about the person the RP will learn, from the
        scopes (§5.4) and the claims request (§5.5)."""
        r = await http.get(AUTHORIZE, params=auth_params(scope="openid email"))
        page = await log_in(http, r)
        assert "will learn" in page.text
        assert "Your email address" in page.text
        assert "Whether your email address is verified" in page.text
        assert "Your name" not in page.text
        claims = json.dumps({"userinfo": {"name": None}})
        page = await http.get(AUTHORIZE, params=auth_params(scope="openid", claims=claims))
        assert "Your name" in page.text

    async def test_remembered_consent_does_not_cover_more_claims(self, http, rp: Rp) -> None:
        """A claims request asking for more than the remembered scopes name asks again."""
        r = await http.get(AUTHORIZE, params=auth_params())
        await allow(http, await log_in(http, r), remember="yes")
        claims = json.dumps({"id_token": {"email": None}})
        r = await http.get(AUTHORIZE, params=auth_params(claims=claims))
        assert 'action="/oauth2/consent"' in r.text
