"""Users, sessions, consent, authorization codes, grants and refresh tokens in the SQLite
store (RFC 6749 §4.1, §6; RFC 9700)."""

from __future__ import annotations

import sqlite3

from keystile.core.models import AuthorizationCode, Grant, Session, User
from keystile.store.base import (
    CODE_REPLAYED,
    REFRESH_TOKEN_REPLAYED,
    USER_DELETED,
    USER_DISABLED,
    USER_REVOKE_SESSIONS,
    CodeRedemption,
    Conflict,
    NewToken,
    NotFound,
    Rotation,
)
from keystile.store.rows import (
    CODE_COLUMNS,
    GRANT_COLUMNS,
    USER_COLUMNS,
    code_from_row,
    code_params,
    grant_from_row,
    grant_params,
    join,
    placeholders,
    split,
    user_from_row,
    user_params,
)
from keystile.store.sqlite.cascade import _grant_live, _insert_tokens, _revoke_grant, _revoke_user
from keystile.store.sqlite.connection import SQLiteBase


class GrantsMixin(SQLiteBase):
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
                "UPDATE users SET username = ?, password_hash = ?, updated_at = ?, roles = ?,"
                " name = ?, preferred_username = ?, email = ?, email_verified = ?"
                " WHERE user_id = ?",
                (*user_params(user)[1:3], *user_params(user)[5:], user.user_id),
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

    async def create_authorization_code(
        self, grant: Grant, code: AuthorizationCode, *, session_hash: bytes | None = None
    ) -> bool:
        def fn(c: sqlite3.Connection) -> bool:
            # OIDC Core §15.5.2: a nonce is good once per client while a code carrying it
            # lives (checked in the writer's transaction, so two requests cannot both pass).
            if (
                code.nonce is not None
                and c.execute(
                    "SELECT 1 FROM authorization_codes WHERE client_id = ? AND nonce = ?"
                    " AND expires_at > ?",
                    (code.client_id, code.nonce, code.created_at),
                ).fetchone()
            ):
                raise Conflict("nonce replayed")
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

    async def revoke_user_client_grants(
        self, user_id: str, client_id: str, now: int, reason: str
    ) -> int:
        def fn(c: sqlite3.Connection) -> int:
            rows = c.execute(
                "SELECT grant_id FROM grants WHERE user_id = ? AND client_id = ?"
                " AND revoked_at IS NULL ORDER BY grant_id",
                (user_id, client_id),
            ).fetchall()
            return sum(_revoke_grant(c, r[0], now, reason) for r in rows)

        return await self._write(fn)
