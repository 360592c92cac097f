"""Tokens in the PostgreSQL store: insert, the batched introspection lookup, revocation
(RFC 7009)."""

from __future__ import annotations

import asyncio

import asyncpg

from keystile.core.models import TokenRecord
from keystile.errors import StoreUnavailable
from keystile.store.base import REFRESH_TOKEN_REVOKED, TOKEN_REVOKED, Conflict
from keystile.store.postgres.cascade import (
    _append_event,
    _lock_live_grants,
    _revoke_grant,
    _revoke_tokens,
)
from keystile.store.postgres.connection import Lookup, PostgresBase
from keystile.store.postgres.pool import _reusable_after, _unavailable
from keystile.store.rows import TOKEN_COLUMNS, placeholders, split, token_from_row, token_params

# One statement, one snapshot: the registry version and the token observed together. The
# token's own hash is not read back: the caller has it. A NULL hash matches no row.
_LOOKUP_SQL = (
    "SELECT rv.version, t.kind, t.client_id, t.scope, t.aud, t.iat, t.nbf, t.exp, t.jti,"
    " t.sub, t.username, t.grant_id, t.revoked_at, t.cnf_jkt, t.cnf_x5t"
    " FROM registry_version rv LEFT JOIN tokens t ON t.token_hash = $1 WHERE rv.id = 1"
)

# The same for several tokens at once (see PostgresStore.lookup_token): matched tokens come
# back one row each; when none matches, one row with the version and NULLs.
_LOOKUP_MANY_SQL = (
    "SELECT rv.version, t.token_hash, t.kind, t.client_id, t.scope, t.aud, t.iat, t.nbf, t.exp,"
    " t.jti, t.sub, t.username, t.grant_id, t.revoked_at, t.cnf_jkt, t.cnf_x5t"
    " FROM registry_version rv LEFT JOIN tokens t ON t.token_hash = ANY($1::bytea[])"
    " WHERE rv.id = 1"
)


_MAX_BATCH = 256  # lookups per statement


class TokensMixin(PostgresBase):
    async def insert_token(self, record: TokenRecord) -> None:
        async with self._acquire() as conn:
            try:
                # One statement, one round trip: the token, and a registered client's
                # first use noted (from then on it never expires unused).
                await conn.execute(
                    f"WITH t AS (INSERT INTO tokens ({TOKEN_COLUMNS})"
                    f" VALUES ({placeholders(TOKEN_COLUMNS, '$')})"
                    " RETURNING client_id, iat)"
                    " UPDATE client_registrations r SET used_at = t.iat FROM t"
                    " WHERE r.client_id = t.client_id AND r.used_at IS NULL",
                    *token_params(record),
                )
            except asyncpg.IntegrityConstraintViolationError as exc:
                raise Conflict(str(exc)) from exc

    async def lookup_token(self, token_hash: bytes | None) -> Lookup:
        """The registry version and the token, read in one statement (one snapshot).

        This is the whole store cost of an introspection whose caller is cached: the version
        tells the caller cache whether it may still trust what it holds.

        Lookups are batched: those issued in the same turn of the event loop, and those
        that arrive while their batch waits for a free connection, are answered by one
        statement (``token_hash = ANY(...)``). Idle, a batch holds one lookup and adds one
        loop turn; under load one round trip and one query serve many requests, which is
        where PostgreSQL's per-statement cost would otherwise dominate. Each answer is still
        read after its request arrived, in one snapshot with the version.
        """
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        batch = self._batch
        if batch is None or len(batch) >= _MAX_BATCH:
            batch = self._batch = []
            task = asyncio.create_task(self._run_lookups(batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        answer: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()
        batch.append((token_hash, answer))
        return await answer

    async def _run_lookups(self, batch: list[tuple[bytes | None, asyncio.Future[Lookup]]]) -> None:
        """Take a connection, close the batch, answer every lookup in it; never raises."""
        pool = self._pool
        conn = None
        try:
            if pool is None:
                raise StoreUnavailable("store is not open")
            conn = await pool.acquire()  # the batch stays open (keeps growing) meanwhile
            if self._batch is batch:
                self._batch = None
            hashes = list({h for h, _ in batch if h is not None})
            if len(hashes) <= 1:
                row = await conn.fetchrow(_LOOKUP_SQL, hashes[0] if hashes else None)
                rows = [] if row is None else [(row[0], hashes[0] if hashes else None, *row[1:])]
            else:
                rows = await conn.fetch(_LOOKUP_MANY_SQL, hashes)
            pool.release(conn)
            conn = None
        except BaseException as exc:
            if self._batch is batch:
                self._batch = None
            if conn is not None and pool is not None:
                pool.release(conn, reusable=_reusable_after(exc))
            error = exc if isinstance(exc, StoreUnavailable) else _unavailable(exc)
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(StoreUnavailable(str(error)))
            if not isinstance(exc, Exception):
                raise  # cancelled (the store is closing): the lookups got their answer
            return
        self.lookups += len(batch)
        self.lookup_statements += 1
        if not rows:  # the registry_version row is part of the schema
            missing = "PostgreSQL store unavailable: registry_version row missing"
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(StoreUnavailable(missing))
            return
        version = rows[0][0]
        found: dict[bytes, TokenRecord] = {}
        for r in rows:
            if r[2] is not None:  # kind: a token matched
                found[bytes(r[1])] = TokenRecord(
                    bytes(r[1]),
                    r[2],
                    r[3],
                    split(r[4]),
                    tuple(r[5].split()) if r[5] else (),
                    r[6],
                    r[7],
                    r[8],
                    r[9],
                    r[10],
                    r[11],
                    r[12],
                    r[13],
                    r[14],
                    r[15],
                )
        for token_hash, answer in batch:
            if not answer.done():  # its request may have been cancelled
                answer.set_result((version, None if token_hash is None else found.get(token_hash)))

    async def find_token(self, token_hash: bytes) -> TokenRecord | None:
        row = await self._fetchrow(
            f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_hash = $1", token_hash
        )
        return None if row is None else token_from_row(row)

    async def find_token_by_jti(self, jti: str) -> TokenRecord | None:
        row = await self._fetchrow(f"SELECT {TOKEN_COLUMNS} FROM tokens WHERE jti = $1", jti)
        return None if row is None else token_from_row(row)

    async def revoke_client_tokens(self, client_id: str, now: int) -> int:
        async def fn(c: asyncpg.Connection) -> int:
            # Grants first, as in the disable cascade, so an issuance in flight either
            # commits before (its tokens are revoked below) or sees its grant revoked.
            grants = await _lock_live_grants(c, "client_id = $1", client_id)
            if grants:
                await c.execute(
                    "UPDATE grants SET revoked_at = $2 WHERE grant_id = ANY($1::text[])",
                    grants,
                    now,
                )
            return await _revoke_tokens(c, "client_id = $1", client_id, now)

        return await self._tx(fn)

    async def revoke_token(self, token_hash: bytes, client_id: str, now: int) -> bool:
        """Revoke a token if it belongs to ``client_id``; the event is written in the same
        transaction. True if the token is revoked now (or already was)."""

        async def fn(c: asyncpg.Connection) -> bool:
            # The conditional UPDATE takes the row lock: of two concurrent revocations the
            # second waits, re-reads revoked_at and changes nothing, so exactly one event.
            # A refresh token of a grant is not matched: it takes the cascade below.
            row = await c.fetchrow(
                "UPDATE tokens SET revoked_at = $3"
                " WHERE token_hash = $1 AND client_id = $2 AND revoked_at IS NULL AND exp > $3"
                " AND (kind <> 'refresh_token' OR grant_id IS NULL)"
                " RETURNING jti, kind, exp, aud",
                token_hash,
                client_id,
                now,
            )
            if row is None:  # unknown, another client's, already revoked, expired, or a grant's
                found = await c.fetchrow(
                    "SELECT client_id, kind, grant_id FROM tokens WHERE token_hash = $1",
                    token_hash,
                )
                if found is None or found[0] != client_id:
                    return False
                if found[1] == "refresh_token" and found[2] is not None:
                    # RFC 7009 §2.1: revoking a refresh token revokes its grant, so every
                    # access token issued from it too (docs/users.md, the cascade matrix).
                    await _revoke_grant(c, found[2], now, REFRESH_TOKEN_REVOKED)
                return True
            await _append_event(
                c,
                TOKEN_REVOKED,
                now,
                {
                    "token_sha256": token_hash.hex(),
                    "jti": row[0],
                    "client_id": client_id,
                    "token_type": row[1],
                    "aud": row[3].split() if row[3] else [],
                    "exp": row[2],
                },
            )
            return True

        return await self._tx(fn)
