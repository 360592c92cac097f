"""The scale-out store: PostgreSQL through a bounded connection pool, shared by many AS processes.

Same protocol and semantics as the SQLite store (``store/base.py``), with PostgreSQL as the
one truth for every process:

- Nothing durable is cached in-process. The introspection hot path is one statement that
  reads the token and ``registry_version`` together (the server's verified-caller cache is
  valid only for that version), and ``registry_version`` is bumped by triggers on every
  change to clients and resource servers, whichever process makes it.
- Every change and its event commit in one transaction. Event ids are handed out under a
  row lock held to commit (see the migration), so they become visible strictly in order and
  ``latest_event_id()`` never goes backwards, not even after a purge.
- ``listen_events`` wakes the event bus through LISTEN/NOTIFY on a dedicated connection,
  reconnecting when it is lost.
- The pool is bounded: a request waits at most ``acquire_timeout`` for a connection, and
  at most ``max_waiting`` requests wait at all; past either bound, and on any connection or
  query error, the store raises StoreUnavailable, which the server answers with 503.
- Concurrent introspection lookups share one statement (see ``lookup_token``), so under
  load the per-statement cost of a database server is paid once for many requests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "the PostgreSQL store needs the postgres extra: pip install 'keystile[postgres]'"
    ) from exc

from keystile.core.models import (
    AuthorizationCode,
    Client,
    Grant,
    ResourceServer,
    Session,
    SigningKey,
    TokenRecord,
    User,
)
from keystile.errors import StoreUnavailable
from keystile.store.base import (
    CLIENT_DELETED,
    CLIENT_DISABLED,
    CODE_REPLAYED,
    GRANT_REVOKED,
    REFRESH_TOKEN_REPLAYED,
    REFRESH_TOKEN_REVOKED,
    TOKEN_REVOKED,
    USER_DELETED,
    USER_DISABLED,
    USER_REVOKE_SESSIONS,
    USER_SESSIONS_REVOKED,
    CodeRedemption,
    Conflict,
    Event,
    NewToken,
    NotFound,
    PurgeResult,
    Rotation,
)
from keystile.store.rows import (
    CLIENT_COLUMNS,
    CODE_COLUMNS,
    GRANT_COLUMNS,
    KEY_COLUMNS,
    TOKEN_COLUMNS,
    USER_COLUMNS,
    client_from_row,
    client_params,
    code_from_row,
    code_params,
    grant_from_row,
    grant_params,
    join,
    key_from_row,
    placeholders,
    revoked_token_payload,
    split,
    token_from_row,
    token_params,
    user_from_row,
    user_params,
)
from keystile.store.rows import migrations as _migrations

T = TypeVar("T")

log = logging.getLogger("keystile.store")

EVENTS_CHANNEL = "keystile_events"
# Errors that mean "the database could not answer", never "the answer is no".
_UNAVAILABLE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

# One statement, one snapshot: the registry version and the token observed together. The
# token's own hash is not read back: the caller has it. A NULL hash matches no row.
_LOOKUP_SQL = (
    "SELECT rv.version, t.kind, t.client_id, t.scope, t.aud, t.iat, t.nbf, t.exp, t.jti,"
    " t.sub, t.username, t.grant_id, t.revoked_at"
    " FROM registry_version rv LEFT JOIN tokens t ON t.token_hash = $1 WHERE rv.id = 1"
)
# The same for several tokens at once (see PostgresStore.lookup_token): matched tokens come
# back one row each; when none matches, one row with the version and NULLs.
_LOOKUP_MANY_SQL = (
    "SELECT rv.version, t.token_hash, t.kind, t.client_id, t.scope, t.aud, t.iat, t.nbf, t.exp,"
    " t.jti, t.sub, t.username, t.grant_id, t.revoked_at"
    " FROM registry_version rv LEFT JOIN tokens t ON t.token_hash = ANY($1::bytea[])"
    " WHERE rv.id = 1"
)
_USER_COLUMNS_U = ", ".join("u." + c.strip() for c in USER_COLUMNS.split(","))
_MAX_BATCH = 256  # lookups per statement
Lookup = tuple[int, TokenRecord | None]
_RS_SELECT = (
    "SELECT rs.identifier, rs.name, rs.claims, rs.rules, rs.created_at, rs.updated_at,"
    " rs.introspection_response,"
    " (SELECT string_agg(client_id, ' ') FROM resource_server_clients rsc"
    "   WHERE rsc.identifier = rs.identifier)"
    " FROM resource_servers rs"
)


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


def _rs_from_row(r: Any) -> ResourceServer:
    return ResourceServer(
        identifier=r[0],
        name=r[1],
        claims=split(r[2]),
        rules=split(r[3]),
        created_at=r[4],
        updated_at=r[5],
        introspection_response=r[6],
        introspection_clients=split(r[7] or ""),
    )


def _unavailable(exc: BaseException) -> StoreUnavailable:
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(f"PostgreSQL store unavailable: {detail}")


def _reusable_after(exc: BaseException) -> bool:
    """May a connection go back to the pool after ``exc``? Yes after an error the server
    reported (SQL errors, and our NotFound/Conflict raised after the rollback); no after
    I/O errors, timeouts and cancellation, which can leave it mid-protocol."""
    if isinstance(exc, asyncpg.PostgresError):
        return not isinstance(exc, asyncpg.PostgresConnectionError)
    return isinstance(exc, Exception) and not isinstance(exc, _UNAVAILABLE)


class _Pool:
    """A bounded pool of connections, lean on the hot path: taking an idle connection and
    giving it back never awaits. Only when every connection is busy does a caller wait, at
    most ``acquire_timeout`` and behind at most ``max_waiting`` others; past either bound it
    gets StoreUnavailable (503), never an unbounded queue.

    A connection that saw an error other than an SQL error (I/O, timeout, cancellation) is
    closed rather than reused; closed connections (the server restarted) are skipped and
    replaced on demand, so the pool heals by itself when the database comes back.
    (asyncpg's own pool costs about as much CPU per request as the query itself, measured.)
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        size: int,
        acquire_timeout: float,
        max_waiting: int,
    ) -> None:
        self._connect = connect
        self.size = size
        self.acquire_timeout = acquire_timeout
        self.max_waiting = max_waiting
        self.opened = 0  # open or opening, idle or in use
        self._idle: list[asyncpg.Connection] = []
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> asyncpg.Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()  # LIFO: the fewest connections stay warm
            if not conn.is_closed():
                return conn
            self.opened -= 1
        return await self._acquire_slow()

    async def _acquire_slow(self) -> asyncpg.Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.acquire_timeout
        while True:
            if self.closed:
                raise StoreUnavailable("store is not open")
            if self.opened < self.size:
                self.opened += 1
                try:
                    async with asyncio.timeout_at(deadline):
                        return await self._connect()
                except BaseException:
                    self.opened -= 1
                    self._hand(None)
                    raise
            if len(self._waiters) >= self.max_waiting:
                raise StoreUnavailable(
                    f"PostgreSQL store busy: {self.size} connections in use and "
                    f"{self.max_waiting} requests waiting"
                )
            waiter: asyncio.Future[asyncpg.Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await waiter
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():  # handed over at the last moment
                    self._give_back(waiter.result())
                raise StoreUnavailable(
                    f"PostgreSQL store busy: no connection free within {self.acquire_timeout} s"
                ) from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if conn is not None:
                return conn
            # None: a connection was dropped, so a slot is free: go round and open one.

    def release(self, conn: asyncpg.Connection, *, reusable: bool = True) -> None:
        if reusable and not self.closed and not conn.is_closed():
            self._hand(conn)
            return
        self.opened -= 1
        if not conn.is_closed():
            conn.terminate()
        self._hand(None)

    def _give_back(self, conn: asyncpg.Connection | None) -> None:
        if conn is not None:
            self.release(conn)

    def _hand(self, conn: asyncpg.Connection | None) -> None:
        """Pass a connection (or a free slot, None) to the first live waiter, else keep it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    async def close(self, grace: float) -> None:
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(StoreUnavailable("store is closing"))
        idle, self._idle = self._idle, []
        for conn in idle:
            self.opened -= 1
            try:
                await conn.close(timeout=grace)
            except (*_UNAVAILABLE, asyncio.CancelledError):
                conn.terminate()


class PostgresStore:
    """Store protocol over PostgreSQL:
    ``PostgresStore("postgresql://keystile@db.internal/keystile", pool_size=10)``."""

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

    # -- lifecycle ------------------------------------------------------------------------

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

    # -- plumbing ---------------------------------------------------------------------------

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
        """Run ``fn`` in one transaction; integrity violations become Conflict."""
        async with self._acquire() as conn:
            try:
                async with conn.transaction():
                    return await fn(conn)
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise Conflict(str(exc)) from exc

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

    # -- meta -------------------------------------------------------------------------------

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

    # -- clients ----------------------------------------------------------------------------

    async def create_client(self, client: Client) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                f"INSERT INTO clients ({CLIENT_COLUMNS})"
                f" VALUES ({placeholders(CLIENT_COLUMNS, '$')})"
                " ON CONFLICT (client_id) DO NOTHING",
                *client_params(client),
            )
            if _rowcount(status) == 0:
                raise Conflict(f"client {client.client_id!r} exists already")

        await self._tx(fn)

    async def get_client(self, client_id: str) -> Client | None:
        if "\x00" in client_id:  # from a request; no stored id has it (PostgreSQL text can't)
            return None
        # Not cached: another process may have changed it a moment ago. The server's
        # verified-caller cache spares this read on the introspection hot path.
        row = await self._fetchrow(
            f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = $1", client_id
        )
        return None if row is None else client_from_row(row)

    async def list_clients(self) -> list[Client]:
        rows = await self._fetch(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id")
        return [client_from_row(r) for r in rows]

    async def update_client(self, client: Client) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "UPDATE clients SET name=$2, secret_hash=$3, auth_method=$4, grant_types=$5,"
                " scopes=$6, default_audience=$7, access_token_ttl=$8, enabled=$9,"
                " updated_at=$10, token_format=$11, jwks=$12, redirect_uris=$13,"
                " refresh_token_ttl=$14, refresh_token_max_ttl=$15 WHERE client_id=$1",
                *client_params(client)[:9],
                *client_params(client)[10:],  # all but created_at
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no client {client.client_id!r}")

        await self._tx(fn)

    async def set_client_enabled(self, client_id: str, enabled: bool, now: int) -> int:
        """Enable or disable a client; disabling revokes all its live tokens (one transaction).

        Returns how many tokens were revoked. Re-enabling does not bring tokens back.
        """

        async def fn(c: asyncpg.Connection) -> int:
            status = await c.execute(
                "UPDATE clients SET enabled = $2, updated_at = $3 WHERE client_id = $1",
                client_id,
                enabled,
                now,
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no client {client_id!r}")
            if enabled:
                return 0
            n = await _revoke_client_tokens(c, client_id, now)
            await _append_event(
                c, CLIENT_DISABLED, now, {"client_id": client_id, "tokens_revoked": n}
            )
            return n

        return await self._tx(fn)

    async def delete_client(self, client_id: str, now: int) -> int:
        """Delete a client, revoking its live tokens first (kept as rows until they expire)."""

        async def fn(c: asyncpg.Connection) -> int:
            # FOR UPDATE: a concurrent disable or delete of the same client waits for us.
            found = await c.fetchrow(
                "SELECT 1 FROM clients WHERE client_id = $1 FOR UPDATE", client_id
            )
            if found is None:
                raise NotFound(f"no client {client_id!r}")
            n = await _revoke_client_tokens(c, client_id, now)
            await c.execute("DELETE FROM clients WHERE client_id = $1", client_id)
            await _append_event(
                c, CLIENT_DELETED, now, {"client_id": client_id, "tokens_revoked": n}
            )
            return n

        return await self._tx(fn)

    # -- resource servers ---------------------------------------------------------------------

    async def create_resource_server(self, rs: ResourceServer) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "INSERT INTO resource_servers (identifier, name, claims, rules, created_at,"
                " updated_at, introspection_response) VALUES ($1,$2,$3,$4,$5,$6,$7)"
                " ON CONFLICT (identifier) DO NOTHING",
                rs.identifier,
                rs.name,
                join(rs.claims),
                join(rs.rules),
                rs.created_at,
                rs.updated_at,
                rs.introspection_response,
            )
            if _rowcount(status) == 0:
                raise Conflict(f"resource server {rs.identifier!r} exists already")
            await _set_rs_clients(c, rs)

        await self._tx(fn)

    async def update_resource_server(self, rs: ResourceServer) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "UPDATE resource_servers SET name=$2, claims=$3, rules=$4, updated_at=$5,"
                " introspection_response=$6 WHERE identifier=$1",
                rs.identifier,
                rs.name,
                join(rs.claims),
                join(rs.rules),
                rs.updated_at,
                rs.introspection_response,
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no resource server {rs.identifier!r}")
            await c.execute(
                "DELETE FROM resource_server_clients WHERE identifier = $1", rs.identifier
            )
            await _set_rs_clients(c, rs)

        await self._tx(fn)

    async def delete_resource_server(self, identifier: str) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "DELETE FROM resource_servers WHERE identifier = $1", identifier
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no resource server {identifier!r}")

        await self._tx(fn)

    async def get_resource_server(self, identifier: str) -> ResourceServer | None:
        row = await self._fetchrow(_RS_SELECT + " WHERE rs.identifier = $1", identifier)
        return None if row is None else _rs_from_row(row)

    async def resource_server_for_client(self, client_id: str) -> ResourceServer | None:
        row = await self._fetchrow(
            _RS_SELECT + " WHERE rs.identifier = (SELECT identifier FROM resource_server_clients"
            " WHERE client_id = $1)",
            client_id,
        )
        return None if row is None else _rs_from_row(row)

    async def list_resource_servers(self) -> list[ResourceServer]:
        rows = await self._fetch(_RS_SELECT + " ORDER BY rs.identifier")
        return [_rs_from_row(r) for r in rows]

    async def known_resources(self) -> frozenset[str]:
        rows = await self._fetch("SELECT identifier FROM resource_servers")
        return frozenset(r[0] for r in rows)

    async def all_scopes(self) -> frozenset[str]:
        rows = await self._fetch("SELECT scopes FROM clients WHERE enabled")
        scopes: set[str] = set()
        for (value,) in rows:
            scopes.update(value.split())
        return frozenset(scopes)

    # -- tokens -----------------------------------------------------------------------------------

    async def insert_token(self, record: TokenRecord) -> None:
        async with self._acquire() as conn:
            try:
                await conn.execute(
                    f"INSERT INTO tokens ({TOKEN_COLUMNS})"
                    " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
                    *token_params(record),
                )
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise Conflict(str(exc)) from exc

    async def lookup_token(self, token_hash: bytes | None) -> Lookup:
        """The registry version and the token, read in one statement (one snapshot).

        This is the whole store cost of an introspection whose caller is cached: the version
        tells the caller cache whether it may still trust what it holds.

        Lookups are batched: those issued in the same turn of the event loop, and those
        that arrive while their batch waits for a free connection, are answered by one
        statement (``token_hash = ANY(...)``). Idle, a batch holds one lookup and adds one
        loop turn; under load one round trip and one query serve many requests, which is
        where PostgreSQL's per-statement cost would otherwise dominate. Each answer is still
        read after its request arrived, in one snapshot with the version.
        """
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        batch = self._batch
        if batch is None or len(batch) >= _MAX_BATCH:
            batch = self._batch = []
            task = asyncio.create_task(self._run_lookups(batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        answer: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        batch.append((token_hash, answer))
        return await answer

    async def _run_lookups(self, batch: list[tuple[bytes | None, asyncio.Future[Lookup]]]) -> None:
        """Take a connection, close the batch, answer every lookup in it; never raises."""
        pool = self._pool
        conn = None
        try:
            if pool is None:
                raise StoreUnavailable("store is not open")
            conn = await pool.acquire()  # the batch stays open (keeps growing) meanwhile
            if self._batch is batch:
                self._batch = None
            hashes = list({h for h, _ in batch if h is not None})
            if len(hashes) <= 1:
                row = await conn.fetchrow(_LOOKUP_SQL, hashes[0] if hashes else None)
                rows = [] if row is None else [(row[0], hashes[0] if hashes else None, *row[1:])]
            else:
                rows = await conn.fetch(_LOOKUP_MANY_SQL, hashes)
            pool.release(conn)
            conn = None
        except BaseException as exc:
            if self._batch is batch:
                self._batch = None
            if conn is not None and pool is not None:
                pool.release(conn, reusable=_reusable_after(exc))
            error = exc if isinstance(exc, StoreUnavailable) else _unavailable(exc)
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(StoreUnavailable(str(error)))
            if not isinstance(exc, Exception):
                raise  # cancelled (the store is closing): the lookups got their answer
            return
        self.lookups += len(batch)
        self.lookup_statements += 1
        if not rows:  # the registry_version row is part of the schema
            missing = "PostgreSQL store unavailable: registry_version row missing"
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(StoreUnavailable(missing))
            return
        version = rows[0][0]
        found: dict[bytes, TokenRecord] = {}
        for r in rows:
            if r[2] is not None:  # kind: a token matched
                found[bytes(r[1])] = TokenRecord(
                    bytes(r[1]),
                    r[2],
                    r[3],
                    split(r[4]),
                    tuple(r[5].split()) if r[5] else (),
                    r[6],
                    r[7],
                    r[8],
                    r[9],
                    r[10],
                    r[11],
                    r[12],
                    r[13],
                )
        for token_hash, answer in batch:
            if not answer.done():  # its request may have been cancelled
                answer.set_result((version, None if token_hash is None else found.get(token_hash)))

    async def find_token(self, token_hash: bytes) -> TokenRecord | None:
        row = await self._fetchrow(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = $1", token_hash
        )
        return None if row is None else token_from_row(row)

    async def revoke_token(self, token_hash: bytes, client_id: str, now: int) -> bool:
        """Revoke a token if it belongs to ``client_id``; the event is written in the same
        transaction. True if the token is revoked now (or already was)."""

        async def fn(c: asyncpg.Connection) -> bool:
            # The conditional UPDATE takes the row lock: of two concurrent revocations the
            # second waits, re-reads revoked_at and changes nothing, so exactly one event.
            # A refresh token of a grant is not matched: it takes the cascade below.
            row = await c.fetchrow(
                "UPDATE tokens SET revoked_at = $3"
                " WHERE token_hash = $1 AND client_id = $2 AND revoked_at IS NULL AND exp > $3"
                " AND (kind <> 'refresh_token' OR grant_id IS NULL)"
                " RETURNING jti, kind, exp, aud",
                token_hash,
                client_id,
                now,
            )
            if row is None:  # unknown, another client's, already revoked, expired, or a grant's
                found = await c.fetchrow(
                    "SELECT client_id, kind, grant_id FROM tokens WHERE token_hash = $1",
                    token_hash,
                )
                if found is None or found[0] != client_id:
                    return False
                if found[1] == "refresh_token" and found[2] is not None:
                    # RFC 7009 §2.1: revoking a refresh token revokes its grant, so every
                    # access token issued from it too (docs/users.md, the cascade matrix).
                    await _revoke_grant(c, found[2], now, REFRESH_TOKEN_REVOKED)
                return True
            await _append_event(
                c,
                TOKEN_REVOKED,
                now,
                {
                    "token_sha256": token_hash.hex(),
                    "jti": row[0],
                    "client_id": client_id,
                    "token_type": row[1],
                    "aud": row[3].split() if row[3] else [],
                    "exp": row[2],
                },
            )
            return True

        return await self._tx(fn)

    # -- events and housekeeping ------------------------------------------------------------------

    async def events_after(self, after_id: int, limit: int = 100) -> list[Event]:
        rows = await self._fetch(
            "SELECT id, type, created_at, payload::text FROM events WHERE id > $1"
            " ORDER BY id LIMIT $2",
            after_id,
            limit,
        )
        return [Event(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def latest_event_id(self) -> int:
        # The head row, not max(id): it is never lowered by a purge, and being written in
        # the event's own transaction it never names an event that is not yet visible.
        rows = await self._fetch("SELECT last_id FROM event_log_head WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    async def oldest_event_id(self) -> int | None:
        rows = await self._fetch("SELECT min(id) FROM events")
        return None if rows[0][0] is None else int(rows[0][0])

    async def purge(
        self, now: int, *, token_grace: int, event_retention: int, batch: int = 500
    ) -> PurgeResult:
        """Delete tokens expired for longer than ``token_grace`` and old events, in small
        transactions so requests are never held up for long."""
        tokens = events = 0
        while True:
            async with self._acquire() as conn:
                status = await conn.execute(
                    "DELETE FROM tokens WHERE token_hash IN"
                    " (SELECT token_hash FROM tokens WHERE exp < $1 LIMIT $2)",
                    now - token_grace,
                    batch,
                )
            n = _rowcount(status)
            tokens += n
            if n < batch:
                break
            await asyncio.sleep(0)  # let requests run between batches
        while True:
            async with self._acquire() as conn:
                status = await conn.execute(
                    "DELETE FROM events WHERE id IN"
                    " (SELECT id FROM events WHERE created_at < $1 ORDER BY id LIMIT $2)",
                    now - event_retention,
                    batch,
                )
            n = _rowcount(status)
            events += n
            if n < batch:
                break
            await asyncio.sleep(0)
        await self._purge_assertion_jtis(now, batch)
        await self._purge_users_side(now, token_grace, batch)
        return PurgeResult(tokens=tokens, events=events)

    async def _purge_users_side(self, now: int, grace: int, batch: int) -> None:
        """Expired sessions, codes past their grace, and ended grants no token refers to."""
        for sql, cutoff in (
            (
                "DELETE FROM sessions WHERE session_hash IN"
                " (SELECT session_hash FROM sessions WHERE expires_at < $1 LIMIT $2)",
                now,
            ),
            (
                "DELETE FROM authorization_codes WHERE code_hash IN"
                " (SELECT code_hash FROM authorization_codes WHERE expires_at < $1 LIMIT $2)",
                now - grace,
            ),
            (
                "DELETE FROM grants WHERE grant_id IN (SELECT g.grant_id FROM grants g"
                " WHERE g.expires_at < $1 AND NOT EXISTS"
                " (SELECT 1 FROM tokens t WHERE t.grant_id = g.grant_id) LIMIT $2)",
                now - grace,
            ),
        ):
            while True:
                async with self._acquire() as conn:
                    status = await conn.execute(sql, cutoff, batch)
                if _rowcount(status) < batch:
                    break
                await asyncio.sleep(0)  # let requests run between batches

    # -- push notifications for the event bus ---------------------------------------------------

    async def listen_events(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) whenever any process commits an event.

        LISTEN runs on a dedicated connection outside the pool, kept by a background task
        that reconnects after a loss and then calls ``callback`` once, since events may have
        been written while it was away. Returns once the first LISTEN is in place, or when
        the first try failed (the task keeps trying; the bus polls meanwhile).
        """
        if self._listener is not None:
            raise RuntimeError("listen_events was called already")
        ready = asyncio.get_running_loop().create_future()
        self._listener = asyncio.create_task(
            self._listen(callback, ready), name="keystile-pg-listen"
        )
        await asyncio.shield(ready)

    async def _listen(self, callback: Callable[[], None], ready: asyncio.Future[None]) -> None:
        schema = self.schema

        def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            if payload == schema:  # not another deployment's schema in the same database
                callback()

        connected_before = failing = False
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                conn.add_termination_listener(lambda _conn, ev=lost: ev.set())
                await conn.add_listener(EVENTS_CHANNEL, on_notify)
                if connected_before:
                    log.info("event notifications restored")
                    callback()  # catch up on whatever was written while we were away
                connected_before, failing = True, False
                if not ready.done():
                    ready.set_result(None)
                # Wait for the connection to drop; a periodic round trip also notices a
                # silent loss (a half-open TCP connection gets no termination message).
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 10.0)
                    if not lost.is_set():
                        await conn.execute("SELECT 1", timeout=self.query_timeout)
                log.warning("event notifications lost; reconnecting")
            except _UNAVAILABLE as exc:
                # Warn once per outage, not at every retry.
                (log.debug if failing else log.warning)(
                    "cannot listen for event notifications; retrying",
                    extra={"error": str(exc) or type(exc).__name__},
                )
                failing = True
                if not ready.done():
                    ready.set_result(None)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(self.listen_retry)

    # -- signing keys, JWT access tokens, client assertions (RFC 9068, RFC 7523) ----------------

    async def list_signing_keys(self) -> list[SigningKey]:
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
        return [key_from_row(r) for r in rows]

    async def insert_signing_key(self, key: SigningKey) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            await c.execute(
                f"INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                key.kid,
                key.alg,
                key.state,
                key.public_jwk,
                key.private_jwk_enc,
                key.created_at,
                key.activated_at,
                key.retired_at,
                key.not_after,
            )

        await self._tx(fn)

    async def activate_signing_key(self, kid: str, now: int, *, retired_until: int) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            # FOR UPDATE: a concurrent rotation of the same key waits, then sees it active.
            state = await c.fetchval(
                "SELECT state FROM signing_keys WHERE kid = $1 FOR UPDATE", kid
            )
            if state is None:
                raise NotFound(f"no signing key {kid!r}")
            if state != "next":
                raise Conflict(f"signing key {kid!r} is {state}; only a next key can be activated")
            # The private part of a retired key is dropped: it must never sign again.
            await c.execute(
                "UPDATE signing_keys SET state = 'retired', retired_at = $1,"
                " private_jwk_enc = NULL, not_after = GREATEST(not_after, $2)"
                " WHERE state = 'active'",
                now,
                retired_until,
            )
            await c.execute(
                "UPDATE signing_keys SET state = 'active', activated_at = $2 WHERE kid = $1",
                kid,
                now,
            )

        await self._tx(fn)

    async def retire_signing_key(self, kid: str, now: int, *, immediately: bool = False) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            state = await c.fetchval(
                "SELECT state FROM signing_keys WHERE kid = $1 FOR UPDATE", kid
            )
            if state is None:
                raise NotFound(f"no signing key {kid!r}")
            if state == "active":
                raise Conflict(f"signing key {kid!r} is active; rotate to another key first")
            # A next key never signed anything, so nobody needs it published any longer.
            end = now if immediately or state == "next" else None
            await c.execute(
                "UPDATE signing_keys SET state = 'retired', private_jwk_enc = NULL,"
                " retired_at = coalesce(retired_at, $2), not_after = coalesce($3, not_after)"
                " WHERE kid = $1",
                kid,
                now,
                end,
            )

        await self._tx(fn)

    async def insert_jwt_token(self, record: TokenRecord, kid: str, not_after: int) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            await c.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS})"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
                *token_params(record),
            )
            # Rarely writes (so rarely takes the key row's lock): only when this token
            # outlives the key's rounded-up not_after.
            await c.execute(
                "UPDATE signing_keys SET not_after = $2 WHERE kid = $1 AND not_after < $3",
                kid,
                not_after,
                record.exp,
            )

        await self._tx(fn)

    async def record_assertion_jti(self, client_id: str, jti: str, expires_at: int) -> bool:
        async with self._acquire() as conn:
            status = await conn.execute(
                "INSERT INTO client_assertion_jtis (client_id, jti, expires_at)"
                " VALUES ($1, $2, $3) ON CONFLICT (client_id, jti) DO NOTHING",
                client_id,
                jti,
                expires_at,
            )
        return _rowcount(status) == 1

    async def _purge_assertion_jtis(self, now: int, batch: int) -> int:
        total = 0
        while True:
            async with self._acquire() as conn:
                status = await conn.execute(
                    "DELETE FROM client_assertion_jtis WHERE (client_id, jti) IN"
                    " (SELECT client_id, jti FROM client_assertion_jtis WHERE expires_at < $1"
                    " LIMIT $2)",
                    now,
                    batch,
                )
            n = _rowcount(status)
            total += n
            if n < batch:
                return total
            await asyncio.sleep(0)

    # -- users, sessions, consent (issue 3) -------------------------------------------------

    async def _write1(self, sql: str, *args: Any) -> int:
        """One statement on its own (atomic without a transaction block); the rows it
        changed. Integrity violations (a taken key, an unknown user) become Conflict."""
        async with self._acquire() as conn:
            try:
                return _rowcount(await conn.execute(sql, *args))
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise Conflict(str(exc)) from exc

    async def create_user(self, user: User) -> None:
        # No conflict target: a taken user id and a taken username are both refused.
        n = await self._write1(
            f"INSERT INTO users ({USER_COLUMNS}) VALUES ({placeholders(USER_COLUMNS, '$')})"
            " ON CONFLICT DO NOTHING",
            *user_params(user),
        )
        if n == 0:
            raise Conflict(f"user {user.username!r} exists already")

    async def get_user(self, user_id: str) -> User | None:
        if "\x00" in user_id:  # see get_client
            return None
        row = await self._fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE user_id = $1", user_id)
        return None if row is None else user_from_row(row)

    async def get_user_by_name(self, username: str) -> User | None:
        if "\x00" in username:  # typed into the login form; see get_client
            return None
        row = await self._fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", username
        )
        return None if row is None else user_from_row(row)

    async def list_users(self) -> list[User]:
        rows = await self._fetch(f"SELECT {USER_COLUMNS} FROM users ORDER BY username")
        return [user_from_row(r) for r in rows]

    async def update_user(self, user: User) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            other = await c.fetchval("SELECT user_id FROM users WHERE username = $1", user.username)
            if other is not None and other != user.user_id:
                raise Conflict(f"user {user.username!r} exists already")
            # A concurrent rename to the same name loses on the unique index: Conflict too.
            status = await c.execute(
                "UPDATE users SET username = $2, password_hash = $3, updated_at = $4"
                " WHERE user_id = $1",
                user.user_id,
                user.username,
                user.password_hash,
                user.updated_at,
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no user {user.user_id!r}")

        await self._tx(fn)

    async def set_user_enabled(self, user_id: str, enabled: bool, now: int) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            # The row lock of the UPDATE orders this against every other cascade of the user.
            status = await c.execute(
                "UPDATE users SET enabled = $2, updated_at = $3 WHERE user_id = $1",
                user_id,
                enabled,
                now,
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no user {user_id!r}")
            return 0 if enabled else await _revoke_user(c, user_id, now, USER_DISABLED)

        return await self._tx(fn)

    async def delete_user(self, user_id: str, now: int) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            if not await c.fetchval(
                "SELECT true FROM users WHERE user_id = $1 FOR UPDATE", user_id
            ):
                raise NotFound(f"no user {user_id!r}")
            n = await _revoke_user(c, user_id, now, USER_DELETED)
            await c.execute("DELETE FROM users WHERE user_id = $1", user_id)  # consents go too
            return n

        return await self._tx(fn)

    async def revoke_user_sessions(self, user_id: str, now: int) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            if not await c.fetchval(
                "SELECT true FROM users WHERE user_id = $1 FOR UPDATE", user_id
            ):
                raise NotFound(f"no user {user_id!r}")
            return await _revoke_user(c, user_id, now, USER_REVOKE_SESSIONS)

        return await self._tx(fn)

    async def create_session(self, session: Session) -> bool:
        # FOR SHARE on the user row: a disable committing meanwhile either waits for this
        # insert (and its cascade then deletes the session) or wins (and nothing is stored).
        n = await self._write1(
            "WITH u AS (SELECT user_id FROM users WHERE user_id = $2 AND enabled FOR SHARE)"
            " INSERT INTO sessions (session_hash, user_id, created_at, expires_at)"
            " SELECT $1, u.user_id, $3, $4 FROM u",
            session.session_hash,
            session.user_id,
            session.created_at,
            session.expires_at,
        )
        return n == 1

    async def get_session(self, session_hash: bytes, now: int) -> tuple[Session, User] | None:
        row = await self._fetchrow(
            f"SELECT s.created_at, s.expires_at, {_USER_COLUMNS_U} FROM sessions s"
            " JOIN users u ON u.user_id = s.user_id"
            " WHERE s.session_hash = $1 AND s.expires_at > $2 AND u.enabled",
            session_hash,
            now,
        )
        if row is None:
            return None
        user = user_from_row(row[2:])
        return Session(session_hash, user.user_id, row[0], row[1]), user

    async def delete_session(self, session_hash: bytes) -> None:
        await self._write1("DELETE FROM sessions WHERE session_hash = $1", session_hash)

    async def get_consent(self, user_id: str, client_id: str) -> frozenset[str] | None:
        row = await self._fetchrow(
            "SELECT scope FROM consents WHERE user_id = $1 AND client_id = $2", user_id, client_id
        )
        return None if row is None else split(row[0])

    async def set_consent(
        self, user_id: str, client_id: str, scope: frozenset[str], now: int
    ) -> None:
        await self._write1(
            "INSERT INTO consents (user_id, client_id, scope, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (user_id, client_id) DO UPDATE SET scope = excluded.scope,"
            " updated_at = excluded.updated_at",
            user_id,
            client_id,
            join(scope),
            now,
        )

    # -- authorization code grant and refresh tokens (RFC 6749 §4.1, §6; RFC 9700) ---------
    #
    # Lock order, the same in every transaction, so that none can deadlock another:
    # user (cascades of a user; code issuance, FOR SHARE) -> authorization code -> grant(s),
    # several in grant_id order -> tokens -> event log head.
    # A transaction writes its events last, after every row it changes is locked.

    async def create_authorization_code(
        self, grant: Grant, code: AuthorizationCode, *, session_hash: bytes | None = None
    ) -> bool:
        async def fn(c: asyncpg.Connection) -> bool:
            if session_hash is not None:
                # The user's row first, FOR SHARE: a cascade of the user (which locks that
                # row first) either committed before, and the session is seen gone by the
                # next statement, or waits for us and then revokes the grant stored here.
                if not await c.fetchval(
                    "SELECT true FROM users WHERE user_id = $1 AND enabled FOR SHARE",
                    grant.user_id,
                ):
                    return False
                if not await c.fetchval(
                    "SELECT true FROM sessions WHERE session_hash = $1 AND user_id = $2"
                    " AND expires_at > $3",
                    session_hash,
                    grant.user_id,
                    code.created_at,
                ):
                    return False
            await c.execute(
                f"INSERT INTO grants ({GRANT_COLUMNS}) VALUES ({placeholders(GRANT_COLUMNS, '$')})",
                *grant_params(grant),
            )
            await c.execute(
                f"INSERT INTO authorization_codes ({CODE_COLUMNS})"
                f" VALUES ({placeholders(CODE_COLUMNS, '$')})",
                *code_params(code),
            )
            return True

        return await self._tx(fn)

    async def redeem_authorization_code(self, code_hash: bytes, now: int) -> CodeRedemption:
        async def fn(c: asyncpg.Connection) -> CodeRedemption:
            # FOR UPDATE: of two redemptions at once, the second waits for the first to
            # commit, then reads used_at set and is a replay.
            row = await c.fetchrow(
                f"SELECT {CODE_COLUMNS} FROM authorization_codes WHERE code_hash = $1 FOR UPDATE",
                code_hash,
            )
            if row is None:
                return CodeRedemption("unknown")
            code = code_from_row(row)
            grow = await c.fetchrow(
                f"SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1", code.grant_id
            )
            grant = None if grow is None else grant_from_row(grow)
            if code.used_at is not None:
                # RFC 6749 §4.1.2: a code used twice revokes what was issued from it.
                await _revoke_grant(c, code.grant_id, now, CODE_REPLAYED)
                return CodeRedemption("replayed", code, grant)
            if now >= code.expires_at:
                return CodeRedemption("expired", code, grant)
            if grant is None or not grant.is_live(now):
                return CodeRedemption("revoked", code, grant)
            # The grant may still be revoked before its tokens are stored: issue_grant_tokens
            # checks it again, under its lock.
            await c.execute(
                "UPDATE authorization_codes SET used_at = $2 WHERE code_hash = $1",
                code_hash,
                now,
            )
            return CodeRedemption("ok", code, grant)

        return await self._tx(fn)

    async def get_grant(self, grant_id: str) -> Grant | None:
        row = await self._fetchrow(
            f"SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1", grant_id
        )
        return None if row is None else grant_from_row(row)

    async def issue_grant_tokens(self, grant_id: str, tokens: list[NewToken], now: int) -> bool:
        async def fn(c: asyncpg.Connection) -> bool:
            # FOR SHARE, held to commit: a cascade revoking this grant (which updates the
            # grant row first) waits for us and then revokes the tokens stored here; or it
            # committed first and we see the grant revoked (the row is re-checked after the
            # wait), storing nothing. Either way no token of a revoked grant stays live.
            live = await c.fetchval(
                "SELECT true FROM grants WHERE grant_id = $1 AND revoked_at IS NULL"
                " AND expires_at > $2 FOR SHARE",
                grant_id,
                now,
            )
            if not live:
                return False
            await _insert_tokens(c, tokens)
            return True

        return await self._tx(fn)

    async def rotate_refresh_token(
        self, token_hash: bytes, tokens: list[NewToken], now: int
    ) -> Rotation:
        async def fn(c: asyncpg.Connection) -> Rotation:
            # The token's grant (fixed for its life) is locked before the token, in the lock
            # order of the cascades: two rotations of one token, or of two tokens of one
            # grant, queue on the grant row instead of deadlocking on a lock upgrade.
            grant_id = await c.fetchval(
                "SELECT grant_id FROM tokens WHERE token_hash = $1 AND kind = 'refresh_token'",
                token_hash,
            )
            if grant_id is None:
                return Rotation("unknown")
            await c.execute("SELECT 1 FROM grants WHERE grant_id = $1 FOR UPDATE", grant_id)
            row = await c.fetchrow(
                "SELECT revoked_at, rotated_at, exp FROM tokens WHERE token_hash = $1 FOR UPDATE",
                token_hash,
            )
            if row is None:  # purged meanwhile
                return Rotation("unknown")
            if row[1] is not None:
                # RFC 9700 §4.14.2: a rotated refresh token presented again means two
                # parties hold it; which one is the attacker is unknowable, so the grant ends.
                n = await _revoke_grant(c, grant_id, now, REFRESH_TOKEN_REPLAYED)
                return Rotation("replayed", n)
            if row[0] is not None:
                return Rotation("revoked")
            if now >= row[2]:
                return Rotation("expired")
            if not await c.fetchval(
                "SELECT true FROM grants WHERE grant_id = $1 AND revoked_at IS NULL"
                " AND expires_at > $2",
                grant_id,
                now,
            ):
                return Rotation("revoked")
            await c.execute(
                "UPDATE tokens SET rotated_at = $2, revoked_at = $2 WHERE token_hash = $1",
                token_hash,
                now,
            )
            await _insert_tokens(c, tokens)
            return Rotation("ok")

        return await self._tx(fn)

    async def revoke_grant(self, grant_id: str, now: int, reason: str) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            return await _revoke_grant(c, grant_id, now, reason)

        return await self._tx(fn)


async def _set_rs_clients(c: asyncpg.Connection, rs: ResourceServer) -> None:
    for client_id in sorted(rs.introspection_clients):
        if await c.fetchval("SELECT 1 FROM clients WHERE client_id = $1", client_id) is None:
            raise NotFound(f"no client {client_id!r}")
        other = await c.fetchval(
            "SELECT identifier FROM resource_server_clients WHERE client_id = $1", client_id
        )
        if other is not None and other != rs.identifier:
            raise Conflict(f"client {client_id!r} already introspects for {other!r}")
        await c.execute(
            "INSERT INTO resource_server_clients (client_id, identifier) VALUES ($1, $2)",
            client_id,
            rs.identifier,
        )


async def _revoke_client_tokens(c: asyncpg.Connection, client_id: str, now: int) -> int:
    # Its grants too, so an outstanding code or refresh token of them can never be used.
    # Grants first (see _lock_live_grants), so an issuance or rotation in flight either
    # commits before (and its tokens are revoked below) or sees the grant revoked.
    grants = await _lock_live_grants(c, "client_id = $1", client_id)
    if grants:
        await c.execute(
            "UPDATE grants SET revoked_at = $2 WHERE grant_id = ANY($1::text[])", grants, now
        )
    status = await c.execute(
        "UPDATE tokens SET revoked_at = $2"
        " WHERE client_id = $1 AND revoked_at IS NULL AND exp > $2",
        client_id,
        now,
    )
    return _rowcount(status)


async def _lock_live_grants(c: asyncpg.Connection, where: str, key: str) -> list[str]:
    """Lock the unrevoked grants matching ``where`` (``$1`` = ``key``), in grant_id order:
    cascades that lock several grants take them in one order, so they cannot deadlock."""
    rows = await c.fetch(
        f"SELECT grant_id FROM grants WHERE {where} AND revoked_at IS NULL"
        " ORDER BY grant_id FOR UPDATE",
        key,
    )
    return [r[0] for r in rows]


_REVOKED_COLUMNS = "token_hash, jti, client_id, kind, aud, exp"


async def _revoke_tokens(c: asyncpg.Connection, where: str, key: str, now: int) -> int:
    """Revoke the live tokens matching ``where`` (``$1`` = ``key``), each with its
    token_revoked event. One UPDATE locks them all before any event is written."""
    rows = await c.fetch(
        f"UPDATE tokens SET revoked_at = $2 WHERE {where} AND revoked_at IS NULL AND exp > $2"
        f" RETURNING {_REVOKED_COLUMNS}",
        key,
        now,
    )
    rows.sort(key=lambda r: (r[5], r[1]))  # a stable order: by expiry, then jti
    await _append_events(c, TOKEN_REVOKED, now, [revoked_token_payload(r) for r in rows])
    return len(rows)


async def _revoke_grant(c: asyncpg.Connection, grant_id: str, now: int, reason: str) -> int:
    """Revoke one grant and its live tokens, with events; the number of tokens revoked."""
    # FOR UPDATE: of two cascades of one grant, the second waits and finds it revoked, so
    # one grant_revoked event.
    row = await c.fetchrow(
        "SELECT client_id, user_id, revoked_at FROM grants WHERE grant_id = $1 FOR UPDATE",
        grant_id,
    )
    if row is None:
        # No such grant (never stored, or purged): any token naming it is revoked all the
        # same, so that revoking a refresh token never answers yes and leaves it live.
        return await _revoke_tokens(c, "grant_id = $1", grant_id, now)
    if row[2] is None:
        await c.execute("UPDATE grants SET revoked_at = $2 WHERE grant_id = $1", grant_id, now)
    n = await _revoke_tokens(c, "grant_id = $1", grant_id, now)
    if row[2] is None or n:
        await _append_event(
            c,
            GRANT_REVOKED,
            now,
            {
                "grant_id": grant_id,
                "client_id": row[0],
                "sub": row[1],
                "reason": reason,
                "tokens_revoked": n,
            },
        )
    return n


async def _revoke_user(c: asyncpg.Connection, user_id: str, now: int, reason: str) -> int:
    """End a user's sessions and revoke all their grants and tokens, with events. The
    caller holds the user's row lock, so cascades of one user run one at a time."""
    await c.execute("DELETE FROM sessions WHERE user_id = $1", user_id)
    grants = await _lock_live_grants(c, "user_id = $1", user_id)
    if grants:
        await c.execute(
            "UPDATE grants SET revoked_at = $2 WHERE grant_id = ANY($1::text[])", grants, now
        )
    n = await _revoke_tokens(
        c, "grant_id IN (SELECT grant_id FROM grants WHERE user_id = $1)", user_id, now
    )
    await _append_event(
        c,
        USER_SESSIONS_REVOKED,
        now,
        {"sub": user_id, "reason": reason, "grants_revoked": len(grants), "tokens_revoked": n},
    )
    return n


async def _insert_tokens(c: asyncpg.Connection, tokens: list[NewToken]) -> None:
    if not tokens:
        return
    await c.executemany(
        f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(TOKEN_COLUMNS, '$')})",
        [token_params(t.record) for t in tokens],
    )
    for token in tokens:
        if token.kid is not None:  # a JWT: its key stays published while it lives
            await c.execute(
                "UPDATE signing_keys SET not_after = $2 WHERE kid = $1 AND not_after < $3",
                token.kid,
                token.not_after,
                token.record.exp,
            )


async def _append_event(
    c: asyncpg.Connection, type_: str, now: int, payload: dict[str, Any]
) -> None:
    # The id comes from the events_id trigger (ordered, gap-free); it also sends the NOTIFY.
    await c.execute(
        "INSERT INTO events (type, created_at, payload) VALUES ($1, $2, $3::jsonb)",
        type_,
        now,
        json.dumps(payload, separators=(",", ":"), sort_keys=True),
    )


async def _append_events(
    c: asyncpg.Connection, type_: str, now: int, payloads: list[dict[str, Any]]
) -> None:
    """Several events of one type, in order, in one round trip."""
    if payloads:
        await c.executemany(
            "INSERT INTO events (type, created_at, payload) VALUES ($1, $2, $3::jsonb)",
            [(type_, now, json.dumps(p, separators=(",", ":"), sort_keys=True)) for p in payloads],
        )


def migrations() -> list[tuple[int, str, str]]:
    """The versioned SQL migrations shipped for this engine, in order."""
    return _migrations("keystile.store.migrations.postgres")
