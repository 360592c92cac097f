"""Token administration: find a token by ``jti`` or digest, revoke by token, by client or by
user (RFC 7009 semantics, docs/users.md cascade), and read the event log. The operations
behind ``keystile token`` and the admin API (docs/admin.md).

A raw token is never shown, stored or logged here: callers look tokens up by their
``jti`` or their SHA-256 digest (hex), the same key the event log and the SDK's cache use.
"""

from __future__ import annotations

import re
from typing import Any

from keystile.clock import Clock
from keystile.core.models import TokenRecord
from keystile.core.scope import format_scope
from keystile.errors import ConfigurationError
from keystile.store.base import Event, NotFound, Store

_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
MAX_EVENTS = 500  # events one tail request returns at most


def parse_digest(value: str) -> bytes:
    """A token digest from its hex form (64 hex digits: SHA-256 of the token)."""
    if not _DIGEST.fullmatch(value):
        raise ConfigurationError("a token digest is the SHA-256 of the token: 64 hex digits")
    return bytes.fromhex(value)


async def find_token(
    store: Store, *, jti: str | None = None, digest: str | None = None
) -> TokenRecord:
    """The token with this ``jti`` or digest (give exactly one); NotFound otherwise."""
    if (jti is None) == (digest is None):
        raise ConfigurationError("give a token's jti or its digest (SHA-256, hex), not both")
    if digest is not None:
        record = await store.find_token(parse_digest(digest))
        what = f"digest {digest.lower()}"
    else:
        record = await store.find_token_by_jti(str(jti))
        what = f"jti {jti!r}"
    if record is None:
        raise NotFound(f"no token with {what}")
    return record


async def revoke_token(
    store: Store, clock: Clock, *, jti: str | None = None, digest: str | None = None
) -> TokenRecord:
    """Revoke one token, whoever holds it: an access token alone, a refresh token with its
    whole grant (RFC 7009 §2.1). Revoking an expired or revoked token changes nothing."""
    record = await find_token(store, jti=jti, digest=digest)
    await store.revoke_token(record.token_hash, record.client_id, clock.now())
    found = await store.find_token(record.token_hash)
    return found if found is not None else record


async def revoke_client_tokens(store: Store, clock: Clock, client_id: str) -> int:
    """Revoke every live token and grant of a client, which stays enabled (to stop it for
    good, disable it); the number of tokens revoked."""
    if await store.get_client(client_id) is None:
        raise NotFound(f"no client {client_id!r}")
    return await store.revoke_client_tokens(client_id, clock.now())


def token_view(record: TokenRecord, now: int) -> dict[str, Any]:
    """A token as JSON for operators: its digest and claims, never its value."""
    if record.revoked_at is not None:
        state = "revoked"
    elif now >= record.exp:
        state = "expired"
    elif now < record.nbf:
        state = "not_yet_valid"
    else:
        state = "active"
    return {
        "token_sha256": record.token_hash.hex(),
        "jti": record.jti,
        "token_type": record.kind,
        "client_id": record.client_id,
        "scope": format_scope(record.scope) if record.scope else "",
        "aud": list(record.aud),
        "sub": record.sub,
        "username": record.username,
        "grant_id": record.grant_id,
        "iat": record.iat,
        "nbf": record.nbf,
        "exp": record.exp,
        "revoked_at": record.revoked_at,
        "state": state,
        "active": state == "active",
    }


async def tail_events(store: Store, *, after: int | None = None, limit: int = 100) -> list[Event]:
    """Events after ``after``, oldest first; without it, the latest ``limit`` events."""
    if not 1 <= limit <= MAX_EVENTS:
        raise ConfigurationError(f"limit must be 1..{MAX_EVENTS}")
    if after is None:
        after = max(0, await store.latest_event_id() - limit)
    elif after < 0:
        raise ConfigurationError("after must be an event id (0 or more)")
    return await store.events_after(after, limit)


def event_view(event: Event) -> dict[str, Any]:
    return {"id": event.id, "type": event.type, "created_at": event.created_at, **event.payload}
