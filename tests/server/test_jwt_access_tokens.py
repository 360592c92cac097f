"""JWT access tokens (RFC 9068): issued, verified by others, introspected, revoked, rotated."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keystile import key_admin
from keystile.clock import FixedClock
from keystile.core.signing_keys import KeyRing
from keystile.core.tokens import token_hash
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import API, INTROSPECT, ISSUER, OTHER_API, REVOKE, TOKEN, Creds, RegisterClient
from tests.server.jwt_support import WALL, fetch_jwks, pyjwt_verify, unverified_claims

CC = {"grant_type": "client_credentials"}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(WALL)


@dataclass
class JwtSetup:
    jwt_app: Creds  # token_format jwt, audience API, scopes read write, ttl 600
    opaque_app: Creds  # the same, opaque tokens
    rs: Creds  # introspects for API


@pytest.fixture
async def jwt_setup(
    register_client: RegisterClient, register_resource: Callable[..., Awaitable[None]]
) -> JwtSetup:
    jwt_app = await register_client(
        "jwt-app", default_audience=[API], token_format="jwt", access_token_ttl=600
    )
    opaque_app = await register_client("app-1", default_audience=[API])
    rs = await register_client("rs-1", grant_types=[], scopes=[])
    await register_resource(API, ["rs-1"])
    await register_resource(OTHER_API, [])
    return JwtSetup(jwt_app, opaque_app, rs)


async def issue(http: httpx.AsyncClient, creds: Creds, **form: str) -> str:
    r = await http.post(TOKEN, data={**CC, **form}, auth=creds.auth)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def introspect(http: httpx.AsyncClient, rs: Creds, token: str) -> dict[str, Any]:
    r = await http.post(INTROSPECT, data={"token": token}, auth=rs.auth)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def our_ring(store: SQLiteStore, settings: ServerSettings) -> KeyRing:
    """The server's keys, private part included: to sign tokens it did not issue."""
    return KeyRing(await store.list_signing_keys(), version=0, kek=key_admin.load_kek(settings))


def read_file(path: Path) -> tuple[int, str]:
    return os.stat(path).st_mode, path.read_bytes().decode("latin-1")


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class TestIssuance:
    async def test_header(self, http, jwt_setup):
        """The header has typ at+jwt, alg and the kid of a published key (RFC 9068 §2.1)."""
        token = await issue(http, jwt_setup.jwt_app)

        header = pyjwt.get_unverified_header(token)
        assert header == {"typ": "at+jwt", "alg": "ES256", "kid": header["kid"]}
        assert header["kid"] in {k["kid"] for k in (await fetch_jwks(http))["keys"]}

    async def test_claims(self, http, jwt_setup, clock):
        """iss, sub, aud, exp, iat, jti, client_id and scope are all present (RFC 9068 §2.2)."""
        r = await http.post(TOKEN, data={**CC, "scope": "read"}, auth=jwt_setup.jwt_app.auth)

        body = r.json()
        claims = unverified_claims(body["access_token"])
        assert claims == {
            "iss": ISSUER,
            "sub": "jwt-app",
            "aud": API,
            "exp": clock.now() + 600,
            "iat": clock.now(),
            "jti": claims["jti"],
            "client_id": "jwt-app",
            "scope": "read",
        }
        assert len(claims["jti"]) >= 16
        assert {k: v for k, v in body.items() if k != "access_token"} == {
            "token_type": "Bearer",
            "expires_in": 600,
            "scope": "read",
        }

    async def test_third_party_library_verifies_against_jwks(self, http, jwt_setup):
        """PyJWT, not the server's JOSE library, verifies it with our JWKS (RFC 9068 §4)."""
        token = await issue(http, jwt_setup.jwt_app)

        claims = pyjwt_verify(token, await fetch_jwks(http), audience=API)
        assert claims["client_id"] == "jwt-app"

    async def test_several_resources_give_an_audience_array(self, http, jwt_setup):
        """Two resource parameters become an aud array (RFC 8707 §2, RFC 7519 §4.1.3)."""
        r = await http.post(
            TOKEN,
            content=f"grant_type=client_credentials&resource={API}&resource={OTHER_API}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=jwt_setup.jwt_app.auth,
        )

        assert unverified_claims(r.json()["access_token"])["aud"] == [API, OTHER_API]

    async def test_no_audience_is_refused(self, http, register_client):
        """A JWT needs an audience: without one the request is invalid_target (RFC 9068 §2.2)."""
        creds = await register_client("no-aud", token_format="jwt")

        r = await http.post(TOKEN, data=CC, auth=creds.auth)

        assert r.status_code == 400
        assert r.json()["error"] == "invalid_target"

    async def test_opaque_clients_keep_opaque_tokens(self, http, jwt_setup):
        """A client without token_format jwt still gets ks_at_ opaque tokens."""
        token = await issue(http, jwt_setup.opaque_app)

        assert token.startswith("ks_at_")
        assert "." not in token

    async def test_recorded_by_digest_and_jti(self, http, jwt_setup, store):
        """Each JWT is stored by SHA-256 of its string, with its jti (ARCHITECTURE.md, 1)."""
        token = await issue(http, jwt_setup.jwt_app)

        record = await store.find_token(hashlib.sha256(token.encode()).digest())
        assert record is not None
        assert record.jti == unverified_claims(token)["jti"]
        assert record.client_id == "jwt-app"

    @pytest.mark.parametrize("alg", ["RS256", "EdDSA"])
    async def test_other_algorithms(self, http, jwt_setup, store, settings, clock, alg):
        """RS256 (RFC 7518 §3.3) and EdDSA (RFC 8037 §3.1) keys sign tokens PyJWT verifies."""
        await issue(http, jwt_setup.jwt_app)  # the first key (ES256) exists
        await key_admin.rotate(store, clock, key_admin.require_kek(settings), alg=alg)

        token = await issue(http, jwt_setup.jwt_app)

        assert pyjwt.get_unverified_header(token)["alg"] == alg
        assert pyjwt_verify(token, await fetch_jwks(http), audience=API)["sub"] == "jwt-app"
        assert (await introspect(http, jwt_setup.rs, token))["active"] is True

    async def test_ed25519_algorithm(self, http, jwt_setup, store, settings, clock):
        """An Ed25519 key (RFC 9864 §2.2: EdDSA, fully specified) signs tokens that introspect."""
        await issue(http, jwt_setup.jwt_app)
        await key_admin.rotate(store, clock, key_admin.require_kek(settings), alg="Ed25519")

        token = await issue(http, jwt_setup.jwt_app)

        assert pyjwt.get_unverified_header(token)["alg"] == "Ed25519"
        assert (await introspect(http, jwt_setup.rs, token))["active"] is True


class TestIntrospection:
    async def test_active_with_record_claims(self, http, jwt_setup, clock):
        """A JWT introspects active with the same RFC 7662 §2.2 members an opaque token has."""
        token = await issue(http, jwt_setup.jwt_app, scope="read")
        claims = unverified_claims(token)

        assert await introspect(http, jwt_setup.rs, token) == {
            "active": True,
            "scope": "read",
            "client_id": "jwt-app",
            "token_type": "Bearer",
            "exp": claims["exp"],
            "iat": claims["iat"],
            "nbf": claims["iat"],
            "sub": "jwt-app",
            "aud": API,
            "iss": ISSUER,
            "jti": claims["jti"],
        }

    async def test_expired_is_inactive(self, http, jwt_setup, clock):
        """A JWT is inactive from the second its exp is reached (RFC 7519 §4.1.4, RFC 7662 §2.2)."""
        token = await issue(http, jwt_setup.jwt_app)
        clock.advance(600)

        assert await introspect(http, jwt_setup.rs, token) == {"active": False}

    async def test_revoked_is_inactive_and_evented(self, http, jwt_setup, store):
        """A revoked JWT is inactive and its event carries SHA-256 of the JWT (RFC 7009 §2)."""
        token = await issue(http, jwt_setup.jwt_app)

        r = await http.post(REVOKE, data={"token": token}, auth=jwt_setup.jwt_app.auth)

        assert r.status_code == 200
        assert await introspect(http, jwt_setup.rs, token) == {"active": False}
        [event] = await store.events_after(0)
        assert event.type == "token_revoked"
        assert event.payload["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
        assert event.payload["jti"] == unverified_claims(token)["jti"]

    async def test_revoking_another_clients_jwt_leaves_it_active(self, http, jwt_setup):
        """Another client's revocation answers 200 and leaves the JWT active (RFC 7009 §2.1)."""
        token = await issue(http, jwt_setup.jwt_app)

        r = await http.post(REVOKE, data={"token": token}, auth=jwt_setup.opaque_app.auth)

        assert r.status_code == 200
        assert (await introspect(http, jwt_setup.rs, token))["active"] is True

    async def test_forgeries_are_inactive_without_a_lookup(
        self, http, jwt_setup, store, settings, monkeypatch
    ):
        """Foreign, unsigned, tampered or mistyped JWTs: inactive, never looked up (RFC 9068 §4)."""
        real = await issue(http, jwt_setup.jwt_app)
        header, payload, signature = real.split(".")
        claims = unverified_claims(real)
        kid = pyjwt.get_unverified_header(real)["kid"]
        signer = (await our_ring(store, settings)).signer()
        assert signer is not None
        other_key = ec.generate_private_key(ec.SECP256R1())

        def ours(body: dict[str, Any], **head: Any) -> str:
            from keystile.core.jwt_profile import sign_jwt

            return sign_jwt(body, signer, typ=head.get("typ", "at+jwt"))

        forgeries = {
            "another key, our kid": pyjwt.encode(
                claims, other_key, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"}
            ),
            "alg none": f"{b64({'alg': 'none', 'kid': kid, 'typ': 'at+jwt'})}.{payload}.AA",
            "tampered payload": f"{header}.{b64({**claims, 'scope': 'admin'})}.{signature}",
            "unknown kid": pyjwt.encode(
                claims, other_key, algorithm="ES256", headers={"kid": "nope", "typ": "at+jwt"}
            ),
            "our key, other issuer": ours({**claims, "iss": "https://evil.example"}),
            "our key, not typ at+jwt": ours(claims, typ="JWT"),
            "HS256, a shared secret": pyjwt.encode(
                claims, "x" * 32, algorithm="HS256", headers={"kid": kid, "typ": "at+jwt"}
            ),
        }
        looked_up: list[bytes | None] = []
        real_lookup = store.lookup_token

        async def spy(digest: bytes | None) -> Any:
            looked_up.append(digest)
            return await real_lookup(digest)

        monkeypatch.setattr(store, "lookup_token", spy)
        for name, forged in forgeries.items():
            assert await introspect(http, jwt_setup.rs, forged) == {"active": False}, name
        assert looked_up == [None] * len(forgeries)
        # The genuine token still verifies, and is looked up by its digest.
        assert (await introspect(http, jwt_setup.rs, real))["active"] is True
        assert looked_up[-1] == token_hash(real)

    async def test_other_resource_server_sees_nothing(
        self, http, jwt_setup, register_client, store, clock
    ):
        """A JWT for API is invisible to another resource server (RFC 7662 §4)."""
        other = await register_client("rs-2", grant_types=[], scopes=[])
        from keystile import admin

        await admin.update_resource_server(store, clock, OTHER_API, introspection_clients=["rs-2"])
        token = await issue(http, jwt_setup.jwt_app)

        assert await introspect(http, other, token) == {"active": False}


class TestRotation:
    async def test_rotation_keeps_old_tokens_until_expiry(
        self, http, jwt_setup, db_path, settings, clock
    ):
        """After a rotation in another process, new tokens use the new key and old ones stay valid,
        their key published until they expire (RFC 7517 §5, RFC 9068 §4)."""
        old_token = await issue(http, jwt_setup.jwt_app)
        old_kid = pyjwt.get_unverified_header(old_token)["kid"]
        admin_store = SQLiteStore(db_path)  # the CLI, as a second process would
        await admin_store.open()
        try:
            kek = key_admin.require_kek(settings)
            upcoming = await key_admin.create_key(admin_store, clock, kek)
            jwks = await fetch_jwks(http)
            assert {k["kid"] for k in jwks["keys"]} == {old_kid, upcoming.kid}  # published ahead
            assert (
                pyjwt.get_unverified_header(await issue(http, jwt_setup.jwt_app))["kid"] == old_kid
            )

            active, retired = await key_admin.rotate(admin_store, clock, kek)
        finally:
            await admin_store.close()
        assert active.kid == upcoming.kid
        assert retired is not None
        assert retired.kid == old_kid
        assert retired.private_jwk_enc is None

        new_token = await issue(http, jwt_setup.jwt_app)
        assert pyjwt.get_unverified_header(new_token)["kid"] == upcoming.kid
        jwks = await fetch_jwks(http)
        assert {k["kid"] for k in jwks["keys"]} == {old_kid, upcoming.kid}
        assert pyjwt_verify(old_token, jwks, audience=API)["sub"] == "jwt-app"
        assert (await introspect(http, jwt_setup.rs, old_token))["active"] is True

        clock.advance(600)  # every token of the old key has expired; its not_after is reached
        clock.advance(300)
        jwks = await fetch_jwks(http)
        assert {k["kid"] for k in jwks["keys"]} == {upcoming.kid}

    async def test_retired_key_not_after_covers_its_last_token(
        self, http, jwt_setup, store, settings, clock
    ):
        """A retired key stays published exactly as long as the last token it signed may live."""
        await issue(http, jwt_setup.jwt_app)
        clock.advance(250)
        last = await issue(http, jwt_setup.jwt_app)
        await key_admin.rotate(store, clock, key_admin.require_kek(settings))

        [retired] = [k for k in await store.list_signing_keys() if k.state == "retired"]
        exp = unverified_claims(last)["exp"]
        assert exp <= retired.not_after < exp + 300
        clock.set(retired.not_after - 1)
        assert retired.kid in {k["kid"] for k in (await fetch_jwks(http))["keys"]}
        clock.set(retired.not_after)
        assert retired.kid not in {k["kid"] for k in (await fetch_jwks(http))["keys"]}

    async def test_immediate_retirement_kills_its_tokens(
        self, http, jwt_setup, store, settings, clock
    ):
        """Retiring a key immediately unpublishes it and makes its tokens inactive at once."""
        token = await issue(http, jwt_setup.jwt_app)
        kid = pyjwt.get_unverified_header(token)["kid"]
        await key_admin.rotate(store, clock, key_admin.require_kek(settings))

        await key_admin.retire(store, clock, kid, immediately=True)

        assert await introspect(http, jwt_setup.rs, token) == {"active": False}
        assert kid not in {k["kid"] for k in (await fetch_jwks(http))["keys"]}


class TestKeysAtRest:
    async def test_kek_file_and_encrypted_private_key(self, http, jwt_setup, store, db_path):
        """The generated KEK file is 0600 beside the database; no private key is stored in clear."""
        token = await issue(http, jwt_setup.jwt_app)
        kek_file = Path(str(db_path) + ".kek")

        mode, text = read_file(kek_file)
        assert stat.S_IMODE(mode) == 0o600
        assert len(base64.b64decode(text)) == 32
        [key] = await store.list_signing_keys()
        assert key.kid == pyjwt.get_unverified_header(token)["kid"]
        assert key.private_jwk_enc is not None
        assert b'"d"' not in key.private_jwk_enc
        assert '"d"' not in key.public_jwk
        assert '"d"' not in read_file(db_path)[1].replace("\0", "")

    async def test_wrong_kek_refuses_to_sign_but_still_verifies(
        self, http, jwt_setup, store, settings, clock
    ):
        """With another KEK the server cannot sign (500), yet existing JWTs still introspect."""
        token = await issue(http, jwt_setup.jwt_app)
        wrong = settings.model_copy(
            update={"key_encryption_key": base64.b64encode(b"k" * 32).decode()}
        )
        app = create_app(wrong, store=store, clock=clock)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as other:
            r = await other.post(TOKEN, data=CC, auth=jwt_setup.jwt_app.auth)
            assert r.status_code == 500
            assert r.json()["error"] == "server_error"
            assert "kek" not in r.text.lower()
            assert (await introspect(other, jwt_setup.rs, token))["active"] is True
