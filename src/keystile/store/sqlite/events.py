"""The event log and housekeeping in the SQLite store: reading events, purging old rows."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

from keystile.store.base import Event, PurgeResult
from keystile.store.sqlite.cascade import _append_event
from keystile.store.sqlite.connection import SQLiteBase


class EventsMixin(SQLiteBase):
    async def append_event(self, type_: str, now: int, payload: dict[str, Any]) -> None:
        def fn(c: sqlite3.Connection) -> None:
            _append_event(c, type_, now, payload)

        await self._write(fn)

    async def events_after(self, after_id: int, limit: int = 100) -> list[Event]:
        rows = self._query(
            "SELECT id, type, created_at, payload, written_ms FROM events WHERE id > ?"
            " ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [Event(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

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

    async def _purge_assertion_jtis(self, now: int, batch: int) -> int:
        def fn(c: sqlite3.Connection) -> int:
            return c.execute(
                "DELETE FROM client_assertion_jtis WHERE (client_id, jti) IN (SELECT client_id,"
                " jti FROM client_assertion_jtis WHERE expires_at < ? LIMIT ?)",
                (now, batch),
            ).rowcount

        def dpop(c: sqlite3.Connection) -> int:  # RFC 9449 §11.1: past the iat window
            return c.execute(
                "DELETE FROM dpop_jtis WHERE (jkt, jti) IN (SELECT jkt, jti FROM dpop_jtis"
                " WHERE expires_at < ? LIMIT ?)",
                (now, batch),
            ).rowcount

        total = 0
        for step in (fn, dpop):
            while True:
                n = await self._write(step)
                total += n
                if n < batch:
                    break
                await asyncio.sleep(0)
        return total
