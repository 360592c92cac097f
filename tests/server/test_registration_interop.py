"""Dynamic registration seen by software that is not keystile's: Authlib checks the
registered metadata (RFC 7591 §2) and runs the code flow (RFC 6749 §4.1, RFC 7636) as the
public client an open registration made, the way an MCP client registers itself."""

from __future__ import annotations

import warnings
from typing import Any

import httpx

from keystile import admin
from keystile.clock import FixedClock
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import API, INTROSPECT, ISSUER
from tests.server.test_authorize import AUTHORIZE, CONSENT, LOGIN, hidden

REDIRECT = "http://127.0.0.1:8765/callback"  # a native app's loopback listener (RFC 8252 §7.3)


async def test_authlib_accepts_metadata_and_runs_the_code_flow(
    db_path: Any, store: SQLiteStore, clock: FixedClock, register_client: Any
) -> None:
    """A client registered under the open policy passes Authlib's RFC 7591 metadata checks,
    then gets, uses and refreshes tokens through Authlib's OAuth 2.0 client."""
    from authlib.common.security import generate_token
    from authlib.deprecate import AuthlibDeprecationWarning
    from authlib.oauth2.rfc7591 import ClientMetadataClaims

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AuthlibDeprecationWarning)  # httpx vs httpx2
        from authlib.integrations.httpx_client import AsyncOAuth2Client

    settings = ServerSettings(
        db=str(db_path),
        issuer=ISSUER,
        purge_interval=0,
        registration="open",
        registration_scopes=["read", "write"],
        registration_audience=[API],
    )
    app = create_app(settings, store=store, clock=clock)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    await admin.create_user(store, clock, username="alice", password="correct horse battery")
    rs = await register_client("rs-1", grant_types=[], scopes=[])
    await admin.create_resource_server(store, clock, identifier=API, introspection_clients=["rs-1"])

    async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as http:
        meta = (await http.get("/.well-known/oauth-authorization-server")).json()
        r = await http.post(
            meta["registration_endpoint"],
            json={
                "client_name": "Desktop agent",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none",
                "scope": "read",
            },
        )
        assert r.status_code == 201, r.text
        registered = r.json()
        claims = ClientMetadataClaims(registered, {})
        claims.validate()  # Authlib's own RFC 7591 §2 rules: raises on any bad field

        client = AsyncOAuth2Client(
            registered["client_id"],
            scope="read",
            redirect_uri=REDIRECT,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",
            transport=transport,
            base_url=ISSUER,
        )
        async with client:
            verifier = generate_token(64)
            url, state = client.create_authorization_url(ISSUER + AUTHORIZE, code_verifier=verifier)
            page = await http.get(url)
            assert page.status_code == 200, page.text
            fields = hidden(page.text)
            login = await http.post(
                LOGIN,
                data={**fields, "username": "alice", "password": "correct horse battery"},
            )
            assert login.status_code == 303, login.text
            consent = await http.get(login.headers["location"])
            assert "Desktop agent" in consent.text
            allowed = await http.post(CONSENT, data={**hidden(consent.text), "decision": "allow"})
            assert allowed.status_code == 303, allowed.text
            callback = allowed.headers["location"]
            assert callback.startswith(REDIRECT + "?")
            token = await client.fetch_token(
                ISSUER + "/oauth2/token",
                authorization_response=callback,
                state=state,
                code_verifier=verifier,
            )
            assert token["scope"] == "read"
            seen = await http.post(INTROSPECT, data={"token": token["access_token"]}, auth=rs.auth)
            assert seen.json()["active"] is True
            assert seen.json()["client_id"] == registered["client_id"]
            refreshed = await client.refresh_token(
                ISSUER + "/oauth2/token", refresh_token=token["refresh_token"]
            )
            assert refreshed["access_token"] != token["access_token"]

    # Used now: the client no longer counts as an unused open registration.
    registration = await store.get_registration(registered["client_id"])
    assert registration is not None
    assert registration.used_at == clock.now()
