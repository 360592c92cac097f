"""The README flow in-process: token, introspect, revoke, introspect again."""

from __future__ import annotations

from tests.conftest import API, INTROSPECT, ISSUER, REVOKE


async def test_token_introspect_revoke(http, setup, issue_token):
    """An issued token introspects active with the RFC 7662 §2.2 claims; revoked, inactive."""
    token = await issue_token(setup.app, scope="read")
    r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    assert r.status_code == 200
    body = r.json()
    assert body["active"] is True
    assert body["scope"] == "read"
    assert body["client_id"] == "app-1"
    assert body["aud"] == API
    assert body["iss"] == ISSUER
    assert r.headers["cache-control"] == "no-store"
    r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)
    assert r.status_code == 200
    r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    assert r.json() == {"active": False}
