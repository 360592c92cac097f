"""Signing keys, JWT access tokens and client assertion jtis in the PostgreSQL store
(RFC 9068, RFC 7523)."""

from __future__ import annotations

import asyncpg

from keystile.core.models import SigningKey, TokenRecord
from keystile.store.base import Conflict, NotFound
from keystile.store.postgres.cascade import _mark_used
from keystile.store.postgres.connection import PostgresBase, _rowcount
from keystile.store.rows import KEY_COLUMNS, TOKEN_COLUMNS, key_from_row, placeholders, token_params

# Replay caches: a jti is accepted once per client (RFC 7523 §3) or per DPoP key (RFC 9449
# §11.1); a row lives until the assertion or proof could no longer be accepted anyway.
_ONCE_SQL = {
    "assertion": "INSERT INTO client_assertion_jtis (client_id, jti, expires_at)"
    " VALUES ($1, $2, $3) ON CONFLICT (client_id, jti) DO NOTHING",
    "dpop": "INSERT INTO dpop_jtis (jkt, jti, expires_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (jkt, jti) DO NOTHING",
}


class KeysMixin(PostgresBase):
    async def list_signing_keys(self) -> list[SigningKey]:
        rows = await self._fetch(f"SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
        return [key_from_row(r) for r in rows]

    async def insert_signing_key(self, key: SigningKey) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            await c.execute(
                f"INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                key.kid,
                key.alg,
                key.state,
                key.public_jwk,
                key.private_jwk_enc,
                key.created_at,
                key.activated_at,
                key.retired_at,
                key.not_after,
                key.use_for,
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
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(TOKEN_COLUMNS, '$')})",
                *token_params(record),
            )
            await _mark_used(c, record.client_id, record.iat)
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
        return await self._record_once(_ONCE_SQL["assertion"], client_id, jti, expires_at)

    async def record_dpop_jti(self, jkt: str, jti: str, expires_at: int) -> bool:
        return await self._record_once(_ONCE_SQL["dpop"], jkt, jti, expires_at)

    async def _record_once(self, sql: str, scope: str, jti: str, expires_at: int) -> bool:
        """True the first time ``jti`` is seen for ``scope`` (a replay cache row)."""
        async with self._acquire() as conn:
            status = await conn.execute(sql, scope, jti, expires_at)
        return _rowcount(status) == 1
