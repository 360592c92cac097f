"""Dynamic client registration in the SQLite store (RFC 7591, RFC 7592): registered
clients' records and initial access tokens."""

from __future__ import annotations

import sqlite3

from keystile.core.models import Client, ClientRegistration, InitialAccessToken
from keystile.store.base import CLIENT_DELETED, Conflict, NotFound
from keystile.store.rows import (
    CLIENT_COLUMNS,
    INITIAL_TOKEN_COLUMNS,
    REGISTRATION_COLUMNS,
    client_params,
    client_update,
    client_update_params,
    initial_token_from_row,
    initial_token_params,
    placeholders,
    registration_from_row,
    registration_params,
)
from keystile.store.sqlite.cascade import _append_event, _revoke_client_tokens
from keystile.store.sqlite.connection import SQLiteBase

_CLIENT_UPDATE = client_update("?")


class RegistrationMixin(SQLiteBase):
    async def register_client(
        self, client: Client, registration: ClientRegistration, *, cap: int | None = None
    ) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            # Counted in the writer's transaction, so concurrent registrations (any
            # process: BEGIN IMMEDIATE serializes writers) never pass the cap together.
            if cap is not None:
                (n,) = c.execute(
                    "SELECT count(*) FROM client_registrations WHERE method = ?",
                    (registration.method,),
                ).fetchone()
                if n >= cap:
                    return False
            if c.execute(
                "SELECT 1 FROM clients WHERE client_id = ?", (client.client_id,)
            ).fetchone():
                raise Conflict(f"client {client.client_id!r} exists already")
            c.execute(
                f"INSERT INTO clients ({CLIENT_COLUMNS}) VALUES ({placeholders(CLIENT_COLUMNS)})",
                client_params(client),
            )
            c.execute(
                f"INSERT INTO client_registrations ({REGISTRATION_COLUMNS})"
                f" VALUES ({placeholders(REGISTRATION_COLUMNS)})",
                registration_params(registration),
            )
            return True

        return await self._write(fn)

    async def get_registration(self, client_id: str) -> ClientRegistration | None:
        rows = self._query(
            f"SELECT {REGISTRATION_COLUMNS} FROM client_registrations WHERE client_id = ?",
            (client_id,),
        )
        return registration_from_row(rows[0]) if rows else None

    async def list_registrations(self) -> list[ClientRegistration]:
        rows = self._query(
            f"SELECT {REGISTRATION_COLUMNS} FROM client_registrations ORDER BY client_id"
        )
        return [registration_from_row(r) for r in rows]

    async def update_registration(self, client: Client, metadata: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute(_CLIENT_UPDATE, client_update_params(client))
            if cur.rowcount == 0:
                raise NotFound(f"no client {client.client_id!r}")
            c.execute(
                "UPDATE client_registrations SET metadata = ? WHERE client_id = ?",
                (metadata, client.client_id),
            )

        await self._write(fn)

    async def expire_registrations(
        self, method: str, registered_before: int, now: int, *, keep_disabled: bool = False
    ) -> int:
        def fn(c: sqlite3.Connection) -> int:
            rows = c.execute(
                "SELECT r.client_id FROM client_registrations r JOIN clients c"
                " ON c.client_id = r.client_id WHERE r.method = ? AND r.used_at IS NULL"
                " AND r.registered_at < ? AND (c.enabled = 1 OR ? = 0) ORDER BY r.client_id",
                (method, registered_before, int(keep_disabled)),
            ).fetchall()
            for (client_id,) in rows:
                n = _revoke_client_tokens(c, client_id, now)
                c.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))
                _append_event(c, CLIENT_DELETED, now, {"client_id": client_id, "tokens_revoked": n})
            return len(rows)

        return await self._write(fn)

    async def create_initial_access_token(self, token: InitialAccessToken) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO initial_access_tokens ({INITIAL_TOKEN_COLUMNS})"
                f" VALUES ({placeholders(INITIAL_TOKEN_COLUMNS)})",
                initial_token_params(token),
            )

        await self._write(fn)

    async def use_initial_access_token(self, token_hash: bytes, now: int) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            # One statement: a token with one use left admits exactly one registration.
            cur = c.execute(
                "UPDATE initial_access_tokens SET uses_left = uses_left - 1"
                " WHERE token_hash = ? AND expires_at > ? AND (uses_left IS NULL OR uses_left > 0)",
                (token_hash, now),
            )
            return cur.rowcount == 1

        return await self._write(fn)

    async def list_initial_access_tokens(self) -> list[InitialAccessToken]:
        rows = self._query(
            f"SELECT {INITIAL_TOKEN_COLUMNS} FROM initial_access_tokens"
            " ORDER BY created_at, token_id"
        )
        return [initial_token_from_row(r) for r in rows]

    async def delete_initial_access_token(self, token_id: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute("DELETE FROM initial_access_tokens WHERE token_id = ?", (token_id,))
            if cur.rowcount == 0:
                raise NotFound(f"no initial access token {token_id!r}")

        await self._write(fn)
