"""What only the PostgreSQL store has: migrations under a lock, a bounded pool, timeouts,
errors as StoreUnavailable, and LISTEN/NOTIFY wake-ups that survive a lost connection."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from typer.testing import CliRunner

from keystile.cli import app as cli_app
from keystile.errors import StoreUnavailable
from keystile.store.postgres import PostgresStore, migrations
from tests.conftest import pg_execute
from tests.store.test_contract import NOW, client, token

pytestmark = pytest.mark.usefixtures("postgres")


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's schema, for holding locks the store must wait on."""
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def _opened(url: str, **kwargs: object) -> PostgresStore:
    store = PostgresStore(url, **kwargs)  # type: ignore[arg-type]
    await store.open()
    return store


class TestMigrations:
    async def test_instances_starting_together_migrate_once(self, pg_url: str) -> None:
        """Four stores opening a new schema at the same moment all succeed, and each
        migration is recorded exactly once (the advisory lock serializes them)."""
        stores = await asyncio.gather(*(_opened(pg_url) for _ in range(4)))
        try:
            conn = await asyncpg.connect(pg_url)
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            await conn.close()
            assert [r[0] for r in rows] == [v for v, _, _ in migrations()]
        finally:
            for s in stores:
                await s.close()

    def test_db_upgrade_command_migrates_and_hides_the_password(self, pg_url: str) -> None:
        """`keystile db upgrade --db postgresql://…` applies the migrations and never prints
        the password of the URL."""
        url = pg_url.replace("root@", "root:hunter2@")
        result = CliRunner().invoke(cli_app, ["db", "upgrade", "--db", url, "--json"])
        assert result.exit_code == 0, result.output
        assert "hunter2" not in result.output
        assert f'"schema_version": {migrations()[-1][0]}' in result.output
        assert "root:***@" in result.output


class TestUnavailable:
    async def test_unreachable_server_is_store_unavailable_fast(self, postgres: str) -> None:
        """Opening a store on a port where nothing listens raises StoreUnavailable, at once."""
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await _opened("postgresql://root@127.0.0.1:1/test", acquire_timeout=1.0)
        assert time.monotonic() - started < 2.0

    async def test_missing_schema_is_store_unavailable(self, pg_url: str) -> None:
        """A store that was never migrated answers StoreUnavailable, not an empty result."""
        store = PostgresStore(pg_url)
        await store.open(migrate=False)
        try:
            with pytest.raises(StoreUnavailable):
                await store.lookup_token(b"x" * 32)
            with pytest.raises(StoreUnavailable):
                await store.get_client("app-1")
        finally:
            await store.close()

    async def test_a_query_over_its_timeout_is_store_unavailable(
        self, pg_url: str, raw: asyncpg.Connection
    ) -> None:
        """A write stuck behind a lock gives up after query_timeout with StoreUnavailable."""
        store = await _opened(pg_url, query_timeout=0.3)
        try:
            async with raw.transaction():
                await raw.execute("SELECT * FROM registry_version FOR UPDATE")
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await store.create_client(client())
                assert time.monotonic() - started < 1.5
            assert await store.get_client("app-1") is None
        finally:
            await store.close()


class TestPoolBounds:
    async def test_exhausted_pool_waits_acquire_timeout_then_fails(
        self, pg_url: str, raw: asyncpg.Connection
    ) -> None:
        """With every connection busy, a lookup waits acquire_timeout, then raises
        StoreUnavailable; it never hangs, and the pool serves again once freed."""
        store = await _opened(pg_url, pool_size=2, acquire_timeout=0.3, max_waiting=10)
        try:
            async with raw.transaction():
                await raw.execute("SELECT * FROM registry_version FOR UPDATE")
                blocked = [
                    asyncio.create_task(store.create_client(client(f"c{i}"))) for i in range(2)
                ]
                await asyncio.sleep(0.2)  # both connections are now waiting on the lock
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="no connection free"):
                    await store.lookup_token(b"x" * 32)
                assert 0.25 < time.monotonic() - started < 1.5
            await asyncio.gather(*blocked)
            assert (await store.lookup_token(None))[0] > 0
        finally:
            await store.close()

    async def test_waiting_queue_is_bounded(self, pg_url: str, raw: asyncpg.Connection) -> None:
        """Past pool_size + max_waiting requests, more are refused at once, not queued."""
        store = await _opened(pg_url, pool_size=1, acquire_timeout=2.0, max_waiting=2)
        try:
            async with raw.transaction():
                await raw.execute("SELECT * FROM registry_version FOR UPDATE")
                busy = [asyncio.create_task(store.create_client(client()))]
                busy += [asyncio.create_task(store.get_client("app-1")) for _ in range(2)]
                await asyncio.sleep(0.1)
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="requests waiting"):
                    await store.get_client("app-1")
                assert time.monotonic() - started < 0.1
            results = await asyncio.gather(*busy)
            assert results[1] == results[2] == client()
        finally:
            await store.close()

    async def test_concurrent_lookups_share_statements(self, pg_url: str) -> None:
        """Many concurrent introspection lookups are answered by fewer statements, and each
        gets its own token (or None) and the same registry version."""
        store = await _opened(pg_url, pool_size=2)
        try:
            tokens = [token() for _ in range(20)]
            for t in tokens:
                await store.insert_token(t)
            unknown = [secrets.token_bytes(32) for _ in range(10)]
            asked = [t.token_hash for t in tokens] + unknown + [None, tokens[0].token_hash]
            before = store.lookup_stats
            answers = await asyncio.gather(*(store.lookup_token(h) for h in asked))
            after = store.lookup_stats
            assert [record for _, record in answers] == [*tokens, *([None] * 11), tokens[0]]
            assert len({version for version, _ in answers}) == 1
            assert after["lookups"] - before["lookups"] == len(asked)
            assert after["statements"] - before["statements"] < len(asked) // 4
        finally:
            await store.close()

    async def test_cancelled_request_frees_its_connection(
        self, pg_url: str, raw: asyncpg.Connection
    ) -> None:
        """A request cancelled mid-query (its client went away) gives its slot back: the
        connection is dropped, not reused, and the pool serves the next request."""
        store = await _opened(pg_url, pool_size=1, acquire_timeout=1.0)
        try:
            async with raw.transaction():
                await raw.execute("SELECT * FROM registry_version FOR UPDATE")
                task = asyncio.create_task(store.create_client(client()))
                await asyncio.sleep(0.1)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            assert store.pool_stats == {"size": 0, "idle": 0, "waiting": 0}
            assert (await store.lookup_token(None))[0] == 0  # the insert never happened
            assert store.pool_stats == {"size": 1, "idle": 1, "waiting": 0}
        finally:
            await store.close()

    async def test_connections_killed_by_the_server_are_replaced(
        self, pg_url: str, raw: asyncpg.Connection
    ) -> None:
        """When the server ends every pooled connection (a restart, a failover), the next
        requests get fresh connections; none answers with stale data."""
        app_name = f"keystile-test-{secrets.token_hex(4)}"
        store = await _opened(f"{pg_url}&application_name={app_name}", pool_size=3)
        try:
            t = token()
            await store.insert_token(t)
            await asyncio.gather(*(store.lookup_token(t.token_hash) for _ in range(6)))
            killed = await raw.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = $1",
                app_name,
            )
            assert killed >= 1
            await asyncio.sleep(0.1)  # the terminations reach the client
            for _ in range(3):
                _, found = await store.lookup_token(t.token_hash)
                assert found == t
        finally:
            await store.close()


class TestNotifications:
    async def test_events_from_another_process_wake_the_listener(self, pg_url: str) -> None:
        """An event committed through another store calls the listener's callback."""
        listener, writer = await _opened(pg_url), await _opened(pg_url)
        woke = asyncio.Event()
        try:
            await listener.listen_events(woke.set)
            t = token()
            await writer.insert_token(t)
            assert not woke.is_set()  # a token insert is no event
            await writer.revoke_token(t.token_hash, "app-1", NOW)
            await asyncio.wait_for(woke.wait(), 2.0)
        finally:
            await writer.close()
            await listener.close()

    async def test_listener_reconnects_after_losing_its_connection(
        self, pg_url: str, raw: asyncpg.Connection
    ) -> None:
        """When the LISTEN connection is killed, the store reconnects, calls the callback
        once to catch up, and later events wake it again."""
        app_name = f"keystile-test-{secrets.token_hex(4)}"
        store = await _opened(f"{pg_url}&application_name={app_name}", listen_retry=0.05)
        calls: list[float] = []
        woke = asyncio.Event()

        def callback() -> None:
            calls.append(time.monotonic())
            woke.set()

        try:
            await store.listen_events(callback)
            killed = await raw.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND application_name = $1",
                app_name,
            )
            assert killed == 1
            await asyncio.wait_for(woke.wait(), 3.0)  # the catch-up call after reconnecting
            woke.clear()
            t = token()
            await store.insert_token(t)
            await store.revoke_token(t.token_hash, "app-1", NOW)
            await asyncio.wait_for(woke.wait(), 3.0)
            assert len(calls) >= 2
        finally:
            await store.close()

    async def test_other_schemas_do_not_wake_the_listener(self, pg_url: str) -> None:
        """A deployment in another schema of the same database does not wake this one."""
        schema = f"keystile_test_{secrets.token_hex(6)}"
        await pg_execute(f"CREATE SCHEMA {schema}")
        other_url = pg_url.rsplit("search_path=", 1)[0] + f"search_path={schema}"
        listener = await _opened(pg_url)
        other = await _opened(other_url)
        woke = asyncio.Event()
        try:
            await listener.listen_events(woke.set)
            t = token()
            await other.insert_token(t)
            await other.revoke_token(t.token_hash, "app-1", NOW)
            await asyncio.sleep(0.3)
            assert not woke.is_set()
        finally:
            await other.close()
            await listener.close()
            await pg_execute(f"DROP SCHEMA {schema} CASCADE")
