"""The event log in the PostgreSQL store: reading events, purging old rows, and
LISTEN/NOTIFY wake-ups for the event bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import asyncpg

from keystile.store.base import Event, PurgeResult
from keystile.store.postgres.cascade import _append_event
from keystile.store.postgres.connection import PostgresBase, _rowcount, log
from keystile.store.postgres.pool import _UNAVAILABLE

EVENTS_CHANNEL = "keystile_events"


class EventsMixin(PostgresBase):
    async def append_event(self, type_: str, now: int, payload: dict[str, Any]) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            await _append_event(c, type_, now, payload)

        await self._tx(fn)

    async def events_after(self, after_id: int, limit: int = 100) -> list[Event]:
        rows = await self._fetch(
            "SELECT id, type, created_at, payload::text, written_ms FROM events WHERE id > $1"
            " ORDER BY id LIMIT $2",
            after_id,
            limit,
        )
        return [Event(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows]

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

    async def _purge_assertion_jtis(self, now: int, batch: int) -> int:
        total = 0
        for sql in (
            "DELETE FROM client_assertion_jtis WHERE (client_id, jti) IN"
            " (SELECT client_id, jti FROM client_assertion_jtis WHERE expires_at < $1"
            " LIMIT $2)",
            # RFC 9449 §11.1: DPoP proof jtis, past their iat window.
            "DELETE FROM dpop_jtis WHERE (jkt, jti) IN"
            " (SELECT jkt, jti FROM dpop_jtis WHERE expires_at < $1 LIMIT $2)",
        ):
            while True:
                async with self._acquire() as conn:
                    status = await conn.execute(sql, now, batch)
                n = _rowcount(status)
                total += n
                if n < batch:
                    break
                await asyncio.sleep(0)
        return total
