"""The embedded default store: one SQLite file in WAL mode, no other service.

Reads run on the event loop thread through their own connection: an indexed point read
on a WAL database takes a few microseconds, far less than a hop to a thread pool. Writes
run in one dedicated thread with their own connection, so an fsync never blocks the loop,
and each write is one ``BEGIN IMMEDIATE`` transaction committed with ``synchronous=FULL``:
once a revocation has answered 200, it survives a crash or power loss.

Clients and resource servers are cached in-process. Any change to them, from this
process or another (the CLI, a second worker), bumps ``registry_version`` through
triggers; every lookup first asks SQLite for ``PRAGMA data_version`` (no disk I/O) and
drops the cache when the registry version moved.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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

_CACHE_LIMIT = 10_000

# The token's own hash is not read back: the caller has it.
_LOOKUP_SQL = (
    "SELECT rv.version, "
    + ", ".join("t." + c.strip() for c in TOKEN_COLUMNS.split(",")[1:])
    + " FROM registry_version rv LEFT JOIN tokens t ON t.token_hash = ? WHERE rv.id = 1"
)


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"SQLite store unavailable: {exc}")


class SQLiteStore:
    """Store protocol over one SQLite file: ``SQLiteStore("keystile.db")``."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._read: sqlite3.Connection | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._data_version = -1
        self._registry_version = -1
        self._clients: dict[str, Client | None] = {}
        self._rs_by_client: dict[str, ResourceServer | None] = {}
        self._known_resources: frozenset[str] | None = None
        self._scopes: frozenset[str] | None = None
        self.created = False  # True when open() created the database file

    # -- lifecycle ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,
            timeout=self._busy_timeout_ms / 1000,
            cached_statements=256,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys = ON")
        # FULL: the WAL is fsynced at every commit, so an acknowledged write survives
        # power loss, not only a process crash (NORMAL would lose the last commits).
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    async def open(self, *, migrate: bool = True) -> None:
        """Open (and by default create and migrate) the database file."""
        if self._read is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keystile-sqlite")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open_writer, migrate)
            self._read = self._connect()
            self._read.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            await self.close()
            raise _unavailable(exc) from exc

    def _open_writer(self, migrate: bool) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.created = not self.path.exists() or self.path.stat().st_size == 0
        conn = self._connect()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"could not switch {self.path} to WAL mode ({mode})")
        self._write_conn = conn
        if migrate:
            self._migrate(conn)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock first, so two processes starting at once
        # apply each migration exactly once: the second waits, then sees it applied.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations():
                if version in done:
                    continue
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) "
                    "VALUES (?, ?, strftime('%s','now'))",
                    (version, name),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._read is not None:
            self._read.close()
            self._read = None
        if self._executor is not None:
            executor, self._executor = self._executor, None
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, self._close_writer)
            executor.shutdown(wait=True)

    def _close_writer(self) -> None:
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _r(self) -> sqlite3.Connection:
        if self._read is None:
            raise StoreUnavailable("store is not open")
        return self._read

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one IMMEDIATE transaction on the writer thread."""
        if self._executor is None:
            raise StoreUnavailable("store is not open")

        def run() -> T:
            conn = self._write_conn
            if conn is None:
                raise StoreUnavailable("store is not open")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, run)
        except sqlite3.IntegrityError as exc:
            raise Conflict(str(exc)) from exc
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._r.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    def _sync_registry(self) -> None:
        """Drop cached clients/resource servers if any process changed them since."""
        try:
            dv = self._r.execute("PRAGMA data_version").fetchone()[0]
            if dv == self._data_version:
                return
            version = self._r.execute("SELECT version FROM registry_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        self._data_version = dv
        self._note_registry_version(version)

    async def ping(self) -> None:
        self._query("SELECT 1")

    async def schema_version(self) -> int:
        rows = self._query("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    # -- meta -------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

        await self._write(fn)

    async def claim_meta(self, key: str, value: str) -> str:
        def fn(c: sqlite3.Connection) -> str:
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (key, value),
            )
            return str(c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

        return await self._write(fn)

    # -- clients ----------------------------------------------------------------------------

    async def create_client(self, client: Client) -> None:
        def fn(c: sqlite3.Connection) -> None:
            if c.execute(
                "SELECT 1 FROM clients WHERE client_id = ?", (client.client_id,)
            ).fetchone():
                raise Conflict(f"client {client.client_id!r} exists already")
            c.execute(
                f"INSERT INTO clients ({CLIENT_COLUMNS}) VALUES ({placeholders(CLIENT_COLUMNS)})",
                client_params(client),
            )

        await self._write(fn)

    async def get_client(self, client_id: str) -> Client | None:
        self._sync_registry()
        try:
            return self._clients[client_id]
        except KeyError:
            pass
        rows = self._query(
            f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,)
        )
        client = client_from_row(rows[0]) if rows else None
        if client is not None:  # misses are not cached: unknown ids must not fill memory
            if len(self._clients) >= _CACHE_LIMIT:
                self._clients.clear()
            self._clients[client_id] = client
        return client

    async def list_clients(self) -> list[Client]:
        rows = self._query(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id")
        return [client_from_row(r) for r in rows]

    async def update_client(self, client: Client) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE clients SET name=?, secret_hash=?, auth_method=?, grant_types=?, scopes=?,"
                " default_audience=?, access_token_ttl=?, enabled=?, updated_at=?,"
                " token_format=?, jwks=?, redirect_uris=?, refresh_token_ttl=?,"
                " refresh_token_max_ttl=? WHERE client_id=?",
                (*client_params(client)[1:9], *client_params(client)[10:], client.client_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no client {client.client_id!r}")

        await self._write(fn)

    async def set_client_enabled(self, client_id: str, enabled: bool, now: int) -> int:
        """Enable or disable a client; disabling revokes all its live tokens (one transaction).

        Returns how many tokens were revoked. Re-enabling does not bring tokens back.
        """

        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE clients SET enabled = ?, updated_at = ? WHERE client_id = ?",
                (int(enabled), now, client_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no client {client_id!r}")
            if enabled:
                return 0
            n = _revoke_client_tokens(c, client_id, now)
            _append_event(c, CLIENT_DISABLED, now, {"client_id": client_id, "tokens_revoked": n})
            return n

        return await self._write(fn)

    async def delete_client(self, client_id: str, now: int) -> int:
        """Delete a client, revoking its live tokens first (kept as rows until they expire)."""

        def fn(c: sqlite3.Connection) -> int:
            if not c.execute("SELECT 1 FROM clients WHERE client_id = ?", (client_id,)).fetchone():
                raise NotFound(f"no client {client_id!r}")
            n = _revoke_client_tokens(c, client_id, now)
            c.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))
            _append_event(c, CLIENT_DELETED, now, {"client_id": client_id, "tokens_revoked": n})
            return n

        return await self._write(fn)

    # -- resource servers ---------------------------------------------------------------------

    async def create_resource_server(self, rs: ResourceServer) -> None:
        def fn(c: sqlite3.Connection) -> None:
            if c.execute(
                "SELECT 1 FROM resource_servers WHERE identifier = ?", (rs.identifier,)
            ).fetchone():
                raise Conflict(f"resource server {rs.identifier!r} exists already")
            c.execute(
                "INSERT INTO resource_servers (identifier, name, claims, rules, created_at,"
                " updated_at, introspection_response) VALUES (?,?,?,?,?,?,?)",
                (
                    rs.identifier,
                    rs.name,
                    join(rs.claims),
                    join(rs.rules),
                    rs.created_at,
                    rs.updated_at,
                    rs.introspection_response,
                ),
            )
            _set_rs_clients(c, rs)

        await self._write(fn)

    async def update_resource_server(self, rs: ResourceServer) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE resource_servers SET name=?, claims=?, rules=?, updated_at=?,"
                " introspection_response=? WHERE identifier=?",
                (
                    rs.name,
                    join(rs.claims),
                    join(rs.rules),
                    rs.updated_at,
                    rs.introspection_response,
                    rs.identifier,
                ),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no resource server {rs.identifier!r}")
            c.execute("DELETE FROM resource_server_clients WHERE identifier = ?", (rs.identifier,))
            _set_rs_clients(c, rs)

        await self._write(fn)

    async def delete_resource_server(self, identifier: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute("DELETE FROM resource_servers WHERE identifier = ?", (identifier,))
            if cur.rowcount == 0:
                raise NotFound(f"no resource server {identifier!r}")

        await self._write(fn)

    def _load_rs(self, where: str, params: tuple[Any, ...]) -> list[ResourceServer]:
        rows = self._query(
            "SELECT rs.identifier, rs.name, rs.claims, rs.rules, rs.created_at, rs.updated_at,"
            " (SELECT group_concat(client_id, ' ') FROM resource_server_clients rsc"
            "   WHERE rsc.identifier = rs.identifier), rs.introspection_response"
            f" FROM resource_servers rs {where} ORDER BY rs.identifier",
            params,
        )
        return [
            ResourceServer(
                identifier=r[0],
                name=r[1],
                claims=split(r[2]),
                rules=split(r[3]),
                created_at=r[4],
                updated_at=r[5],
                introspection_clients=split(r[6] or ""),
                introspection_response=r[7],
            )
            for r in rows
        ]

    async def get_resource_server(self, identifier: str) -> ResourceServer | None:
        found = self._load_rs("WHERE rs.identifier = ?", (identifier,))
        return found[0] if found else None

    async def resource_server_for_client(self, client_id: str) -> ResourceServer | None:
        self._sync_registry()
        try:
            return self._rs_by_client[client_id]
        except KeyError:
            pass
        found = self._load_rs(
            "WHERE rs.identifier = (SELECT identifier FROM resource_server_clients"
            " WHERE client_id = ?)",
            (client_id,),
        )
        rs = found[0] if found else None
        # Only authenticated clients get here, so caching misses is bounded by the registry.
        if len(self._rs_by_client) >= _CACHE_LIMIT:
            self._rs_by_client.clear()
        self._rs_by_client[client_id] = rs
        return rs

    async def list_resource_servers(self) -> list[ResourceServer]:
        return self._load_rs("", ())

    async def known_resources(self) -> frozenset[str]:
        self._sync_registry()
        if self._known_resources is None:
            rows = self._query("SELECT identifier FROM resource_servers")
            self._known_resources = frozenset(r[0] for r in rows)
        return self._known_resources

    async def all_scopes(self) -> frozenset[str]:
        self._sync_registry()
        if self._scopes is None:
            rows = self._query("SELECT scopes FROM clients WHERE enabled = 1")
            scopes: set[str] = set()
            for (value,) in rows:
                scopes.update(value.split())
            self._scopes = frozenset(scopes)
        return self._scopes

    # -- tokens -----------------------------------------------------------------------------------

    async def insert_token(self, record: TokenRecord) -> None:
        params = token_params(record)

        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", params
            )

        await self._write(fn)

    async def lookup_token(self, token_hash: bytes | None) -> tuple[int, TokenRecord | None]:
        """The registry version and the token, read in one statement (one read transaction).

        This is the whole store cost of an introspection whose caller is cached: the version
        tells the caller cache whether it may still trust what it holds.
        """
        return self.lookup_token_now(token_hash)

    def lookup_token_now(self, token_hash: bytes | None) -> tuple[int, TokenRecord | None]:
        """``lookup_token`` without a coroutine: a point read on the loop thread, for the
        HTTP fast path (server/fastpath.py), which answers without an ASGI task."""
        try:
            if token_hash is None:
                row = self._r.execute("SELECT version FROM registry_version").fetchone()
                self._note_registry_version(row[0])
                return row[0], None
            row = self._r.execute(_LOOKUP_SQL, (token_hash,)).fetchone()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        self._note_registry_version(row[0])
        if row[1] is None:
            return row[0], None
        return row[0], TokenRecord(
            token_hash,
            row[1],
            row[2],
            split(row[3]),
            tuple(row[4].split()) if row[4] else (),
            row[5],
            row[6],
            row[7],
            row[8],
            row[9],
            row[10],
            row[11],
            row[12],
        )

    def data_version_now(self) -> int:
        """SQLite's data_version on the read connection: it changes whenever any other
        connection (another process, or this store's writer) commits. No disk I/O."""
        try:
            return int(self._r.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    def _note_registry_version(self, version: int) -> None:
        if version != self._registry_version:
            self._registry_version = version
            self._clients.clear()
            self._rs_by_client.clear()
            self._known_resources = None
            self._scopes = None

    async def find_token(self, token_hash: bytes) -> TokenRecord | None:
        try:
            row = self._r.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        return token_from_row(row) if row else None

    async def revoke_token(self, token_hash: bytes, client_id: str, now: int) -> bool:
        """Revoke a token if it belongs to ``client_id``; the event is written in the same
        transaction. True if the token is revoked now (or already was)."""

        def fn(c: sqlite3.Connection) -> bool:
            row = c.execute(
                "SELECT client_id, jti, revoked_at, kind, exp, aud, grant_id FROM tokens"
                " WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None or row[0] != client_id:
                return False
            if row[3] == "refresh_token" and row[6] is not None:
                # RFC 7009 §2.1: revoking a refresh token revokes its grant, so every
                # access token issued from it too (docs/users.md, the cascade matrix).
                _revoke_grant(c, row[6], now, REFRESH_TOKEN_REVOKED)
                return True
            if row[2] is None and row[4] > now:  # an expired token needs no revocation
                c.execute(
                    "UPDATE tokens SET revoked_at = ? WHERE token_hash = ?", (now, token_hash)
                )
                _append_event(
                    c,
                    TOKEN_REVOKED,
                    now,
                    {
                        "token_sha256": token_hash.hex(),
                        "jti": row[1],
                        "client_id": row[0],
                        "token_type": row[3],
                        "aud": row[5].split() if row[5] else [],
                        "exp": row[4],
                    },
                )
            return True

        return await self._write(fn)

    # -- events and housekeeping ------------------------------------------------------------------

    async def events_after(self, after_id: int, limit: int = 100) -> list[Event]:
        rows = self._query(
            "SELECT id, type, created_at, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [Event(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def latest_event_id(self) -> int:
        # AUTOINCREMENT keeps the highest id ever handed out in sqlite_sequence, so purging
        # old rows never makes an id come back.
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        return int(rows[0][0]) if rows else 0

    async def oldest_event_id(self) -> int | None:
        rows = self._query("SELECT min(id) FROM events")
        return None if rows[0][0] is None else int(rows[0][0])

    async def purge(
        self, now: int, *, token_grace: int, event_retention: int, batch: int = 500
    ) -> PurgeResult:
        """Delete tokens expired for longer than ``token_grace`` and old events, in small
        transactions so requests are never held up for long."""
        tokens = events = 0

        def tokens_fn(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM tokens WHERE token_hash IN "
                "(SELECT token_hash FROM tokens WHERE exp < ? LIMIT ?)",
                (now - token_grace, batch),
            ).rowcount

        def events_fn(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM events WHERE id IN"
                " (SELECT id FROM events WHERE created_at < ? LIMIT ?)",
                (now - event_retention, batch),
            ).rowcount

        while True:
            n = await self._write(tokens_fn)
            tokens += n
            if n < batch:
                break
            await asyncio.sleep(0)  # let requests run between batches
        while True:
            n = await self._write(events_fn)
            events += n
            if n < batch:
                break
            await asyncio.sleep(0)
        await self._purge_assertion_jtis(now, batch)
        await self._purge_users_side(now, token_grace, batch)
        return PurgeResult(tokens=tokens, events=events)

    async def _purge_users_side(self, now: int, grace: int, batch: int) -> None:
        """Expired sessions, codes past their grace, and ended grants no token refers to."""
        for sql, params in (
            (
                "DELETE FROM sessions WHERE session_hash IN"
                " (SELECT session_hash FROM sessions WHERE expires_at < ? LIMIT ?)",
                (now, batch),
            ),
            (
                "DELETE FROM authorization_codes WHERE code_hash IN"
                " (SELECT code_hash FROM authorization_codes WHERE expires_at < ? LIMIT ?)",
                (now - grace, batch),
            ),
            (
                "DELETE FROM grants WHERE grant_id IN (SELECT g.grant_id FROM grants g"
                " WHERE g.expires_at < ? AND NOT EXISTS"
                " (SELECT 1 FROM tokens t WHERE t.grant_id = g.grant_id) LIMIT ?)",
                (now - grace, batch),
            ),
        ):

            def fn(c: sqlite3.Connection, sql: str = sql, params: Any = params) -> int:
                return c.execute(sql, params).rowcount

            while True:
                if await self._write(fn) < batch:
                    break
                await asyncio.sleep(0)  # let requests run between batches

    # -- signing keys, JWT access tokens, client assertions (RFC 9068, RFC 7523) ----------------

    async def list_signing_keys(self) -> list[SigningKey]:
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
        return [key_from_row(r) for r in rows]

    async def insert_signing_key(self, key: SigningKey) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    key.kid,
                    key.alg,
                    key.state,
                    key.public_jwk,
                    key.private_jwk_enc,
                    key.created_at,
                    key.activated_at,
                    key.retired_at,
                    key.not_after,
                ),
            )

        await self._write(fn)

    async def activate_signing_key(self, kid: str, now: int, *, retired_until: int) -> None:
        def fn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT state FROM signing_keys WHERE kid = ?", (kid,)).fetchone()
            if row is None:
                raise NotFound(f"no signing key {kid!r}")
            if row[0] != "next":
                raise Conflict(f"signing key {kid!r} is {row[0]}; only a next key can be activated")
            # The private part of a retired key is dropped: it must never sign again.
            c.execute(
                "UPDATE signing_keys SET state = 'retired', retired_at = ?, private_jwk_enc = NULL,"
                " not_after = max(not_after, ?) WHERE state = 'active'",
                (now, retired_until),
            )
            c.execute(
                "UPDATE signing_keys SET state = 'active', activated_at = ? WHERE kid = ?",
                (now, kid),
            )

        await self._write(fn)

    async def retire_signing_key(self, kid: str, now: int, *, immediately: bool = False) -> None:
        def fn(c: sqlite3.Connection) -> None:
            row = c.execute("SELECT state FROM signing_keys WHERE kid = ?", (kid,)).fetchone()
            if row is None:
                raise NotFound(f"no signing key {kid!r}")
            if row[0] == "active":
                raise Conflict(f"signing key {kid!r} is active; rotate to another key first")
            # A next key never signed anything, so nobody needs it published any longer.
            end = now if immediately or row[0] == "next" else None
            c.execute(
                "UPDATE signing_keys SET state = 'retired', private_jwk_enc = NULL,"
                " retired_at = coalesce(retired_at, ?), not_after = coalesce(?, not_after)"
                " WHERE kid = ?",
                (now, end, kid),
            )

        await self._write(fn)

    async def insert_jwt_token(self, record: TokenRecord, kid: str, not_after: int) -> None:
        params = token_params(record)

        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", params
            )
            # Rarely writes: only when this token outlives the key's rounded-up not_after.
            c.execute(
                "UPDATE signing_keys SET not_after = ? WHERE kid = ? AND not_after < ?",
                (not_after, kid, record.exp),
            )

        await self._write(fn)

    async def record_assertion_jti(self, client_id: str, jti: str, expires_at: int) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT INTO client_assertion_jtis (client_id, jti, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (client_id, jti) DO NOTHING",
                (client_id, jti, expires_at),
            )
            return cur.rowcount == 1

        return await self._write(fn)

    async def _purge_assertion_jtis(self, now: int, batch: int) -> int:
        def fn(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM client_assertion_jtis WHERE (client_id, jti) IN (SELECT client_id,"
                " jti FROM client_assertion_jtis WHERE expires_at < ? LIMIT ?)",
                (now, batch),
            ).rowcount

        total = 0
        while True:
            n = await self._write(fn)
            total += n
            if n < batch:
                return total
            await asyncio.sleep(0)

    # -- users, sessions, consent (issue 3) -------------------------------------------------

    async def create_user(self, user: User) -> None:
        def fn(c: sqlite3.Connection) -> None:
            if c.execute(
                "SELECT 1 FROM users WHERE user_id = ? OR username = ?",
                (user.user_id, user.username),
            ).fetchone():
                raise Conflict(f"user {user.username!r} exists already")
            c.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES ({placeholders(USER_COLUMNS)})",
                user_params(user),
            )

        await self._write(fn)

    async def get_user(self, user_id: str) -> User | None:
        rows = self._query(f"SELECT {USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,))
        return user_from_row(rows[0]) if rows else None

    async def get_user_by_name(self, username: str) -> User | None:
        rows = self._query(f"SELECT {USER_COLUMNS} FROM users WHERE username = ?", (username,))
        return user_from_row(rows[0]) if rows else None

    async def list_users(self) -> list[User]:
        rows = self._query(f"SELECT {USER_COLUMNS} FROM users ORDER BY username")
        return [user_from_row(r) for r in rows]

    async def update_user(self, user: User) -> None:
        def fn(c: sqlite3.Connection) -> None:
            other = c.execute(
                "SELECT user_id FROM users WHERE username = ?", (user.username,)
            ).fetchone()
            if other is not None and other[0] != user.user_id:
                raise Conflict(f"user {user.username!r} exists already")
            cur = c.execute(
                "UPDATE users SET username = ?, password_hash = ?, updated_at = ?"
                " WHERE user_id = ?",
                (user.username, user.password_hash, user.updated_at, user.user_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no user {user.user_id!r}")

        await self._write(fn)

    async def set_user_enabled(self, user_id: str, enabled: bool, now: int) -> int:
        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE users SET enabled = ?, updated_at = ? WHERE user_id = ?",
                (int(enabled), now, user_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no user {user_id!r}")
            return 0 if enabled else _revoke_user(c, user_id, now, USER_DISABLED)

        return await self._write(fn)

    async def delete_user(self, user_id: str, now: int) -> int:
        def fn(c: sqlite3.Connection) -> int:
            if not c.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone():
                raise NotFound(f"no user {user_id!r}")
            n = _revoke_user(c, user_id, now, USER_DELETED)
            c.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
            return n

        return await self._write(fn)

    async def revoke_user_sessions(self, user_id: str, now: int) -> int:
        def fn(c: sqlite3.Connection) -> int:
            if not c.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone():
                raise NotFound(f"no user {user_id!r}")
            return _revoke_user(c, user_id, now, USER_REVOKE_SESSIONS)

        return await self._write(fn)

    async def create_session(self, session: Session) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            return (
                c.execute(
                    "INSERT INTO sessions (session_hash, user_id, created_at, expires_at)"
                    " SELECT ?, user_id, ?, ? FROM users WHERE user_id = ? AND enabled = 1",
                    (session.session_hash, session.created_at, session.expires_at, session.user_id),
                ).rowcount
                == 1
            )

        return await self._write(fn)

    async def get_session(self, session_hash: bytes, now: int) -> tuple[Session, User] | None:
        cols = ", ".join("u." + c.strip() for c in USER_COLUMNS.split(","))
        rows = self._query(
            f"SELECT s.created_at, s.expires_at, {cols} FROM sessions s"
            " JOIN users u ON u.user_id = s.user_id"
            " WHERE s.session_hash = ? AND s.expires_at > ? AND u.enabled = 1",
            (session_hash, now),
        )
        if not rows:
            return None
        user = user_from_row(rows[0][2:])
        return Session(session_hash, user.user_id, rows[0][0], rows[0][1]), user

    async def delete_session(self, session_hash: bytes) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM sessions WHERE session_hash = ?", (session_hash,))

        await self._write(fn)

    async def get_consent(self, user_id: str, client_id: str) -> frozenset[str] | None:
        rows = self._query(
            "SELECT scope FROM consents WHERE user_id = ? AND client_id = ?", (user_id, client_id)
        )
        return split(rows[0][0]) if rows else None

    async def set_consent(
        self, user_id: str, client_id: str, scope: frozenset[str], now: int
    ) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO consents (user_id, client_id, scope, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (user_id, client_id) DO UPDATE SET scope = excluded.scope,"
                " updated_at = excluded.updated_at",
                (user_id, client_id, join(scope), now),
            )

        await self._write(fn)

    # -- authorization code grant and refresh tokens (RFC 6749 §4.1, §6; RFC 9700) ---------

    async def create_authorization_code(
        self, grant: Grant, code: AuthorizationCode, *, session_hash: bytes | None = None
    ) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            # In the writer's transaction: a cascade of the user committed before this saw
            # no such grant, so the session it ended (or the user it disabled) refuses it.
            if (
                session_hash is not None
                and not c.execute(
                    "SELECT 1 FROM sessions s JOIN users u ON u.user_id = s.user_id"
                    " WHERE s.session_hash = ? AND s.user_id = ? AND s.expires_at > ?"
                    " AND u.enabled = 1",
                    (session_hash, grant.user_id, code.created_at),
                ).fetchone()
            ):
                return False
            c.execute(
                f"INSERT INTO grants ({GRANT_COLUMNS}) VALUES ({placeholders(GRANT_COLUMNS)})",
                grant_params(grant),
            )
            c.execute(
                f"INSERT INTO authorization_codes ({CODE_COLUMNS})"
                f" VALUES ({placeholders(CODE_COLUMNS)})",
                code_params(code),
            )
            return True

        return await self._write(fn)

    async def redeem_authorization_code(self, code_hash: bytes, now: int) -> CodeRedemption:
        def fn(c: sqlite3.Connection) -> CodeRedemption:
            row = c.execute(
                f"SELECT {CODE_COLUMNS} FROM authorization_codes WHERE code_hash = ?",
                (code_hash,),
            ).fetchone()
            if row is None:
                return CodeRedemption("unknown")
            code = code_from_row(row)
            grow = c.execute(
                f"SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = ?", (code.grant_id,)
            ).fetchone()
            grant = grant_from_row(grow) if grow else None
            if code.used_at is not None:
                # RFC 6749 §4.1.2: a code used twice revokes what was issued from it.
                _revoke_grant(c, code.grant_id, now, CODE_REPLAYED)
                return CodeRedemption("replayed", code, grant)
            if now >= code.expires_at:
                return CodeRedemption("expired", code, grant)
            if grant is None or not grant.is_live(now):
                return CodeRedemption("revoked", code, grant)
            c.execute(
                "UPDATE authorization_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash)
            )
            return CodeRedemption("ok", code, grant)

        return await self._write(fn)

    async def get_grant(self, grant_id: str) -> Grant | None:
        rows = self._query(f"SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = ?", (grant_id,))
        return grant_from_row(rows[0]) if rows else None

    async def issue_grant_tokens(self, grant_id: str, tokens: list[NewToken], now: int) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            if not _grant_live(c, grant_id, now):
                return False
            _insert_tokens(c, tokens)
            return True

        return await self._write(fn)

    async def rotate_refresh_token(
        self, token_hash: bytes, tokens: list[NewToken], now: int
    ) -> Rotation:
        def fn(c: sqlite3.Connection) -> Rotation:
            row = c.execute(
                "SELECT kind, grant_id, revoked_at, rotated_at, exp FROM tokens"
                " WHERE token_hash = ?",
                (token_hash,),
            ).fetchone()
            if row is None or row[0] != "refresh_token" or row[1] is None:
                return Rotation("unknown")
            if row[3] is not None:
                # RFC 9700 §4.14.2: a rotated refresh token presented again means two
                # parties hold it; which one is the attacker is unknowable, so the grant ends.
                n = _revoke_grant(c, row[1], now, REFRESH_TOKEN_REPLAYED)
                return Rotation("replayed", n)
            if row[2] is not None:
                return Rotation("revoked")
            if now >= row[4]:
                return Rotation("expired")
            if not _grant_live(c, row[1], now):
                return Rotation("revoked")
            c.execute(
                "UPDATE tokens SET rotated_at = ?, revoked_at = ? WHERE token_hash = ?",
                (now, now, token_hash),
            )
            _insert_tokens(c, tokens)
            return Rotation("ok")

        return await self._write(fn)

    async def revoke_grant(self, grant_id: str, now: int, reason: str) -> int:
        def fn(c: sqlite3.Connection) -> int:
            return _revoke_grant(c, grant_id, now, reason)

        return await self._write(fn)


def _set_rs_clients(c: sqlite3.Connection, rs: ResourceServer) -> None:
    for client_id in sorted(rs.introspection_clients):
        if not c.execute("SELECT 1 FROM clients WHERE client_id = ?", (client_id,)).fetchone():
            raise NotFound(f"no client {client_id!r}")
        other = c.execute(
            "SELECT identifier FROM resource_server_clients WHERE client_id = ?", (client_id,)
        ).fetchone()
        if other is not None and other[0] != rs.identifier:
            raise Conflict(f"client {client_id!r} already introspects for {other[0]!r}")
        c.execute(
            "INSERT INTO resource_server_clients (client_id, identifier) VALUES (?, ?)",
            (client_id, rs.identifier),
        )


def _revoke_client_tokens(c: sqlite3.Connection, client_id: str, now: int) -> int:
    # Its grants too, so an outstanding code or refresh token of them can never be used.
    c.execute(
        "UPDATE grants SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
        (now, client_id),
    )
    return c.execute(
        "UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL AND exp > ?",
        (now, client_id, now),
    ).rowcount


_REVOKED_COLUMNS = "token_hash, jti, client_id, kind, aud, exp"


def _revoke_tokens(c: sqlite3.Connection, where: str, params: tuple[Any, ...], now: int) -> int:
    """Revoke the live tokens matching ``where``, each with its token_revoked event."""
    rows = c.execute(
        f"SELECT {_REVOKED_COLUMNS} FROM tokens WHERE {where} AND revoked_at IS NULL AND exp > ?",
        (*params, now),
    ).fetchall()
    for row in rows:
        c.execute("UPDATE tokens SET revoked_at = ? WHERE token_hash = ?", (now, row[0]))
        _append_event(c, TOKEN_REVOKED, now, revoked_token_payload(row))
    return len(rows)


def _revoke_grant(c: sqlite3.Connection, grant_id: str, now: int, reason: str) -> int:
    """Revoke one grant and its live tokens, with events; the number of tokens revoked."""
    row = c.execute(
        "SELECT client_id, user_id, revoked_at FROM grants WHERE grant_id = ?", (grant_id,)
    ).fetchone()
    if row is None:
        # No such grant (never stored, or purged): any token naming it is revoked all the
        # same, so that revoking a refresh token never answers yes and leaves it live.
        return _revoke_tokens(c, "grant_id = ?", (grant_id,), now)
    if row[2] is None:
        c.execute("UPDATE grants SET revoked_at = ? WHERE grant_id = ?", (now, grant_id))
    n = _revoke_tokens(c, "grant_id = ?", (grant_id,), now)
    if row[2] is None or n:
        _append_event(
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


def _revoke_user(c: sqlite3.Connection, user_id: str, now: int, reason: str) -> int:
    """End a user's sessions and revoke all their grants and tokens, with events."""
    c.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
    grants = c.execute(
        "UPDATE grants SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        (now, user_id),
    ).rowcount
    n = _revoke_tokens(
        c, "grant_id IN (SELECT grant_id FROM grants WHERE user_id = ?)", (user_id,), now
    )
    _append_event(
        c,
        USER_SESSIONS_REVOKED,
        now,
        {"sub": user_id, "reason": reason, "grants_revoked": grants, "tokens_revoked": n},
    )
    return n


def _grant_live(c: sqlite3.Connection, grant_id: str, now: int) -> bool:
    row = c.execute(
        "SELECT 1 FROM grants WHERE grant_id = ? AND revoked_at IS NULL AND expires_at > ?",
        (grant_id, now),
    ).fetchone()
    return row is not None


def _insert_tokens(c: sqlite3.Connection, tokens: list[NewToken]) -> None:
    for token in tokens:
        c.execute(
            f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(TOKEN_COLUMNS)})",
            token_params(token.record),
        )
        if token.kid is not None:  # a JWT: its key stays published while it lives
            c.execute(
                "UPDATE signing_keys SET not_after = ? WHERE kid = ? AND not_after < ?",
                (token.not_after, token.kid, token.record.exp),
            )


def _append_event(c: sqlite3.Connection, type_: str, now: int, payload: dict[str, Any]) -> None:
    c.execute(
        "INSERT INTO events (type, created_at, payload) VALUES (?, ?, ?)",
        (type_, now, json.dumps(payload, separators=(",", ":"), sort_keys=True)),
    )


def _statements(sql: str) -> list[str]:
    """Split a migration into statements, keeping trigger bodies (BEGIN ... END;) whole."""
    out: list[str] = []
    buf = ""
    for line in sql.splitlines(keepends=True):
        if line.strip().startswith("--") and not buf.strip():
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def migrations() -> list[tuple[int, str, str]]:
    """The versioned SQL migrations shipped for this engine, in order."""
    return _migrations("keystile.store.migrations.sqlite")
