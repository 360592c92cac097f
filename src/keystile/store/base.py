"""The store protocol: where clients, resource servers, tokens and events live.

Callers depend on this protocol only; the SQLite store is the embedded default and a
PostgreSQL store implements the same methods. Every method may raise StoreUnavailable,
which the server answers with 503 — never with a wrong result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from keystile.core.models import (
    AuthorizationCode,
    Client,
    ClientRegistration,
    Grant,
    InitialAccessToken,
    ResourceServer,
    Session,
    SigningKey,
    TokenRecord,
    User,
)

# Event types written to the durable log (ARCHITECTURE.md, decision 4).
TOKEN_REVOKED = "token_revoked"  # noqa: S105 - an event name
CLIENT_DISABLED = "client_disabled"
CLIENT_DELETED = "client_deleted"
# Summaries of a cascade (docs/users.md). Each token the cascade revokes also gets its own
# token_revoked event in the same transaction, so a consumer needs only those to be exact.
GRANT_REVOKED = "grant_revoked"
USER_SESSIONS_REVOKED = "user_sessions_revoked"

# Why a grant was revoked (the `reason` of grant_revoked events).
REFRESH_TOKEN_REVOKED = "refresh_token_revoked"  # noqa: S105 - a reason, not a secret
CODE_REPLAYED = "code_replayed"
REFRESH_TOKEN_REPLAYED = "refresh_token_replayed"  # noqa: S105 - a reason, not a secret
RP_LOGOUT = "rp_logout"  # RP-initiated logout of a client that revokes its grants
# Why all of a user's grants were revoked (the `reason` of user_sessions_revoked events).
USER_REVOKE_SESSIONS = "revoke_sessions"
USER_DISABLED = "user_disabled"
USER_DELETED = "user_deleted"
# An operator's change through the admin API (docs/admin.md): who, what, from where. Never
# streamed to resource servers (server/events.py); read with the admin API's event tail.
ADMIN_ACTION = "admin_action"
# Why a client's tokens were revoked without disabling it (admin API, "revoke by client").
ADMIN_REVOKE = "admin_revoke"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    created_at: int
    payload: dict[str, Any]
    written_ms: int | None = None  # Unix time in ms of the write (None: before migration 10)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    tokens: int
    events: int


@dataclass(frozen=True, slots=True)
class CodeRedemption:
    """What redeeming an authorization code found. ``outcome``:

    - ``ok``: the code was unused and live; it is used now.
    - ``unknown``: no such code.
    - ``expired``: past its expiry (kept unused).
    - ``revoked``: its grant was revoked (user or client disabled, sessions revoked, ...).
    - ``replayed``: used before; its grant and every token from it are revoked now.
    """

    outcome: str
    code: AuthorizationCode | None = None
    grant: Grant | None = None


@dataclass(frozen=True, slots=True)
class Rotation:
    """What rotating a refresh token did. ``outcome``: ``ok`` (rotated, new tokens stored),
    ``unknown``, ``expired``, ``revoked`` (token or grant), or ``replayed`` (it had been
    rotated already: its grant and all its tokens are revoked now)."""

    outcome: str
    tokens_revoked: int = 0


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token to store with a grant: opaque (``kid`` None) or a JWT signed by ``kid``,
    which then stays published until ``not_after`` (as for insert_jwt_token)."""

    record: TokenRecord
    kid: str | None = None
    not_after: int = 0


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
    async def claim_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there already; the stored value.
        Processes racing to create a shared secret all end up with the same one."""
        ...

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
    async def find_token_by_jti(self, jti: str) -> TokenRecord | None:
        """A token by its ``jti`` (unique, indexed), for the admin API's lookup."""
        ...

    async def revoke_client_tokens(self, client_id: str, now: int) -> int:
        """Revoke every live token and grant of a client, each token with its
        token_revoked event, leaving the client enabled; tokens revoked."""
        ...

    # -- events and housekeeping ------------------------------------------------------------
    async def append_event(self, type_: str, now: int, payload: dict[str, Any]) -> None:
        """Write one event to the log (audit records of the admin API)."""
        ...

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

    async def record_dpop_jti(self, jkt: str, jti: str, expires_at: int) -> bool:
        """Remember a DPoP proof's jti (per key) until ``expires_at``; False if seen before
        (RFC 9449 §11.1). Shared by every process on the store."""
        ...

    # -- users, sessions, consent (issue 3) ---------------------------------------------------
    async def create_user(self, user: User) -> None:
        """Conflict if the user id or the username exists."""
        ...

    async def get_user(self, user_id: str) -> User | None: ...
    async def get_user_by_name(self, username: str) -> User | None: ...
    async def list_users(self) -> list[User]: ...
    async def update_user(self, user: User) -> None:
        """Store a changed username or password hash; NotFound, or Conflict on a taken name."""
        ...

    async def set_user_enabled(self, user_id: str, enabled: bool, now: int) -> int:
        """Enable or disable; disabling ends the user's sessions and revokes all their
        grants and tokens in the same transaction (events included). Returns tokens revoked."""
        ...

    async def delete_user(self, user_id: str, now: int) -> int:
        """Revoke everything of the user (as disabling does), then delete them."""
        ...

    async def revoke_user_sessions(self, user_id: str, now: int) -> int:
        """End every session and revoke every grant and token of the user; NotFound."""
        ...

    async def create_session(self, session: Session) -> bool:
        """Store a session only while its user exists and is enabled (checked in the same
        transaction, so a disable racing a sign-in never leaves a session behind)."""
        ...

    async def get_session(self, session_hash: bytes, now: int) -> tuple[Session, User] | None:
        """A live session and its user, only while the user is enabled."""
        ...

    async def delete_session(self, session_hash: bytes) -> None: ...
    async def get_consent(self, user_id: str, client_id: str) -> frozenset[str] | None: ...
    async def set_consent(
        self, user_id: str, client_id: str, scope: frozenset[str], now: int
    ) -> None: ...

    # -- authorization code grant and refresh tokens (RFC 6749 §4.1, §6; RFC 9700) ----------
    async def create_authorization_code(
        self, grant: Grant, code: AuthorizationCode, *, session_hash: bytes | None = None
    ) -> bool:
        """Store a new grant with its (only) code, in one transaction. Conflict if the code
        has a nonce that a live code of the same client carries (OIDC Core §15.5.2). With
        ``session_hash`` (the session the user allowed in), only while that session of the
        grant's user is live and the user enabled; False otherwise, storing nothing. Ordered
        against the user cascades, so no grant is stored that one of them missed."""
        ...

    async def redeem_authorization_code(self, code_hash: bytes, now: int) -> CodeRedemption:
        """Use a code once, atomically; a second use revokes its grant (see CodeRedemption)."""
        ...

    async def get_grant(self, grant_id: str) -> Grant | None: ...
    async def issue_grant_tokens(self, grant_id: str, tokens: list[NewToken], now: int) -> bool:
        """Store tokens of a grant, in one transaction, only while the grant is live
        (not revoked, not past its absolute expiry); False otherwise, storing nothing."""
        ...

    async def rotate_refresh_token(
        self, token_hash: bytes, tokens: list[NewToken], now: int
    ) -> Rotation:
        """Exchange a refresh token for ``tokens``, atomically: only a live, never rotated
        token of a live grant is rotated; a rotated one is a replay (see Rotation)."""
        ...

    async def revoke_grant(self, grant_id: str, now: int, reason: str) -> int:
        """Revoke a grant and all its live tokens (events included); tokens revoked."""
        ...

    async def revoke_user_client_grants(
        self, user_id: str, client_id: str, now: int, reason: str
    ) -> int:
        """Revoke every live grant of the user for the client, as revoke_grant does, in one
        transaction (RP-initiated logout, docs/oidc.md); tokens revoked."""
        ...

    # -- dynamic client registration (RFC 7591, RFC 7592; docs/registration.md) ---------------
    async def register_client(
        self, client: Client, registration: ClientRegistration, *, cap: int | None = None
    ) -> bool:
        """Store a registered client with its registration record, in one transaction. With
        ``cap``, only while fewer than ``cap`` clients of the same method exist (checked in
        that transaction); False otherwise, storing nothing. Conflict on a taken id."""
        ...

    async def get_registration(self, client_id: str) -> ClientRegistration | None: ...
    async def list_registrations(self) -> list[ClientRegistration]: ...
    async def update_registration(self, client: Client, metadata: str) -> None:
        """Store a registered client's new settings and metadata together; NotFound."""
        ...

    async def expire_registrations(
        self, method: str, registered_before: int, now: int, *, keep_disabled: bool = False
    ) -> int:
        """Delete the never-used clients of ``method`` registered before
        ``registered_before`` (as delete_client does, events included); how many. With
        ``keep_disabled``, clients an operator disabled stay (a disabled client known by its
        metadata document is how its URL stays blocked)."""
        ...

    async def create_initial_access_token(self, token: InitialAccessToken) -> None: ...
    async def use_initial_access_token(self, token_hash: bytes, now: int) -> bool:
        """Spend one use of a live initial access token, atomically; False if it is unknown,
        expired or used up."""
        ...

    async def list_initial_access_tokens(self) -> list[InitialAccessToken]: ...
    async def delete_initial_access_token(self, token_id: str) -> None:
        """NotFound for an unknown id."""
        ...

    # -- dashboard counters of each AS process (server/instance_stats.py) -------------------
    async def publish_stats(
        self, instance_id: str, now: int, stats: str, stale_before: int
    ) -> None:
        """Store this process's counters (JSON) as of ``now``, and delete the rows of
        processes not heard of since before ``stale_before``."""
        ...

    async def live_stats(self, since: int) -> list[tuple[str, int, str]]:
        """(instance id, updated at, JSON) of every process heard of since ``since``."""
        ...

    async def drop_stats(self, instance_id: str) -> None:
        """Forget a process's counters (it stops cleanly)."""
        ...
