"""The admin API over the PostgreSQL store: the same answers and audit events as on
SQLite for a few endpoints, including the store methods it added (jti lookup, revoke by
client, audit events)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from keystile.clock import FixedClock
from keystile.settings import ServerSettings
from keystile.store.postgres import PostgresStore
from tests.conftest import INTROSPECT, ISSUER, REVOKE, IssueToken, RegisterClient, Setup
from tests.server.admin_support import ADMIN, AdminTokens, admin_events, admin_tokens, bearer
from tests.server.test_admin_stats import check_stats_add_up


@pytest.fixture
def settings(pg_url: str) -> ServerSettings:
    return ServerSettings(db=pg_url, issuer=ISSUER, purge_interval=0, admin_api=True)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_url, pool_size=4)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def tokens(http: httpx.AsyncClient, register_client: RegisterClient) -> AdminTokens:
    return await admin_tokens(http, register_client)


async def test_create_client_and_audit_on_postgres(
    http: httpx.AsyncClient, tokens: AdminTokens
) -> None:
    """POST /clients creates the client; its admin_action event is in the PostgreSQL log."""
    w = bearer(tokens.write)
    r = await http.post(f"{ADMIN}/clients", json={"client_id": "pg-app"}, headers=w)
    assert r.status_code == 201, r.text
    assert (await http.get(f"{ADMIN}/clients/pg-app", headers=w)).json()["client_id"] == "pg-app"
    events = await admin_events(http, tokens.read)
    assert [(e["action"], e["target"], e["actor"]) for e in events] == [
        ("client.create", "pg-app", "ops")
    ]


async def test_find_by_jti_and_revoke_by_client_on_postgres(
    http: httpx.AsyncClient, tokens: AdminTokens, setup: Setup, issue_token: IssueToken
) -> None:
    """A token is found by jti; revoking by client makes all its tokens inactive."""
    w = bearer(tokens.write)
    first = await issue_token(setup.app, scope="read")
    second = await issue_token(setup.app, scope="read")
    digest = hashlib.sha256(first.encode()).hexdigest()
    found = (await http.get(f"{ADMIN}/tokens", params={"digest": digest}, headers=w)).json()
    r = await http.get(f"{ADMIN}/tokens", params={"jti": found["jti"]}, headers=w)
    assert r.json()["token_sha256"] == digest
    r = await http.post(f"{ADMIN}/clients/app-1/revoke-tokens", headers=w)
    assert r.json() == {"client_id": "app-1", "tokens_revoked": 2}
    for token in (first, second):
        r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
        assert r.json() == {"active": False}


async def test_revoked_admin_token_is_refused_on_postgres(
    http: httpx.AsyncClient, register_client: RegisterClient
) -> None:
    """A revoked admin token is refused on the next request."""
    ops = await register_client("ops-pg", scopes=["keystile:admin"])
    r = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "keystile:admin"},
        auth=ops.auth,
    )
    token = r.json()["access_token"]
    assert (await http.get(f"{ADMIN}/users", headers=bearer(token))).status_code == 200
    await http.post(REVOKE, data={"token": token}, auth=ops.auth)
    assert (await http.get(f"{ADMIN}/users", headers=bearer(token))).status_code == 401


async def test_stats_add_up_live_instances_on_postgres(
    http: httpx.AsyncClient,
    register_client: RegisterClient,
    setup: Setup,
    issue_token: IssueToken,
    store: PostgresStore,
    clock: FixedClock,
    settings: ServerSettings,
) -> None:
    """GET /stats sums this process and another one's row in PostgreSQL, and leaves out
    (then purges) a process silent past the staleness bound."""
    await check_stats_add_up(
        http, register_client, setup, issue_token, store, clock, settings.stats_interval
    )
