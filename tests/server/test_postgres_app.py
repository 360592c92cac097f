"""The AS over the PostgreSQL store, in process: the same answers as on SQLite, and a busy
pool answered with 503 + Retry-After (never a hang, never "inactive")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from keystile.settings import ServerSettings
from keystile.store.postgres import PostgresStore
from tests.conftest import INTROSPECT, ISSUER, REVOKE, TOKEN, IssueToken, Setup

ACQUIRE_TIMEOUT = 0.3


@pytest.fixture
def settings(pg_url: str) -> ServerSettings:
    return ServerSettings(db=pg_url, issuer=ISSUER, purge_interval=0)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresStore]:
    """A PostgreSQL store with a pool of two, so tests can exhaust it."""
    s = PostgresStore(pg_url, pool_size=2, acquire_timeout=ACQUIRE_TIMEOUT, max_waiting=50)
    await s.open()
    yield s
    await s.close()


async def test_token_introspect_revoke_on_postgres(
    http: httpx.AsyncClient, setup: Setup, issue_token: IssueToken
) -> None:
    """Issue, introspect (active), revoke, introspect (inactive) all work on PostgreSQL."""
    token = await issue_token(setup.app, scope="read")
    r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    assert r.status_code == 200
    body = r.json()
    assert body["active"] is True
    assert body["scope"] == "read"
    assert body["client_id"] == "app-1"
    r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)
    assert r.status_code == 200
    r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    assert r.json() == {"active": False}


async def test_busy_pool_answers_503_then_recovers(
    http: httpx.AsyncClient,
    setup: Setup,
    issue_token: IssueToken,
    store: PostgresStore,
    pg_url: str,
) -> None:
    """With every pooled connection stuck, introspection and token requests answer 503 with
    Retry-After and an RFC 6749 §5.2-shaped body within the acquire timeout; once the
    connections are free the same token introspects active again."""
    token = await issue_token(setup.app)
    blocker = await asyncpg.connect(pg_url)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT * FROM registry_version FOR UPDATE")
            # Two registry writes wait on the lock, holding both pooled connections.
            stuck = [
                asyncio.create_task(store.set_client_enabled("rs-2", False, 1_800_000_000))
                for _ in range(2)
            ]
            await asyncio.sleep(0.2)
            started = time.monotonic()
            responses = await asyncio.gather(
                *(
                    http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
                    for _ in range(5)
                ),
                http.post(TOKEN, data={"grant_type": "client_credentials"}, auth=setup.app.auth),
            )
            assert time.monotonic() - started < ACQUIRE_TIMEOUT + 1.0
            for r in responses:
                assert r.status_code == 503
                assert r.headers["retry-after"] == "1"
                assert r.json()["error"] == "temporarily_unavailable"
                assert "active" not in r.json()
        await asyncio.gather(*stuck)
    finally:
        await blocker.close()
    r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    assert r.status_code == 200
    assert r.json()["active"] is True


async def test_registration_on_postgres(
    store: PostgresStore, pg_url: str, setup: Setup, issue_token: IssueToken
) -> None:
    """RFC 7591 registration with an initial access token, the registered client's token
    introspected, RFC 7592 read, update and delete: the same answers on PostgreSQL."""
    from keystile import registration_admin
    from keystile.clock import FixedClock
    from keystile.server.app import create_app

    clock = FixedClock(1_800_000_000)
    settings = ServerSettings(
        db=pg_url,
        issuer=ISSUER,
        purge_interval=0,
        registration="initial-access-token",
        registration_scopes=["read"],
        registration_audience=["https://api.example.test"],
    )
    _, iat = await registration_admin.create_initial_access_token(store, clock, uses=1)
    app = create_app(settings, store=store, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as reg:
        r = await reg.post(
            "/oauth2/register",
            json={"grant_types": ["client_credentials"], "client_name": "On PG"},
            headers={"Authorization": f"Bearer {iat}"},
        )
        assert r.status_code == 201, r.text
        got = r.json()
        again = await reg.post(
            "/oauth2/register",
            json={"grant_types": ["client_credentials"]},
            headers={"Authorization": f"Bearer {iat}"},
        )
        assert again.status_code == 401  # single use, spent
        t = await reg.post(
            TOKEN,
            data={"grant_type": "client_credentials"},
            auth=(got["client_id"], got["client_secret"]),
        )
        assert t.status_code == 200, t.text
        seen = await reg.post(
            INTROSPECT, data={"token": t.json()["access_token"]}, auth=setup.rs.auth
        )
        assert seen.json()["active"] is True
        manage = {"Authorization": f"Bearer {got['registration_access_token']}"}
        read = await reg.get(got["registration_client_uri"], headers=manage)
        assert read.json()["client_name"] == "On PG"
        put = await reg.put(
            got["registration_client_uri"],
            headers=manage,
            json={
                "client_id": got["client_id"],
                "grant_types": ["client_credentials"],
                "client_name": "Renamed",
            },
        )
        assert put.status_code == 200, put.text
        assert (await store.get_client(got["client_id"])).name == "Renamed"  # type: ignore[union-attr]
        assert (await reg.delete(got["registration_client_uri"], headers=manage)).status_code == 204
        assert await store.get_client(got["client_id"]) is None
        gone = await reg.post(
            INTROSPECT, data={"token": t.json()["access_token"]}, auth=setup.rs.auth
        )
        assert gone.json() == {"active": False}
