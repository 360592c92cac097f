"""Administration of dynamic client registration (docs/registration.md): initial access
tokens (RFC 7591 §3) and how each client was registered. The operations behind the CLI."""

from __future__ import annotations

import secrets
from typing import Any

from keystile.clock import Clock
from keystile.core.models import InitialAccessToken
from keystile.core.tokens import new_initial_access_token, token_hash
from keystile.errors import ConfigurationError
from keystile.store.base import Store

MAX_INITIAL_TOKEN_TTL = 365 * 86400
CLI_METHOD = "cli"  # how an operator-made client shows in `keystile client list`


async def create_initial_access_token(
    store: Store,
    clock: Clock,
    *,
    ttl: int = 86400,
    uses: int | None = 1,
    description: str = "",
) -> tuple[InitialAccessToken, str]:
    """Make an initial access token; returns it with its value (shown once, stored as
    SHA-256). ``uses=None``: any number of registrations until it expires."""
    if not 60 <= ttl <= MAX_INITIAL_TOKEN_TTL:
        raise ConfigurationError(f"lifetime must be 60..{MAX_INITIAL_TOKEN_TTL} seconds")
    if uses is not None and uses < 1:
        raise ConfigurationError("uses must be at least 1 (or unlimited)")
    value = new_initial_access_token()
    now = clock.now()
    token = InitialAccessToken(
        token_id="iat_" + secrets.token_hex(6),
        token_hash=token_hash(value),
        created_at=now,
        expires_at=now + ttl,
        uses_left=uses,
        description=description,
    )
    await store.create_initial_access_token(token)
    return token, value


async def revoke_initial_access_token(store: Store, token_id: str) -> None:
    """Delete an initial access token: it registers nothing more. NotFound if unknown."""
    await store.delete_initial_access_token(token_id)


def initial_token_view(token: InitialAccessToken, now: int) -> dict[str, Any]:
    """An initial access token as JSON for the CLI: never its value or digest."""
    live = now < token.expires_at and (token.uses_left is None or token.uses_left > 0)
    return {
        "token_id": token.token_id,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "uses_left": token.uses_left,
        "description": token.description,
        "live": live,
    }


async def registration_methods(store: Store) -> dict[str, str]:
    """How each registered client came to be, by client id (others: made with the CLI)."""
    return {r.client_id: r.method for r in await store.list_registrations()}
