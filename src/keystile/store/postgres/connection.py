"""The PostgreSQL store's lifecycle, migrations and plumbing: pooled connections,
transactions, and errors turned into StoreUnavailable or Conflict."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from keystile.core.models import TokenRecord
from keystile.errors import StoreUnavailable
from keystile.store.base import Conflict
from keystile.store.postgres.pool import _UNAVAILABLE, _Pool, _reusable_after, _unavailable
from keystile.store.rows import migrations as _migrations

T = TypeVar("T")


log = logging.getLogger("keystile.store")


Lookup = tuple[int, TokenRecord | None]

# Whether this transaction changed what an introspection answer depends on (set by the
# triggers of the answer-memory migration, transaction-local): read just before COMMIT.
CHANGED_SQL = "SELECT current_setting('keystile.answers_changed', true) = '1'"


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def migrations() -> list[tuple[int, str, str]]:
    """The versioned SQL migrations shipped for this engine, in order."""
    return _migrations("keystile.store.migrations.postgres")


class PostgresBase:
    """Pool, lifecycle and statement helpers; the aggregates are mixins."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        acquire_timeout: float = 2.0,
        query_timeout: float = 5.0,
        max_waiting: int | None = None,
        listen_retry: float = 1.0,
    ) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.acquire_timeout = acquire_timeout
        self.query_timeout = query_timeout
        # Requests allowed to wait for a connection; beyond that, 503 at once.
        self.max_waiting = 4 * pool_size if max_waiting is None else max_waiting
        self.listen_retry = listen_retry
        self.schema = ""
        self._pool: _Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        # Introspection lookups waiting for the next statement, and the tasks running them.
        self._batch: list[tuple[bytes | None, asyncio.Future[Lookup]]] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self.lookups = 0
        self.lookup_statements = 0

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, timeout=self.acquire_timeout, command_timeout=self.query_timeout
        )
        return conn

    async def open(self, *, migrate: bool = True) -> None:
        """Open the pool and (by default) apply pending migrations."""
        if self._pool is not None:
            return
        pool = _Pool(
            self._connect,
            size=self.pool_size,
            acquire_timeout=self.acquire_timeout,
            max_waiting=self.max_waiting,
        )
        try:
            conn = await self._connect()
            try:
                if migrate:
                    await self._migrate(conn)
                self.schema = await conn.fetchval("SELECT current_schema()") or ""
            except BaseException:
                conn.terminate()
                raise
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        # The first connection stays, so the first request does not wait for a connect.
        pool.opened = 1
        pool.release(conn)
        self._pool = pool

    @staticmethod
    async def _migrate(conn: asyncpg.Connection) -> None:
        # One transaction under an advisory lock (per schema): instances starting together
        # queue here, and each migration is applied exactly once. DDL is transactional, so
        # a failed migration leaves nothing half-done.
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('keystile.migrate:' || current_schema()))"
            )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
            )
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                    version,
                    name,
                    int(time.time()),
                )
                log.info("migration applied", extra={"version": version, "migration": name})

    async def close(self) -> None:
        for task in list(self._batch_tasks):
            task.cancel()
        for task in list(self._batch_tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            task, self._listener = self._listener, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(self.query_timeout)

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection (see _Pool for the bounds); errors become StoreUnavailable.
        SQL errors (NotFound, Conflict...) pass through and the connection is reused."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is not open")
        try:
            conn = await pool.acquire()
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        try:
            yield conn
        except BaseException as exc:
            pool.release(conn, reusable=_reusable_after(exc))
            if isinstance(exc, _UNAVAILABLE):
                raise _unavailable(exc) from exc
            raise
        pool.release(conn)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._acquire() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        async with self._acquire() as conn:
            return await conn.fetchrow(sql, *args)

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` in one transaction; integrity violations become Conflict. A
        transaction that changed what an introspection answer depends on returns only
        after the fence (answers.py): every process has forgotten what it remembered."""
        async with self._acquire() as conn:
            try:
                async with conn.transaction():
                    result = await fn(conn)
                    changed = await conn.fetchval(CHANGED_SQL)
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise Conflict(str(exc)) from exc
        if changed:
            await self._fence()
        return result

    async def _write1(self, sql: str, *args: Any) -> int:
        """One statement in a transaction of its own; the rows it changed. Integrity
        violations (a taken key, an unknown user) become Conflict. Fenced like ``_tx``."""
        async with self._acquire() as conn:
            try:
                async with conn.transaction():
                    status = await conn.execute(sql, *args)
                    changed = await conn.fetchval(CHANGED_SQL)
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise Conflict(str(exc)) from exc
        if changed:
            await self._fence()
        return _rowcount(status)

    async def _fence(self) -> None:
        """Wait until no process answers from memory what a committed change altered
        (answers.py overrides this)."""

    async def ping(self) -> None:
        await self._fetch("SELECT 1")

    async def schema_version(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    @property
    def pool_stats(self) -> dict[str, int]:
        """Connections open and idle, and requests waiting for one (for /metrics)."""
        pool = self._pool
        if pool is None:
            return {"size": 0, "idle": 0, "waiting": 0}
        return {"size": pool.opened, "idle": pool.idle, "waiting": pool.waiting}

    @property
    def lookup_stats(self) -> dict[str, int]:
        """Introspection lookups answered, and the statements that answered them."""
        return {"lookups": self.lookups, "statements": self.lookup_statements}

    async def get_meta(self, key: str) -> str | None:
        row = await self._fetchrow("SELECT value FROM meta WHERE key = $1", key)
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            await c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                key,
                value,
            )

        await self._tx(fn)

    async def claim_meta(self, key: str, value: str) -> str:
        async def fn(c: asyncpg.Connection) -> str:
            await c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                key,
                value,
            )
            stored = await c.fetchval("SELECT value FROM meta WHERE key = $1", key)
            return str(stored)

        return await self._tx(fn)
