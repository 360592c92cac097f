"""Helpers of the admin API tests: admin clients, their tokens, bearer headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import TOKEN, RegisterClient

ADMIN = "/admin/v1"


@dataclass
class AdminTokens:
    write: str  # scope keystile:admin, client "ops"
    read: str  # scope keystile:admin:read, client "auditor"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def admin_tokens(http: httpx.AsyncClient, register_client: RegisterClient) -> AdminTokens:
    """Two admin clients (write and read-only) and an access token of each."""
    ops = await register_client("ops", scopes=["keystile:admin"])
    auditor = await register_client("auditor", scopes=["keystile:admin:read"])
    tokens = []
    for creds, scope in ((ops, "keystile:admin"), (auditor, "keystile:admin:read")):
        r = await http.post(
            TOKEN, data={"grant_type": "client_credentials", "scope": scope}, auth=creds.auth
        )
        assert r.status_code == 200, r.text
        tokens.append(str(r.json()["access_token"]))
    return AdminTokens(*tokens)


async def admin_events(http: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    """The admin_action events in the log, oldest first."""
    r = await http.get(f"{ADMIN}/events", params={"after": 0, "limit": 500}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return [e for e in r.json()["items"] if e["type"] == "admin_action"]
