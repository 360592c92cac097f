"""Dynamic client registration of OpenID Connect metadata: id_token_signed_response_alg (OIDC
Registration §2) and post_logout_redirect_uris (RP-Initiated Logout §3.1), then used."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from keystile.store.sqlite import SQLiteStore
from tests.server import test_registration as registration
from tests.server.test_registration import WEB, assert_error, register

# The registration tests' fixtures: an app with the initial-access-token policy, a token.
make_http = registration.make_http
reg = registration.reg
iat = registration.iat

LOGOUT_URI = "https://app.example.test/signed-out"


class TestOidcMetadata:
    async def test_registered_and_echoed(
        self, reg: httpx.AsyncClient, iat: str, store: SQLiteStore
    ) -> None:
        """Both fields are kept on the client and echoed in the RFC 7591 §3.2.1 answer."""
        body = {
            **WEB,
            "scope": "read",
            "id_token_signed_response_alg": "ES256",
            "post_logout_redirect_uris": [LOGOUT_URI],
        }
        r = await register(reg, body, iat)
        assert r.status_code == 201, r.text
        info = r.json()
        assert info["id_token_signed_response_alg"] == "ES256"
        assert info["post_logout_redirect_uris"] == [LOGOUT_URI]
        client = await store.get_client(info["client_id"])
        assert client is not None
        assert client.id_token_signed_response_alg == "ES256"
        assert client.post_logout_redirect_uris == (LOGOUT_URI,)
        # RFC 7592 §2.1: read back the same.
        r = await reg.get(
            info["registration_client_uri"].removeprefix("https://as.example.test"),
            headers={"Authorization": f"Bearer {info['registration_access_token']}"},
        )
        assert r.json()["post_logout_redirect_uris"] == [LOGOUT_URI]

    async def test_omitted_fields_are_not_echoed(self, reg: httpx.AsyncClient, iat: str) -> None:
        r = await register(reg, WEB, iat)
        assert "id_token_signed_response_alg" not in r.json()
        assert "post_logout_redirect_uris" not in r.json()

    @pytest.mark.parametrize(
        "body",
        [
            {**WEB, "id_token_signed_response_alg": "none"},
            {**WEB, "id_token_signed_response_alg": "HS256"},
            {**WEB, "id_token_signed_response_alg": 256},
            {**WEB, "post_logout_redirect_uris": LOGOUT_URI},
            {**WEB, "post_logout_redirect_uris": ["http://app.example.test/out"]},
            {**WEB, "post_logout_redirect_uris": [LOGOUT_URI + "#x"]},
            {**WEB, "post_logout_redirect_uris": ["/relative"]},
        ],
        ids=["none", "hs256", "number", "not-a-list", "plain-http", "fragment", "relative"],
    )
    async def test_refused(
        self, reg: httpx.AsyncClient, iat: str, store: SQLiteStore, body: Any
    ) -> None:
        """RFC 7591 §3.2.2: invalid_client_metadata, nothing stored; unsigned ID tokens
        (none) and symmetric algorithms are never offered."""
        r = await register(reg, body, iat)
        assert_error(r, 400, "invalid_client_metadata")
        assert await store.list_registrations() == []
