"""Writes shared by several aggregates, run inside a writer transaction: the revocation
cascade (docs/users.md) and its events (the outbox of ARCHITECTURE.md, decision 4)."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from keystile.store.base import GRANT_REVOKED, TOKEN_REVOKED, USER_SESSIONS_REVOKED, NewToken
from keystile.store.rows import TOKEN_COLUMNS, placeholders, revoked_token_payload, token_params


def _revoke_client_tokens(c: sqlite3.Connection, client_id: str, now: int) -> int:
    # Its grants too, so an outstanding code or refresh token of them can never be used.
    c.execute(
        "UPDATE grants SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL",
        (now, client_id),
    )
    return c.execute(
        "UPDATE tokens SET revoked_at = ? WHERE client_id = ? AND revoked_at IS NULL AND exp > ?",
        (now, client_id, now),
    ).rowcount


_REVOKED_COLUMNS = "token_hash, jti, client_id, kind, aud, exp"


def _revoke_tokens(c: sqlite3.Connection, where: str, params: tuple[Any, ...], now: int) -> int:
    """Revoke the live tokens matching ``where``, each with its token_revoked event."""
    rows = c.execute(
        f"SELECT {_REVOKED_COLUMNS} FROM tokens WHERE {where} AND revoked_at IS NULL AND exp > ?",
        (*params, now),
    ).fetchall()
    for row in rows:
        c.execute("UPDATE tokens SET revoked_at = ? WHERE token_hash = ?", (now, row[0]))
        _append_event(c, TOKEN_REVOKED, now, revoked_token_payload(row))
    return len(rows)


def _revoke_grant(c: sqlite3.Connection, grant_id: str, now: int, reason: str) -> int:
    """Revoke one grant and its live tokens, with events; the number of tokens revoked."""
    row = c.execute(
        "SELECT client_id, user_id, revoked_at FROM grants WHERE grant_id = ?", (grant_id,)
    ).fetchone()
    if row is None:
        # No such grant (never stored, or purged): any token naming it is revoked all the
        # same, so that revoking a refresh token never answers yes and leaves it live.
        return _revoke_tokens(c, "grant_id = ?", (grant_id,), now)
    if row[2] is None:
        c.execute("UPDATE grants SET revoked_at = ? WHERE grant_id = ?", (now, grant_id))
    n = _revoke_tokens(c, "grant_id = ?", (grant_id,), now)
    if row[2] is None or n:
        _append_event(
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


def _revoke_user(c: sqlite3.Connection, user_id: str, now: int, reason: str) -> int:
    """End a user's sessions and revoke all their grants and tokens, with events."""
    c.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,))
    grants = c.execute(
        "UPDATE grants SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
        (now, user_id),
    ).rowcount
    n = _revoke_tokens(
        c, "grant_id IN (SELECT grant_id FROM grants WHERE user_id = ?)", (user_id,), now
    )
    _append_event(
        c,
        USER_SESSIONS_REVOKED,
        now,
        {"sub": user_id, "reason": reason, "grants_revoked": grants, "tokens_revoked": n},
    )
    return n


def _grant_live(c: sqlite3.Connection, grant_id: str, now: int) -> bool:
    row = c.execute(
        "SELECT 1 FROM grants WHERE grant_id = ? AND revoked_at IS NULL AND expires_at > ?",
        (grant_id, now),
    ).fetchone()
    return row is not None


def _mark_used(c: sqlite3.Connection, client_id: str, now: int) -> None:
    """Note a registered client's first token: from then on it never expires unused."""
    c.execute(
        "UPDATE client_registrations SET used_at = ? WHERE client_id = ? AND used_at IS NULL",
        (now, client_id),
    )


def _insert_tokens(c: sqlite3.Connection, tokens: list[NewToken]) -> None:
    if tokens:
        _mark_used(c, tokens[0].record.client_id, tokens[0].record.iat)
    for token in tokens:
        c.execute(
            f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({placeholders(TOKEN_COLUMNS)})",
            token_params(token.record),
        )
        if token.kid is not None:  # a JWT: its key stays published while it lives
            c.execute(
                "UPDATE signing_keys SET not_after = ? WHERE kid = ? AND not_after < ?",
                (token.not_after, token.kid, token.record.exp),
            )


def _append_event(c: sqlite3.Connection, type_: str, now: int, payload: dict[str, Any]) -> None:
    c.execute(
        "INSERT INTO events (type, created_at, payload, written_ms) VALUES (?, ?, ?, ?)",
        (
            type_,
            now,
            json.dumps(payload, separators=(",", ":"), sort_keys=True),
            time.time_ns() // 1_000_000,  # real time, for the delivery delay (not the Clock)
        ),
    )
