"""The SQLite store's file, connections, migrations and plumbing: reads on the loop
thread, writes in one writer thread, each one ``BEGIN IMMEDIATE`` transaction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from keystile.core.models import Client, ResourceServer
from keystile.errors import StoreUnavailable
from keystile.store.base import Conflict
from keystile.store.rows import migrations as _migrations

T = TypeVar("T")


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"SQLite store unavailable: {exc}")


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


class SQLiteBase:
    """Connections, lifecycle and the registry cache's bookkeeping; the aggregates are mixins."""

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

    def _note_registry_version(self, version: int) -> None:
        if version != self._registry_version:
            self._registry_version = version
            self._clients.clear()
            self._rs_by_client.clear()
            self._known_resources = None
            self._scopes = None

    def data_version_now(self) -> int:
        """SQLite's data_version on the read connection: it changes whenever any other
        connection (another process, or this store's writer) commits. No disk I/O."""
        try:
            return int(self._r.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc

    async def ping(self) -> None:
        self._query("SELECT 1")

    async def schema_version(self) -> int:
        rows = self._query("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(rows[0][0])

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
