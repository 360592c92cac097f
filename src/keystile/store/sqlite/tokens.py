"""Tokens in the SQLite store: insert, the introspection lookup, revocation (RFC 7009)."""

from __future__ import annotations

import sqlite3

from keystile.core.models import TokenRecord
from keystile.store.base import REFRESH_TOKEN_REVOKED, TOKEN_REVOKED
from keystile.store.rows import TOKEN_COLUMNS, placeholders, split, token_from_row, token_params
from keystile.store.sqlite.cascade import (
    _append_event,
    _mark_used,
    _revoke_grant,
    _revoke_tokens,
)
from keystile.store.sqlite.connection import SQLiteBase, _unavailable

# The token's own hash is not read back: the caller has it.
_LOOKUP_SQL = (
    "SELECT rv.version, "
    + ", ".join("t." + c.strip() for c in TOKEN_COLUMNS.split(",")[1:])
    + " FROM registry_version rv LEFT JOIN tokens t ON t.token_hash = ? WHERE rv.id = 1"
)


class TokensMixin(SQLiteBase):
    async def insert_token(self, record: TokenRecord) -> None:
        params = token_params(record)

        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(TOKEN_COLUMNS)})",
                params,
            )
            _mark_used(c, record.client_id, record.iat)

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
            row[13],
            row[14],
        )

    async def find_token(self, token_hash: bytes) -> TokenRecord | None:
        try:
            row = self._r.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        return token_from_row(row) if row else None

    async def find_token_by_jti(self, jti: str) -> TokenRecord | None:
        try:
            row = self._r.execute(
                f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = ?", (jti,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise _unavailable(exc) from exc
        return token_from_row(row) if row else None

    async def revoke_client_tokens(self, client_id: str, now: int) -> int:
        def fn(c: sqlite3.Connection) -> int:
            # Its grants too, so an outstanding code or refresh token of them is never used.
            c.execute(
                "UPDATE grants SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
                (now, client_id),
            )
            return _revoke_tokens(c, "client_id = ?", (client_id,), now)

        return await self._write(fn)

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
