"""Writes shared by several aggregates, run inside a transaction: the revocation cascade
(docs/users.md) and its events (the outbox of ARCHITECTURE.md, decision 4)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from keystile.store.base import GRANT_REVOKED, TOKEN_REVOKED, USER_SESSIONS_REVOKED, NewToken
from keystile.store.postgres.connection import _rowcount
from keystile.store.rows import TOKEN_COLUMNS, placeholders, revoked_token_payload, token_params


async def _revoke_client_tokens(c: asyncpg.Connection, client_id: str, now: int) -> int:
    # Its grants too, so an outstanding code or refresh token of them can never be used.
    # Grants first (see _lock_live_grants), so an issuance or rotation in flight either
    # commits before (and its tokens are revoked below) or sees the grant revoked.
    grants = await _lock_live_grants(c, "client_id = $1", client_id)
    if grants:
        await c.execute(
            "UPDATE grants SET revoked_at = $2 WHERE grant_id = ANY($1::text[])", grants, now
        )
    status = await c.execute(
        "UPDATE tokens SET revoked_at = $2"
        " WHERE client_id = $1 AND revoked_at IS NULL AND exp > $2",
        client_id,
        now,
    )
    return _rowcount(status)


async def _lock_live_grants(c: asyncpg.Connection, where: str, key: str) -> list[str]:
    """Lock the unrevoked grants matching ``where`` (``$1`` = ``key``), in grant_id order:
    cascades that lock several grants take them in one order, so they cannot deadlock."""
    rows = await c.fetch(
        f"SELECT grant_id FROM grants WHERE {where} AND revoked_at IS NULL"
        " ORDER BY grant_id FOR UPDATE",
        key,
    )
    return [r[0] for r in rows]


_REVOKED_COLUMNS = "token_hash, jti, client_id, kind, aud, exp"


async def _revoke_tokens(c: asyncpg.Connection, where: str, key: str, now: int) -> int:
    """Revoke the live tokens matching ``where`` (``$1`` = ``key``), each with its
    token_revoked event. One UPDATE locks them all before any event is written."""
    rows = await c.fetch(
        f"UPDATE tokens SET revoked_at = $2 WHERE {where} AND revoked_at IS NULL AND exp > $2"
        f" RETURNING {_REVOKED_COLUMNS}",
        key,
        now,
    )
    rows.sort(key=lambda r: (r[5], r[1]))  # a stable order: by expiry, then jti
    await _append_events(c, TOKEN_REVOKED, now, [revoked_token_payload(r) for r in rows])
    return len(rows)


async def _revoke_grant(c: asyncpg.Connection, grant_id: str, now: int, reason: str) -> int:
    """Revoke one grant and its live tokens, with events; the number of tokens revoked."""
    # FOR UPDATE: of two cascades of one grant, the second waits and finds it revoked, so
    # one grant_revoked event.
    row = await c.fetchrow(
        "SELECT client_id, user_id, revoked_at FROM grants WHERE grant_id = $1 FOR UPDATE",
        grant_id,
    )
    if row is None:
        # No such grant (never stored, or purged): any token naming it is revoked all the
        # same, so that revoking a refresh token never answers yes and leaves it live.
        return await _revoke_tokens(c, "grant_id = $1", grant_id, now)
    if row[2] is None:
        await c.execute("UPDATE grants SET revoked_at = $2 WHERE grant_id = $1", grant_id, now)
    n = await _revoke_tokens(c, "grant_id = $1", grant_id, now)
    if row[2] is None or n:
        await _append_event(
            c,
            GRANT_REVOKED,
            now,
            {
                "grant_id": grant_id,
                "client_id": row[0],
                "sub": row[1],
                "reason": reason,
                "tokens_revoked": n,
            },
        )
    return n


async def _revoke_user(c: asyncpg.Connection, user_id: str, now: int, reason: str) -> int:
    """End a user's sessions and revoke all their grants and tokens, with events. The
    caller holds the user's row lock, so cascades of one user run one at a time."""
    await c.execute("DELETE FROM sessions WHERE user_id = $1", user_id)
    grants = await _lock_live_grants(c, "user_id = $1", user_id)
    if grants:
        await c.execute(
            "UPDATE grants SET revoked_at = $2 WHERE grant_id = ANY($1::text[])", grants, now
        )
    n = await _revoke_tokens(
        c, "grant_id IN (SELECT grant_id FROM grants WHERE user_id = $1)", user_id, now
    )
    await _append_event(
        c,
        USER_SESSIONS_REVOKED,
        now,
        {"sub": user_id, "reason": reason, "grants_revoked": len(grants), "tokens_revoked": n},
    )
    return n


async def _mark_used(c: asyncpg.Connection, client_id: str, now: int) -> None:
    """Note a registered client's first token: from then on it never expires unused."""
    await c.execute(
        "UPDATE client_registrations SET used_at = $2 WHERE client_id = $1 AND used_at IS NULL",
        client_id,
        now,
    )


async def _insert_tokens(c: asyncpg.Connection, tokens: list[NewToken]) -> None:
    if not tokens:
        return
    await _mark_used(c, tokens[0].record.client_id, tokens[0].record.iat)
    await c.executemany(
        f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(TOKEN_COLUMNS, '$')})",
        [token_params(t.record) for t in tokens],
    )
    for token in tokens:
        if token.kid is not None:  # a JWT: its key stays published while it lives
            await c.execute(
                "UPDATE signing_keys SET not_after = $2 WHERE kid = $1 AND not_after < $3",
                token.kid,
                token.not_after,
                token.record.exp,
            )


async def _append_event(
    c: asyncpg.Connection, type_: str, now: int, payload: dict[str, Any]
) -> None:
    # The id comes from the events_id trigger (ordered, gap-free); it also sends the NOTIFY.
    await c.execute(
        "INSERT INTO events (type, created_at, payload) VALUES ($1, $2, $3::jsonb)",
        type_,
        now,
        json.dumps(payload, separators=(",", ":"), sort_keys=True),
    )


async def _append_events(
    c: asyncpg.Connection, type_: str, now: int, payloads: list[dict[str, Any]]
) -> None:
    """Several events of one type, in order, in one round trip."""
    if payloads:
        await c.executemany(
            "INSERT INTO events (type, created_at, payload) VALUES ($1, $2, $3::jsonb)",
            [(type_, now, json.dumps(p, separators=(",", ":"), sort_keys=True)) for p in payloads],
        )
