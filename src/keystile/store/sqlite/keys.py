"""Signing keys, JWT access tokens and client assertion jtis in the SQLite store
(RFC 9068, RFC 7523)."""

from __future__ import annotations

import sqlite3

from keystile.core.models import SigningKey, TokenRecord
from keystile.store.base import Conflict, NotFound
from keystile.store.rows import KEY_COLUMNS, TOKEN_COLUMNS, key_from_row, placeholders, token_params
from keystile.store.sqlite.cascade import _mark_used
from keystile.store.sqlite.connection import SQLiteBase

# Replay caches: a jti is accepted once per client (RFC 7523 §3) or per DPoP key (RFC 9449
# §11.1); a row lives until the assertion or proof could no longer be accepted anyway.
_ONCE_SQL = {
    "assertion": "INSERT INTO client_assertion_jtis (client_id, jti, expires_at)"
    " VALUES (?, ?, ?) ON CONFLICT (client_id, jti) DO NOTHING",
    "dpop": "INSERT INTO dpop_jtis (jkt, jti, expires_at) VALUES (?, ?, ?)"
    " ON CONFLICT (jkt, jti) DO NOTHING",
}


class KeysMixin(SQLiteBase):
    async def list_signing_keys(self) -> list[SigningKey]:
        rows = self._query(f"SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
        return [key_from_row(r) for r in rows]

    async def insert_signing_key(self, key: SigningKey) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
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
                    key.use_for,
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
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(TOKEN_COLUMNS)})",
                params,
            )
            _mark_used(c, record.client_id, record.iat)
            # Rarely writes: only when this token outlives the key's rounded-up not_after.
            c.execute(
                "UPDATE signing_keys SET not_after = ? WHERE kid = ? AND not_after < ?",
                (not_after, kid, record.exp),
            )

        await self._write(fn)

    async def record_assertion_jti(self, client_id: str, jti: str, expires_at: int) -> bool:
        return await self._record_once(_ONCE_SQL["assertion"], client_id, jti, expires_at)

    async def record_dpop_jti(self, jkt: str, jti: str, expires_at: int) -> bool:
        return await self._record_once(_ONCE_SQL["dpop"], jkt, jti, expires_at)

    async def _record_once(self, sql: str, scope: str, jti: str, expires_at: int) -> bool:
        """True the first time ``jti`` is seen for ``scope`` (a replay cache row)."""

        def fn(c: sqlite3.Connection) -> bool:
            return c.execute(sql, (scope, jti, expires_at)).rowcount == 1

        return await self._write(fn)
