"""Users, sessions, consent, authorization codes, grants and refresh tokens in the
PostgreSQL store (RFC 6749 §4.1, §6; RFC 9700)."""

from __future__ import annotations

import asyncpg

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
from keystile.store.postgres.cascade import _insert_tokens, _revoke_grant, _revoke_user
from keystile.store.postgres.connection import PostgresBase, _rowcount
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

_USER_COLUMNS_U = ", ".join("u." + c.strip() for c in USER_COLUMNS.split(","))


class GrantsMixin(PostgresBase):
    async def create_user(self, user: User) -> None:
        # No conflict target: a taken user id and a taken username are both refused.
        n = await self._write1(
            f"INSERT INTO users ({USER_COLUMNS}) VALUES ({placeholders(USER_COLUMNS, '$')})"
            " ON CONFLICT DO NOTHING",
            *user_params(user),
        )
        if n == 0:
            raise Conflict(f"user {user.username!r} exists already")

    async def get_user(self, user_id: str) -> User | None:
        if "\x00" in user_id:  # see get_client
            return None
        row = await self._fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE user_id = $1", user_id)
        return None if row is None else user_from_row(row)

    async def get_user_by_name(self, username: str) -> User | None:
        if "\x00" in username:  # typed into the login form; see get_client
            return None
        row = await self._fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE username = $1", username
        )
        return None if row is None else user_from_row(row)

    async def list_users(self) -> list[User]:
        rows = await self._fetch(f"SELECT {USER_COLUMNS} FROM users ORDER BY username")
        return [user_from_row(r) for r in rows]

    async def update_user(self, user: User) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            other = await c.fetchval("SELECT user_id FROM users WHERE username = $1", user.username)
            if other is not None and other != user.user_id:
                raise Conflict(f"user {user.username!r} exists already")
            # A concurrent rename to the same name loses on the unique index: Conflict too.
            status = await c.execute(
                "UPDATE users SET username = $2, password_hash = $3, updated_at = $4, roles = $5,"
                " name = $6, preferred_username = $7, email = $8, email_verified = $9"
                " WHERE user_id = $1",
                user.user_id,
                *user_params(user)[1:3],
                *user_params(user)[5:],
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no user {user.user_id!r}")

        await self._tx(fn)

    async def set_user_enabled(self, user_id: str, enabled: bool, now: int) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            # The row lock of the UPDATE orders this against every other cascade of the user.
            status = await c.execute(
                "UPDATE users SET enabled = $2, updated_at = $3 WHERE user_id = $1",
                user_id,
                enabled,
                now,
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no user {user_id!r}")
            return 0 if enabled else await _revoke_user(c, user_id, now, USER_DISABLED)

        return await self._tx(fn)

    async def delete_user(self, user_id: str, now: int) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            if not await c.fetchval(
                "SELECT true FROM users WHERE user_id = $1 FOR UPDATE", user_id
            ):
                raise NotFound(f"no user {user_id!r}")
            n = await _revoke_user(c, user_id, now, USER_DELETED)
            await c.execute("DELETE FROM users WHERE user_id = $1", user_id)  # consents go too
            return n

        return await self._tx(fn)

    async def revoke_user_sessions(self, user_id: str, now: int) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            if not await c.fetchval(
                "SELECT true FROM users WHERE user_id = $1 FOR UPDATE", user_id
            ):
                raise NotFound(f"no user {user_id!r}")
            return await _revoke_user(c, user_id, now, USER_REVOKE_SESSIONS)

        return await self._tx(fn)

    async def create_session(self, session: Session) -> bool:
        # FOR SHARE on the user row: a disable committing meanwhile either waits for this
        # insert (and its cascade then deletes the session) or wins (and nothing is stored).
        n = await self._write1(
            "WITH u AS (SELECT user_id FROM users WHERE user_id = $2 AND enabled FOR SHARE)"
            " INSERT INTO sessions (session_hash, user_id, created_at, expires_at)"
            " SELECT $1, u.user_id, $3, $4 FROM u",
            session.session_hash,
            session.user_id,
            session.created_at,
            session.expires_at,
        )
        return n == 1

    async def get_session(self, session_hash: bytes, now: int) -> tuple[Session, User] | None:
        row = await self._fetchrow(
            f"SELECT s.created_at, s.expires_at, {_USER_COLUMNS_U} FROM sessions s"
            " JOIN users u ON u.user_id = s.user_id"
            " WHERE s.session_hash = $1 AND s.expires_at > $2 AND u.enabled",
            session_hash,
            now,
        )
        if row is None:
            return None
        user = user_from_row(row[2:])
        return Session(session_hash, user.user_id, row[0], row[1]), user

    async def delete_session(self, session_hash: bytes) -> None:
        await self._write1("DELETE FROM sessions WHERE session_hash = $1", session_hash)

    async def get_consent(self, user_id: str, client_id: str) -> frozenset[str] | None:
        row = await self._fetchrow(
            "SELECT scope FROM consents WHERE user_id = $1 AND client_id = $2", user_id, client_id
        )
        return None if row is None else split(row[0])

    async def set_consent(
        self, user_id: str, client_id: str, scope: frozenset[str], now: int
    ) -> None:
        await self._write1(
            "INSERT INTO consents (user_id, client_id, scope, updated_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (user_id, client_id) DO UPDATE SET scope = excluded.scope,"
            " updated_at = excluded.updated_at",
            user_id,
            client_id,
            join(scope),
            now,
        )

    async def create_authorization_code(
        self, grant: Grant, code: AuthorizationCode, *, session_hash: bytes | None = None
    ) -> bool:
        async def fn(c: asyncpg.Connection) -> bool:
            if code.nonce is not None:
                # OIDC Core §15.5.2: a nonce is good once per client while a code carrying
                # it lives. The advisory lock orders two requests with the same nonce.
                await c.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"{code.client_id} {code.nonce}"
                )
                if await c.fetchval(
                    "SELECT true FROM authorization_codes WHERE client_id = $1 AND nonce = $2"
                    " AND expires_at > $3",
                    code.client_id,
                    code.nonce,
                    code.created_at,
                ):
                    raise Conflict("nonce replayed")
            if session_hash is not None:
                # The user's row first, FOR SHARE: a cascade of the user (which locks that
                # row first) either committed before, and the session is seen gone by the
                # next statement, or waits for us and then revokes the grant stored here.
                if not await c.fetchval(
                    "SELECT true FROM users WHERE user_id = $1 AND enabled FOR SHARE",
                    grant.user_id,
                ):
                    return False
                if not await c.fetchval(
                    "SELECT true FROM sessions WHERE session_hash = $1 AND user_id = $2"
                    " AND expires_at > $3",
                    session_hash,
                    grant.user_id,
                    code.created_at,
                ):
                    return False
            await c.execute(
                f"INSERT INTO grants ({GRANT_COLUMNS}) VALUES ({placeholders(GRANT_COLUMNS, '$')})",
                *grant_params(grant),
            )
            await c.execute(
                f"INSERT INTO authorization_codes ({CODE_COLUMNS})"
                f" VALUES ({placeholders(CODE_COLUMNS, '$')})",
                *code_params(code),
            )
            return True

        return await self._tx(fn)

    async def redeem_authorization_code(self, code_hash: bytes, now: int) -> CodeRedemption:
        async def fn(c: asyncpg.Connection) -> CodeRedemption:
            # FOR UPDATE: of two redemptions at once, the second waits for the first to
            # commit, then reads used_at set and is a replay.
            row = await c.fetchrow(
                f"SELECT {CODE_COLUMNS} FROM authorization_codes WHERE code_hash = $1 FOR UPDATE",
                code_hash,
            )
            if row is None:
                return CodeRedemption("unknown")
            code = code_from_row(row)
            grow = await c.fetchrow(
                f"SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1", code.grant_id
            )
            grant = None if grow is None else grant_from_row(grow)
            if code.used_at is not None:
                # RFC 6749 §4.1.2: a code used twice revokes what was issued from it.
                await _revoke_grant(c, code.grant_id, now, CODE_REPLAYED)
                return CodeRedemption("replayed", code, grant)
            if now >= code.expires_at:
                return CodeRedemption("expired", code, grant)
            if grant is None or not grant.is_live(now):
                return CodeRedemption("revoked", code, grant)
            # The grant may still be revoked before its tokens are stored: issue_grant_tokens
            # checks it again, under its lock.
            await c.execute(
                "UPDATE authorization_codes SET used_at = $2 WHERE code_hash = $1",
                code_hash,
                now,
            )
            return CodeRedemption("ok", code, grant)

        return await self._tx(fn)

    async def get_grant(self, grant_id: str) -> Grant | None:
        row = await self._fetchrow(
            f"SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = $1", grant_id
        )
        return None if row is None else grant_from_row(row)

    async def issue_grant_tokens(self, grant_id: str, tokens: list[NewToken], now: int) -> bool:
        async def fn(c: asyncpg.Connection) -> bool:
            # FOR SHARE, held to commit: a cascade revoking this grant (which updates the
            # grant row first) waits for us and then revokes the tokens stored here; or it
            # committed first and we see the grant revoked (the row is re-checked after the
            # wait), storing nothing. Either way no token of a revoked grant stays live.
            live = await c.fetchval(
                "SELECT true FROM grants WHERE grant_id = $1 AND revoked_at IS NULL"
                " AND expires_at > $2 FOR SHARE",
                grant_id,
                now,
            )
            if not live:
                return False
            await _insert_tokens(c, tokens)
            return True

        return await self._tx(fn)

    async def rotate_refresh_token(
        self, token_hash: bytes, tokens: list[NewToken], now: int
    ) -> Rotation:
        async def fn(c: asyncpg.Connection) -> Rotation:
            # The token's grant (fixed for its life) is locked before the token, in the lock
            # order of the cascades: two rotations of one token, or of two tokens of one
            # grant, queue on the grant row instead of deadlocking on a lock upgrade.
            grant_id = await c.fetchval(
                "SELECT grant_id FROM tokens WHERE token_hash = $1 AND kind = 'refresh_token'",
                token_hash,
            )
            if grant_id is None:
                return Rotation("unknown")
            await c.execute("SELECT 1 FROM grants WHERE grant_id = $1 FOR UPDATE", grant_id)
            row = await c.fetchrow(
                "SELECT revoked_at, rotated_at, exp FROM tokens WHERE token_hash = $1 FOR UPDATE",
                token_hash,
            )
            if row is None:  # purged meanwhile
                return Rotation("unknown")
            if row[1] is not None:
                # RFC 9700 §4.14.2: a rotated refresh token presented again means two
                # parties hold it; which one is the attacker is unknowable, so the grant ends.
                n = await _revoke_grant(c, grant_id, now, REFRESH_TOKEN_REPLAYED)
                return Rotation("replayed", n)
            if row[0] is not None:
                return Rotation("revoked")
            if now >= row[2]:
                return Rotation("expired")
            if not await c.fetchval(
                "SELECT true FROM grants WHERE grant_id = $1 AND revoked_at IS NULL"
                " AND expires_at > $2",
                grant_id,
                now,
            ):
                return Rotation("revoked")
            await c.execute(
                "UPDATE tokens SET rotated_at = $2, revoked_at = $2 WHERE token_hash = $1",
                token_hash,
                now,
            )
            await _insert_tokens(c, tokens)
            return Rotation("ok")

        return await self._tx(fn)

    async def revoke_grant(self, grant_id: str, now: int, reason: str) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            return await _revoke_grant(c, grant_id, now, reason)

        return await self._tx(fn)

    async def revoke_user_client_grants(
        self, user_id: str, client_id: str, now: int, reason: str
    ) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            rows = await c.fetch(
                "SELECT grant_id FROM grants WHERE user_id = $1 AND client_id = $2"
                " AND revoked_at IS NULL ORDER BY grant_id",
                user_id,
                client_id,
            )
            n = 0
            for r in rows:
                n += await _revoke_grant(c, r[0], now, reason)
            return n

        return await self._tx(fn)
