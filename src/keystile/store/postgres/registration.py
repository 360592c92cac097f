"""Dynamic client registration in the PostgreSQL store (RFC 7591, RFC 7592): registered
clients' records and initial access tokens."""

from __future__ import annotations

import asyncpg

from keystile.core.models import Client, ClientRegistration, InitialAccessToken
from keystile.store.base import CLIENT_DELETED, NotFound
from keystile.store.postgres.cascade import _append_event, _revoke_client_tokens
from keystile.store.postgres.connection import PostgresBase, _rowcount
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

_CLIENT_UPDATE = client_update("$")


class RegistrationMixin(PostgresBase):
    async def register_client(
        self, client: Client, registration: ClientRegistration, *, cap: int | None = None
    ) -> bool:
        async def fn(c: asyncpg.Connection) -> bool:
            if cap is not None:
                # Registrations of one method take turns here, so two processes never
                # both see room for one more.
                await c.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('keystile.register:' || $1))",
                    registration.method,
                )
                n = await c.fetchval(
                    "SELECT count(*) FROM client_registrations WHERE method = $1",
                    registration.method,
                )
                if n >= cap:
                    return False
            await c.execute(
                f"INSERT INTO clients ({CLIENT_COLUMNS})"
                f" VALUES ({placeholders(CLIENT_COLUMNS, '$')})",
                *client_params(client),
            )
            await c.execute(
                f"INSERT INTO client_registrations ({REGISTRATION_COLUMNS})"
                f" VALUES ({placeholders(REGISTRATION_COLUMNS, '$')})",
                *registration_params(registration),
            )
            return True

        return await self._tx(fn)

    async def get_registration(self, client_id: str) -> ClientRegistration | None:
        row = await self._fetchrow(
            f"SELECT {REGISTRATION_COLUMNS} FROM client_registrations WHERE client_id = $1",
            client_id,
        )
        return None if row is None else registration_from_row(row)

    async def list_registrations(self) -> list[ClientRegistration]:
        rows = await self._fetch(
            f"SELECT {REGISTRATION_COLUMNS} FROM client_registrations ORDER BY client_id"
        )
        return [registration_from_row(r) for r in rows]

    async def update_registration(self, client: Client, metadata: str) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(_CLIENT_UPDATE, *client_update_params(client, "$"))
            if _rowcount(status) == 0:
                raise NotFound(f"no client {client.client_id!r}")
            await c.execute(
                "UPDATE client_registrations SET metadata = $2 WHERE client_id = $1",
                client.client_id,
                metadata,
            )

        await self._tx(fn)

    async def expire_registrations(
        self, method: str, registered_before: int, now: int, *, keep_disabled: bool = False
    ) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            # The clients' rows first, as delete_client locks them (one lock order).
            rows = await c.fetch(
                "SELECT c.client_id FROM clients c JOIN client_registrations r"
                " ON r.client_id = c.client_id WHERE r.method = $1 AND r.used_at IS NULL"
                " AND r.registered_at < $2 AND (c.enabled OR NOT $3)"
                " ORDER BY c.client_id FOR UPDATE OF c",
                method,
                registered_before,
                keep_disabled,
            )
            for (client_id,) in rows:
                n = await _revoke_client_tokens(c, client_id, now)
                await c.execute("DELETE FROM clients WHERE client_id = $1", client_id)
                await _append_event(
                    c, CLIENT_DELETED, now, {"client_id": client_id, "tokens_revoked": n}
                )
            return len(rows)

        return await self._tx(fn)

    async def create_initial_access_token(self, token: InitialAccessToken) -> None:
        await self._write1(
            f"INSERT INTO initial_access_tokens ({INITIAL_TOKEN_COLUMNS})"
            f" VALUES ({placeholders(INITIAL_TOKEN_COLUMNS, '$')})",
            *initial_token_params(token),
        )

    async def use_initial_access_token(self, token_hash: bytes, now: int) -> bool:
        # One statement: a token with one use left admits exactly one registration.
        n = await self._write1(
            "UPDATE initial_access_tokens SET uses_left = uses_left - 1"
            " WHERE token_hash = $1 AND expires_at > $2 AND (uses_left IS NULL OR uses_left > 0)",
            token_hash,
            now,
        )
        return n == 1

    async def list_initial_access_tokens(self) -> list[InitialAccessToken]:
        rows = await self._fetch(
            f"SELECT {INITIAL_TOKEN_COLUMNS} FROM initial_access_tokens"
            " ORDER BY created_at, token_id"
        )
        return [initial_token_from_row(r) for r in rows]

    async def delete_initial_access_token(self, token_id: str) -> None:
        n = await self._write1("DELETE FROM initial_access_tokens WHERE token_id = $1", token_id)
        if n == 0:
            raise NotFound(f"no initial access token {token_id!r}")
