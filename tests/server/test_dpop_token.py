"""The AS side of DPoP (RFC 9449 §5, §6, §8): tokens bound at the token endpoint for every
grant, per-client require_dpop, replayed proofs, nonces, metadata, introspection and JWTs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keystile.clock import FixedClock
from keystile.core.dpop_state import NonceSource
from keystile.core.introspection import introspection_response
from keystile.core.models import ResourceServer, TokenRecord
from keystile.core.tokens import token_hash
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from tests.conftest import API, ISSUER, TOKEN, Setup
from tests.dpop_support import DpopKey
from tests.server.test_user_grants import Flow, authorize

TOKEN_URL = ISSUER + TOKEN
CC = {"grant_type": "client_credentials"}


@pytest.fixture(scope="module")
def key() -> DpopKey:
    return DpopKey("ES256")


def dpop(key: DpopKey, clock: FixedClock, **kw: Any) -> dict[str, str]:
    return {"DPoP": key.proof("POST", TOKEN_URL, clock.now(), **kw)}


def assert_dpop_error(r: httpx.Response, error: str = "invalid_dpop_proof") -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"] == error
    assert r.headers["cache-control"] == "no-store"


class TestClientCredentials:
    async def test_bound_token(self, http, setup, clock, key, introspect):
        """A proof binds the token: token_type DPoP in the response (§5.1), cnf.jkt and
        token_type DPoP at introspection (§6.2)."""
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers=dpop(key, clock))

        assert r.status_code == 200, r.text
        assert r.json()["token_type"] == "DPoP"
        body = (await introspect(setup.rs, r.json()["access_token"])).json()
        assert body["active"] is True
        assert body["token_type"] == "DPoP"
        assert body["cnf"] == {"jkt": key.jkt}

    async def test_without_proof_bearer(self, http, setup, introspect, issue_token):
        """Without a proof the token is a plain bearer token, with no cnf."""
        body = (await introspect(setup.rs, await issue_token(setup.app))).json()

        assert body["token_type"] == "Bearer"
        assert "cnf" not in body

    @pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
    async def test_other_algorithms(self, http, setup, clock, alg):
        """RS256 and EdDSA proofs bind too."""
        k = DpopKey(alg)
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers=dpop(k, clock))

        assert r.status_code == 200, r.text
        assert r.json()["token_type"] == "DPoP"

    async def test_replayed_proof(self, http, setup, clock, key):
        """A proof is accepted once (§11.1): the same jti again is invalid_dpop_proof."""
        headers = dpop(key, clock)
        assert (await http.post(TOKEN, data=CC, auth=setup.app.auth, headers=headers)).is_success

        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers=headers)
        assert_dpop_error(r)
        assert "used before" in r.json()["error_description"]

    @pytest.mark.parametrize(
        ("kw", "why"),
        [
            ({"htu": "https://as.example.test/oauth2/introspect"}, "htu"),
            ({"htm": "GET"}, "htm"),
            ({"iat_delta": -3600}, "old"),
        ],
    )
    async def test_bad_proofs(self, http, setup, clock, key, kw, why):
        """A proof for another URL or method, or a stale one, is refused (§4.3)."""
        proof = key.proof(
            kw.get("htm", "POST"), kw.get("htu", TOKEN_URL), clock.now() + kw.get("iat_delta", 0)
        )
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers={"DPoP": proof})

        assert_dpop_error(r)
        assert why in r.json()["error_description"]

    async def test_two_dpop_headers(self, http, setup, clock, key):
        """Two DPoP headers are refused (§4.3 item 1)."""
        headers = [("DPoP", dpop(key, clock)["DPoP"]), ("DPoP", dpop(key, clock)["DPoP"])]
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers=headers)

        assert_dpop_error(r)

    async def test_require_dpop(self, http, register_client, clock, key):
        """A require_dpop client gets no token without a proof, and a bound one with it."""
        creds = await register_client("strict-1", default_audience=[API], require_dpop=True)

        assert_dpop_error(await http.post(TOKEN, data=CC, auth=creds.auth))
        r = await http.post(TOKEN, data=CC, auth=creds.auth, headers=dpop(key, clock))
        assert r.json()["token_type"] == "DPoP"


class TestMetadata:
    async def test_algs_advertised(self, http):
        """Metadata lists dpop_signing_alg_values_supported (RFC 9449 §5.1)."""
        body = (await http.get("/.well-known/oauth-authorization-server")).json()

        assert {"ES256", "EdDSA", "RS256"} <= set(body["dpop_signing_alg_values_supported"])


class TestNonces:
    @pytest.fixture
    def settings(self, db_path) -> ServerSettings:
        return ServerSettings(
            db=str(db_path),
            issuer=ISSUER,
            purge_interval=0,
            access_log=False,
            dpop_nonce=True,
            dpop_nonce_secret="bm9uY2Ugc2VjcmV0IGZvciB0ZXN0cw==",
        )

    async def test_nonce_round_trip(self, http, setup, clock, key):
        """Without a nonce: 400 use_dpop_nonce with a DPoP-Nonce header (§8); the retry with
        that nonce gets the token."""
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth, headers=dpop(key, clock))

        assert_dpop_error(r, "use_dpop_nonce")
        nonce = r.headers["dpop-nonce"]
        r = await http.post(
            TOKEN, data=CC, auth=setup.app.auth, headers=dpop(key, clock, nonce=nonce)
        )
        assert r.status_code == 200, r.text

    async def test_stale_nonce(self, http, setup, clock, key):
        """A nonce from two windows ago is use_dpop_nonce again."""
        old = NonceSource(b"nonce secret for tests").current(clock.now() - 600)
        r = await http.post(
            TOKEN, data=CC, auth=setup.app.auth, headers=dpop(key, clock, nonce=old)
        )
        assert_dpop_error(r, "use_dpop_nonce")


class TestUserGrants:
    @pytest.fixture
    async def public_flow(self, store, clock, register_client, setup: Setup) -> Flow:
        from tests.server.test_user_grants import _code_client, _user

        await _code_client(store, register_client, "spa", public=True)
        return Flow("spa", None, "http://127.0.0.1:8765/cb", await _user(store, clock, "bob"))

    async def _redeem(self, http, store, clock, flow, headers) -> httpx.Response:
        code, verifier = await authorize(store, clock, flow)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": verifier,
            "client_id": flow.client_id,
        }
        return await http.post(TOKEN, data=data, headers=headers)

    async def test_code_and_refresh_bound(self, http, store, clock, key, public_flow):
        """A public client's code grant binds both its access and refresh token (§5); the
        refresh needs a proof by the same key, and the new tokens are bound again."""
        r = await self._redeem(http, store, clock, public_flow, dpop(key, clock))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "DPoP"
        stored = await store.find_token(token_hash(body["refresh_token"]))
        assert stored is not None
        assert stored.cnf_jkt == key.jkt

        refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
        refresh["client_id"] = "spa"
        # No proof: refused, and the refresh token is not used up.
        assert_dpop_error(await http.post(TOKEN, data=refresh))
        # Another key: invalid_grant.
        other = DpopKey("ES256")
        r = await http.post(TOKEN, data=refresh, headers=dpop(other, clock))
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_grant"
        # The right key: new tokens, bound to it.
        r = await http.post(TOKEN, data=refresh, headers=dpop(key, clock))
        assert r.status_code == 200, r.text
        assert r.json()["token_type"] == "DPoP"
        rotated = await store.find_token(token_hash(r.json()["refresh_token"]))
        assert rotated is not None
        assert rotated.cnf_jkt == key.jkt

    async def test_bad_proof_keeps_code(self, http, store, clock, key, public_flow):
        """A code request with a bad proof is refused before the code is used up."""
        code, verifier = await authorize(store, clock, public_flow)
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": public_flow.redirect_uri,
            "code_verifier": verifier,
            "client_id": "spa",
        }
        bad = {"DPoP": key.proof("GET", TOKEN_URL, clock.now())}
        assert_dpop_error(await http.post(TOKEN, data=data, headers=bad))

        r = await http.post(TOKEN, data=data, headers=dpop(key, clock))
        assert r.status_code == 200, r.text


class TestIntrospectionAllowList:
    def _record(self) -> TokenRecord:
        return TokenRecord(
            token_hash=b"h",
            kind="access_token",
            client_id="app-1",
            scope=frozenset({"read"}),
            aud=(API,),
            iat=1,
            nbf=1,
            exp=100,
            jti="j",
            cnf_jkt="thumb",
        )

    def test_cnf_needs_allow_list(self):
        """A resource server whose allow-list lacks cnf sees a bound token as inactive: it
        could not check the binding (fail closed)."""
        rs = ResourceServer(API, "api", frozenset({"rs-1"}), claims=frozenset({"scope"}))
        assert introspection_response(self._record(), caller=rs, now=50, issuer=ISSUER) == {
            "active": False
        }

    def test_cnf_within_allow_list(self):
        """With cnf allowed, it shows; token_type only if allowed too."""
        rs = ResourceServer(API, "api", frozenset({"rs-1"}), claims=frozenset({"cnf"}))
        body = introspection_response(self._record(), caller=rs, now=50, issuer=ISSUER)
        assert body == {"active": True, "cnf": {"jkt": "thumb"}}


class TestJwtAccessTokens:
    async def test_jwt_carries_cnf(self, http, register_client, clock, key):
        """A JWT access token from a proof carries cnf.jkt (RFC 9449 §6.1)."""
        from tests.server.jwt_support import unverified_claims

        creds = await register_client("jwt-1", default_audience=[API], token_format="jwt")
        r = await http.post(TOKEN, data=CC, auth=creds.auth, headers=dpop(key, clock))

        assert r.status_code == 200, r.text
        assert unverified_claims(r.json()["access_token"])["cnf"] == {"jkt": key.jkt}


async def test_app_builds_with_nonce_secret_text(db_path, store, clock):
    """A dpop_nonce_secret that is not base64 is used as text."""
    settings = ServerSettings(
        db=str(db_path), issuer=ISSUER, dpop_nonce=True, dpop_nonce_secret="x"
    )
    app = create_app(settings, store=store, clock=clock)
    assert app is not None


class TestAuthorizationCodeBinding:
    """dpop_jkt (RFC 9449 §10): the authorization request names the key that must redeem
    the code."""

    def test_request_parses_dpop_jkt(self, key):
        """validate_authorization_request keeps a well-formed dpop_jkt and refuses others."""
        from keystile.core.authorization import (
            AuthorizationRedirectError,
            validate_authorization_request,
        )
        from keystile.core.models import Client

        client = Client(
            client_id="spa",
            name="spa",
            secret_hash=b"",
            auth_method="none",
            grant_types=frozenset({"authorization_code"}),
            scopes=frozenset({"read"}),
            default_audience=(API,),
            access_token_ttl=60,
            enabled=True,
            created_at=0,
            updated_at=0,
            redirect_uris=("https://app.test/cb",),
        )
        params = {
            "response_type": ["code"],
            "client_id": ["spa"],
            "redirect_uri": ["https://app.test/cb"],
            "code_challenge": ["E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"],
            "code_challenge_method": ["S256"],
            "dpop_jkt": [key.jkt],
        }
        areq = validate_authorization_request(params, client, known_resources=frozenset())
        assert areq.dpop_jkt == key.jkt
        with pytest.raises(AuthorizationRedirectError):
            validate_authorization_request(
                {**params, "dpop_jkt": ["short"]}, client, known_resources=frozenset()
            )

    @pytest.fixture
    async def bound_code(self, store, clock, register_client, setup: Setup, key):
        """A public client's code whose authorization request named ``key`` (dpop_jkt)."""
        from dataclasses import replace

        from keystile.core.models import AuthorizationCode, Grant
        from tests.server.test_user_grants import _code_client, _user

        await _code_client(store, register_client, "spa", public=True)
        user = await _user(store, clock, "bob")
        flow = Flow("spa", None, "http://127.0.0.1:8765/cb", user)
        code, verifier = await authorize(store, clock, flow)
        found = await store.redeem_authorization_code(token_hash(code), clock.now())
        assert found.code is not None
        assert found.grant is not None
        # Stored again, as the authorization endpoint stores it when dpop_jkt was sent.
        from keystile.core.tokens import new_authorization_code

        again = new_authorization_code()
        grant: Grant = replace(found.grant, grant_id=found.grant.grant_id + "-2")
        stored: AuthorizationCode = replace(
            found.code,
            code_hash=token_hash(again),
            grant_id=grant.grant_id,
            used_at=None,
            dpop_jkt=key.jkt,
        )
        assert await store.create_authorization_code(grant, stored)
        return flow, again, verifier

    def _data(self, flow: Flow, code: str, verifier: str) -> dict[str, str]:
        return {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": flow.redirect_uri,
            "code_verifier": verifier,
            "client_id": flow.client_id,
        }

    async def test_named_key_redeems(self, http, clock, key, bound_code):
        """A proof by the key dpop_jkt named redeems the code; the token is bound to it."""
        flow, code, verifier = bound_code
        r = await http.post(TOKEN, data=self._data(flow, code, verifier), headers=dpop(key, clock))
        assert r.status_code == 200, r.text
        assert r.json()["token_type"] == "DPoP"

    async def test_no_proof_refused(self, http, clock, key, bound_code):
        """Without a proof: invalid_dpop_proof."""
        flow, code, verifier = bound_code
        r = await http.post(TOKEN, data=self._data(flow, code, verifier))
        assert_dpop_error(r)

    async def test_other_key_refused(self, http, clock, bound_code):
        """A proof by another key (the code was stolen with its verifier): invalid_grant."""
        flow, code, verifier = bound_code
        thief = DpopKey("ES256")
        r = await http.post(
            TOKEN, data=self._data(flow, code, verifier), headers=dpop(thief, clock)
        )
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_grant"
