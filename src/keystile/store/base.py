"""The store protocol: where clients, resource servers, tokens and events live.

Callers depend on this protocol only; the SQLite store is the embedded default and a
PostgreSQL store implements the same methods. Every method may raise StoreUnavailable,
which the server answers with 503 — never with a wrong result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from keystile.core.models import Client, ResourceServer, SigningKey, TokenRecord

# Event types written to the durable log (ARCHITECTURE.md, decision 4).
TOKEN_REVOKED = "token_revoked"  # noqa: S105 - an event name
CLIENT_DISABLED = "client_disabled"
CLIENT_DELETED = "client_deleted"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    created_at: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PurgeResult:
    tokens: int
    events: int


class NotFound(LookupError):
    """The named client or resource server does not exist."""


class Conflict(ValueError):
    """The change would break a uniqueness rule (an id that exists already, ...)."""


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def schema_version(self) -> int: ...

    # -- meta ---------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None: ...
    async def set_meta(self, key: str, value: str) -> None: ...

    # -- clients ------------------------------------------------------------------------
    async def create_client(self, client: Client) -> None: ...
    async def get_client(self, client_id: str) -> Client | None: ...
    async def list_clients(self) -> list[Client]: ...
    async def update_client(self, client: Client) -> None: ...
    async def set_client_enabled(self, client_id: str, enabled: bool, now: int) -> int: ...
    async def delete_client(self, client_id: str, now: int) -> int: ...

    # -- resource servers -----------------------------------------------------------------
    async def create_resource_server(self, rs: ResourceServer) -> None: ...
    async def get_resource_server(self, identifier: str) -> ResourceServer | None: ...
    async def resource_server_for_client(self, client_id: str) -> ResourceServer | None: ...
    async def list_resource_servers(self) -> list[ResourceServer]: ...
    async def update_resource_server(self, rs: ResourceServer) -> None: ...
    async def delete_resource_server(self, identifier: str) -> None: ...
    async def known_resources(self) -> frozenset[str]: ...
    async def all_scopes(self) -> frozenset[str]: ...

    # -- tokens ---------------------------------------------------------------------------
    async def insert_token(self, record: TokenRecord) -> None: ...
    async def find_token(self, token_hash: bytes) -> TokenRecord | None: ...
    async def lookup_token(self, token_hash: bytes | None) -> tuple[int, TokenRecord | None]:
        """The registry version (a number that changes whenever any client or resource
        server changes, in any process) and the token, observed together."""
        ...

    async def revoke_token(self, token_hash: bytes, client_id: str, now: int) -> bool: ...

    # -- events and housekeeping ------------------------------------------------------------
    async def events_after(self, after_id: int, limit: int = 100) -> list[Event]: ...
    async def latest_event_id(self) -> int:
        """The highest event id ever written (0 if none), even if that row was purged."""
        ...

    async def oldest_event_id(self) -> int | None:
        """The lowest event id still retained, or None when the log is empty."""
        ...

    async def purge(
        self, now: int, *, token_grace: int, event_retention: int, batch: int = 500
    ) -> PurgeResult: ...

    # -- signing keys, JWT access tokens, client assertions (RFC 9068, RFC 7523) ----------------
    async def list_signing_keys(self) -> list[SigningKey]:
        """Every signing key, in creation order (there are only a handful)."""
        ...

    async def insert_signing_key(self, key: SigningKey) -> None:
        """Store a new key; Conflict if its kid exists or it would be a second active key."""
        ...

    async def activate_signing_key(self, kid: str, now: int, *, retired_until: int) -> None:
        """Make a ``next`` key the active one and retire the active key, in one transaction;
        the retired key stays published at least until ``retired_until``.

        NotFound for an unknown kid; Conflict if the key is not ``next``.
        """
        ...

    async def retire_signing_key(self, kid: str, now: int, *, immediately: bool = False) -> None:
        """Retire a ``next`` (or re-retire a retired) key; ``immediately`` also ends its
        publication now. NotFound for an unknown kid; Conflict for the active key."""
        ...

    async def insert_jwt_token(self, record: TokenRecord, kid: str, not_after: int) -> None:
        """Record a JWT access token signed by ``kid`` and, in the same transaction, raise
        that key's ``not_after`` to ``not_after`` if it is below the token's ``exp``."""
        ...

    async def record_assertion_jti(self, client_id: str, jti: str, expires_at: int) -> bool:
        """Remember a client assertion's jti until it expires; False if it was seen before."""
        ...
