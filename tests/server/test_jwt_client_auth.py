"""private_key_jwt client authentication (RFC 7523 §2.2, §3; RFC 7521 §4.2) on every endpoint."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from keystile import admin
from keystile.clock import FixedClock
from keystile.core.tokens import new_client_secret, token_hash
from keystile.server.app import create_app
from tests.conftest import API, INTROSPECT, ISSUER, REVOKE, TOKEN, Creds, RegisterClient
from tests.server.jwt_support import (
    JWT_BEARER,
    METADATA,
    WALL,
    ClientKey,
    assertion_form,
    jwks_text,
)

CC = {"grant_type": "client_credentials"}


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(WALL)


@pytest.fixture(scope="module")
def app_key() -> ClientKey:
    return ClientKey("ES256")


@pytest.fixture(scope="module")
def rs_key() -> ClientKey:
    return ClientKey("ES256")


@dataclass
class Setup:
    app_key: ClientKey  # signs for client "pkj-app" (client_credentials, audience API)
    rs_key: ClientKey  # signs for client "pkj-rs" (introspects for API)
    secret_app: Creds  # a client_secret_basic client


@pytest.fixture
async def setup(
    register_client: RegisterClient,
    register_resource: Callable[..., Awaitable[None]],
    app_key: ClientKey,
    rs_key: ClientKey,
) -> Setup:
    await register_client(
        "pkj-app", default_audience=[API], auth_method="private_key_jwt", jwks=jwks_text(app_key)
    )
    await register_client(
        "pkj-rs", grant_types=[], scopes=[], auth_method="private_key_jwt", jwks=jwks_text(rs_key)
    )
    secret_app = await register_client("secret-app", default_audience=[API])
    await register_resource(API, ["pkj-rs"])
    return Setup(app_key, rs_key, secret_app)


async def token_with(http: httpx.AsyncClient, assertion: str, **extra: str) -> httpx.Response:
    return await http.post(TOKEN, data={**CC, **assertion_form(assertion, **extra)})


def assert_invalid_client(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"
    assert r.headers["www-authenticate"].startswith("Basic ")


class TestAccepted:
    @pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
    async def test_token_endpoint(self, http, register_client, alg):
        """A client signs its assertion with a key of its JWKS and gets a token (RFC 7523 §2.2)."""
        key = ClientKey(alg)
        await register_client(
            "pkj-x", default_audience=[API], auth_method="private_key_jwt", jwks=jwks_text(key)
        )

        r = await token_with(http, key.assertion("pkj-x"))

        assert r.status_code == 200, r.text
        assert r.json()["access_token"].startswith("ks_at_")

    @pytest.mark.parametrize(
        "aud", [ISSUER, ISSUER + TOKEN, [ISSUER + TOKEN, "https://elsewhere.example"]]
    )
    async def test_audience_forms(self, http, setup, aud):
        """aud may be the issuer or the token endpoint URL, alone or in an array (RFC 7523 §3)."""
        r = await token_with(http, setup.app_key.assertion("pkj-app", aud=aud))

        assert r.status_code == 200, r.text

    async def test_client_id_parameter_may_accompany(self, http, setup):
        """client_id naming the same client may be sent along (RFC 7521 §4.2)."""
        r = await token_with(http, setup.app_key.assertion("pkj-app"), client_id="pkj-app")

        assert r.status_code == 200, r.text

    async def test_introspection_and_revocation(self, http, setup):
        """Introspection and revocation accept private_key_jwt too, aud = the endpoint URL."""
        token = (await token_with(http, setup.app_key.assertion("pkj-app"))).json()["access_token"]

        r = await http.post(
            INTROSPECT,
            data={"token": token, **assertion_form(setup.rs_key.assertion("pkj-rs"))},
        )
        assert r.status_code == 200, r.text
        assert r.json()["active"] is True

        r = await http.post(
            REVOKE,
            data={
                "token": token,
                **assertion_form(setup.app_key.assertion("pkj-app", aud=ISSUER + REVOKE)),
            },
        )
        assert r.status_code == 200, r.text
        r = await http.post(
            INTROSPECT,
            data={
                "token": token,
                **assertion_form(setup.rs_key.assertion("pkj-rs", aud=ISSUER + INTROSPECT)),
            },
        )
        assert r.json() == {"active": False}

    async def test_metadata_advertises_private_key_jwt(self, http, setup):
        """Metadata lists private_key_jwt and its signing algorithms per endpoint (RFC 8414 §2)."""
        body = (await http.get(METADATA)).json()

        for endpoint in ("token", "introspection", "revocation"):
            assert "private_key_jwt" in body[f"{endpoint}_endpoint_auth_methods_supported"]
            algs = body[f"{endpoint}_endpoint_auth_signing_alg_values_supported"]
            assert {"ES256", "RS256", "EdDSA"} <= set(algs)
            assert "none" not in algs
            assert not any(a.startswith("HS") for a in algs)


REFUSALS = [
    "expired",
    "wrongly signed",
    "wrong aud",
    "aud of another endpoint",
    "missing exp",
    "exp too far ahead",
    "missing jti",
    "iss is not sub",
    "not yet valid",
    "HS256",
    "alg none",
]


def refusals(key: ClientKey) -> dict[str, str]:
    other = ClientKey("ES256", kid=key.kid)  # the right kid, the wrong key
    claims = {"iss": "pkj-app", "sub": "pkj-app", "aud": ISSUER, "exp": WALL + 60, "jti": "j1"}
    return {
        "expired": key.assertion("pkj-app", now=WALL - 120),
        "wrongly signed": other.assertion("pkj-app"),
        "wrong aud": key.assertion("pkj-app", aud="https://other-as.example"),
        "aud of another endpoint": key.assertion("pkj-app", aud=ISSUER + INTROSPECT),
        "missing exp": key.assertion("pkj-app", lifetime=None),
        "exp too far ahead": key.assertion("pkj-app", lifetime=3600),
        "missing jti": pyjwt.encode(
            {k: v for k, v in claims.items() if k != "jti"},
            key.private,
            algorithm="ES256",
            headers={"kid": key.kid},
        ),
        "iss is not sub": key.assertion("pkj-app", iss="someone-else"),
        "not yet valid": key.assertion("pkj-app", nbf=WALL + 120),
        "HS256": pyjwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": key.kid}),
        "alg none": pyjwt.encode(claims, None, algorithm="none"),
    }


class TestRefused:
    @pytest.mark.parametrize("case", REFUSALS)
    async def test_refused_with_401(self, http, setup, case):
        """Expired, forged, misaddressed or incomplete assertions: invalid_client (RFC 7523 §3)."""
        r = await token_with(http, refusals(setup.app_key)[case])

        assert_invalid_client(r)

    async def test_replay_is_refused(self, http, setup):
        """The same assertion is accepted once; its jti replayed gets 401 (RFC 7523 §3 item 7)."""
        assertion = setup.app_key.assertion("pkj-app")
        assert (await token_with(http, assertion)).status_code == 200

        r = await token_with(http, assertion)

        assert_invalid_client(r)
        assert "used before" in r.json()["error_description"]

    async def test_replay_with_a_new_signature_is_refused(self, http, setup):
        """A jti is single-use per client even inside a freshly signed assertion (RFC 7523 §3)."""
        assert (
            await token_with(http, setup.app_key.assertion("pkj-app", jti="x1"))
        ).status_code == 200

        assert_invalid_client(await token_with(http, setup.app_key.assertion("pkj-app", jti="x1")))

    async def test_introspection_never_caches_an_assertion(self, http, setup):
        """Introspection never caches an assertion: a repeat is a replay (RFC 7523 §3)."""
        form = {"token": "ks_at_" + "A" * 49, **assertion_form(setup.rs_key.assertion("pkj-rs"))}
        assert (await http.post(INTROSPECT, data=form)).status_code == 200

        assert_invalid_client(await http.post(INTROSPECT, data=form))

    async def test_secret_client_cannot_use_an_assertion(self, http, setup, register_client):
        """A client registered for client_secret_basic cannot authenticate with an assertion."""
        r = await token_with(http, setup.app_key.assertion("secret-app"))

        assert_invalid_client(r)

    async def test_unknown_client(self, http, setup):
        """An unknown client id gets the same 401 as a bad signature (RFC 6749 §5.2)."""
        r = await token_with(http, setup.app_key.assertion("nobody"))

        assert_invalid_client(r)
        assert r.json()["error_description"] == "client authentication failed"

    async def test_private_key_jwt_client_cannot_use_its_secret(self, http, store, setup):
        """A private_key_jwt client's generated secret does not authenticate it (RFC 6749 §2.3)."""
        secret = new_client_secret()
        client = await admin.get_client(store, "pkj-app")
        await store.update_client(replace(client, secret_hash=token_hash(secret)))

        r = await http.post(TOKEN, data=CC, auth=("pkj-app", secret))

        assert_invalid_client(r)

    async def test_failures_are_throttled(self, settings, store, clock, setup):
        """Failed assertions count like wrong secrets: past the limit a bad assertion gets
        429 with Retry-After until the window passes, and a good one is never refused."""
        limited = settings.model_copy(update={"throttle_failures": 2})
        app = create_app(limited, store=store, clock=clock)
        transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as h:
            bad = ClientKey("ES256", kid=setup.app_key.kid)
            for _ in range(2):
                assert_invalid_client(await token_with(h, bad.assertion("pkj-app")))

            r = await token_with(h, bad.assertion("pkj-app"))
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1
            expired = setup.app_key.assertion("pkj-app", now=WALL - 120)
            assert (await token_with(h, expired)).status_code == 429
            assert (await token_with(h, setup.app_key.assertion("pkj-app"))).status_code == 200
            clock.advance(settings.throttle_window)
            assert_invalid_client(await token_with(h, bad.assertion("pkj-app")))

    async def test_claims_are_checked_before_the_signature(self, http, setup, caplog):
        """A forged assertion whose claims could not pass anyway is refused on its claims,
        before any signature work (a flood of them costs no cryptography), with the same
        answer as any failure and the reason in the log."""
        forged = ClientKey("ES256", kid=setup.app_key.kid)
        caplog.set_level(logging.WARNING, logger="keystile")

        r = await token_with(http, forged.assertion("pkj-app", aud="https://other-as.example"))

        assert_invalid_client(r)
        assert r.json()["error_description"] == "client authentication failed"
        failed = [x for x in caplog.records if x.getMessage() == "client authentication failed"]
        assert [x.__dict__["reason"] for x in failed] == [
            "client assertion: aud must name this authorization server"
        ]

    async def test_client_id_mismatch(self, http, setup):
        """client_id naming another client than the assertion's sub is refused (RFC 7521 §4.2)."""
        r = await token_with(http, setup.app_key.assertion("pkj-app"), client_id="secret-app")

        assert_invalid_client(r)

    async def test_unsupported_assertion_type(self, http, setup):
        """An assertion type other than jwt-bearer is refused with 401 (RFC 7521 §4.2)."""
        form = {
            **CC,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
            "client_assertion": setup.app_key.assertion("pkj-app"),
        }

        assert_invalid_client(await http.post(TOKEN, data=form))

    @pytest.mark.parametrize(
        ("form", "auth"),
        [
            ({"client_assertion_type": JWT_BEARER}, None),
            ({"client_assertion": "a.b.c"}, None),
            (None, ("secret-app", "whatever")),
        ],
        ids=["type alone", "assertion alone", "with Basic too"],
    )
    async def test_malformed_requests_are_invalid_request(self, http, setup, form, auth):
        """Half an assertion, or one with Basic too, is invalid_request (RFC 6749 §2.3)."""
        data: dict[str, Any] = {
            **CC,
            **(form or assertion_form(setup.app_key.assertion("pkj-app"))),
        }

        r = await http.post(TOKEN, data=data, auth=auth)

        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"
