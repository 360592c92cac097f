"""Records the protocol logic works on: clients, resource servers and tokens.

Records are frozen dataclasses with rich values inside (frozensets, tuples); conversion
to and from the wire or the database happens at the edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
AUTH_METHODS: tuple[AuthMethod, ...] = (
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",  # RFC 7523 §2.2: a JWT signed with a key from the client's JWKS
    "none",  # a public client (RFC 6749 §2.1; RFC 7591 §2): identified, not authenticated
)
# The methods that authenticate a caller; "none" only identifies one.
CONFIDENTIAL_AUTH_METHODS: tuple[AuthMethod, ...] = AUTH_METHODS[:3]
GrantType = Literal["client_credentials", "authorization_code", "refresh_token"]
GRANT_TYPES: tuple[GrantType, ...] = ("client_credentials", "authorization_code", "refresh_token")

# Who may see a token at introspection, per resource server (RFC 7662 §2.2, §4):
#   audience - the resource server's identifier is in the token's `aud` (always on)
#   owner    - the token was issued to one of the resource server's own introspecting clients
#   any      - every token (for trusted infrastructure only)
IntrospectionRule = Literal["audience", "owner", "any"]
INTROSPECTION_RULES: tuple[IntrospectionRule, ...] = ("audience", "owner", "any")

# The access tokens a client gets: opaque (introspection only) or RFC 9068 JWTs (validated
# locally, and recorded so that introspection and revocation work for them too).
TokenFormat = Literal["opaque", "jwt"]
TOKEN_FORMATS: tuple[TokenFormat, ...] = ("opaque", "jwt")

# How a resource server's introspection answers are shaped (RFC 9701):
#   json         - plain JSON (RFC 7662); an Accept header asking for a JWT is disregarded
#   jwt          - a signed JWT when Accept asks for application/token-introspection+jwt
#   jwt-required - only signed JWTs; a request that does not accept one gets 406
IntrospectionResponse = Literal["json", "jwt", "jwt-required"]
INTROSPECTION_RESPONSES: tuple[IntrospectionResponse, ...] = ("json", "jwt", "jwt-required")

# The claims RFC 7662 §2.2 defines besides `active`, and `cnf` (RFC 9449 §6.2, RFC 8705
# §3.2: the key a sender-constrained token is bound to); the default allow-list. A bound
# token is inactive for a resource server that may not see `cnf` (core/introspection.py).
RFC7662_CLAIMS: tuple[str, ...] = (
    "scope",
    "client_id",
    "username",
    "token_type",
    "exp",
    "iat",
    "nbf",
    "sub",
    "aud",
    "iss",
    "jti",
    "cnf",
)


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    secret_hash: bytes
    auth_method: AuthMethod
    grant_types: frozenset[str]
    scopes: frozenset[str]
    default_audience: tuple[str, ...]
    access_token_ttl: int
    enabled: bool
    created_at: int
    updated_at: int
    token_format: TokenFormat = "opaque"  # noqa: S105 - a format name, not a secret
    # private_key_jwt: the client's public keys, a JWK Set document (RFC 7517 §5) as JSON.
    jwks: str | None = None
    # authorization_code: the registered redirect URIs, matched exactly (RFC 9700 §2.1).
    redirect_uris: tuple[str, ...] = ()
    # refresh_token: idle lifetime (each refresh token's own) and absolute lifetime (of the
    # grant: no refresh token of it outlives created_at + max), in seconds.
    refresh_token_ttl: int = 14 * 86400
    refresh_token_max_ttl: int = 30 * 86400
    # OpenID Connect (docs/oidc.md): the JWS algorithm of its ID tokens (OIDC Registration
    # §2; None: the active signing key's), where RP-initiated logout may send the browser
    # back to (matched exactly; RP-Initiated Logout §3.1), and whether that logout also
    # revokes the client's grants for the user.
    id_token_signed_response_alg: str | None = None
    post_logout_redirect_uris: tuple[str, ...] = ()
    logout_revokes_grants: bool = False
    # RFC 9449 §5: token requests without a DPoP proof are refused (--require-dpop).
    require_dpop: bool = False

    @property
    def is_public(self) -> bool:
        """A public client (RFC 6749 §2.1) holds no credentials: it is only identified."""
        return self.auth_method == "none"


@dataclass(frozen=True, slots=True)
class ResourceServer:
    identifier: str
    name: str
    introspection_clients: frozenset[str]
    claims: frozenset[str] = frozenset(RFC7662_CLAIMS)
    rules: frozenset[str] = frozenset({"audience"})
    created_at: int = 0
    updated_at: int = 0
    introspection_response: IntrospectionResponse = "json"


# A signing key's life (RFC 7517 keys of the AS, for RFC 9068 tokens and RFC 9701 answers):
#   next    - published in the JWKS ahead of use, so caches know it before it signs
#   active  - signs new tokens and introspection responses; exactly one at a time
#   retired - signs nothing (its private part is gone); published until not_after
SigningKeyState = Literal["next", "active", "retired"]
SigningKeyUse = Literal["all", "id_token"]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of the AS's signing keys as stored: the private JWK only encrypted (see
    core/signing_keys.py), and none at all once retired."""

    kid: str
    alg: str
    state: SigningKeyState
    public_jwk: str  # JSON
    private_jwk_enc: bytes | None = field(repr=False)
    created_at: int
    activated_at: int | None = None
    retired_at: int | None = None
    not_after: int = 0  # a retired key is published while now < not_after
    # "all": the key (the one active key) signs access tokens, introspection answers and
    # ID tokens; "id_token": it signs only ID tokens of its algorithm, for clients that ask
    # for another algorithm than the active key's (OIDC Registration §2).
    use_for: SigningKeyUse = "all"

    def is_published(self, now: int) -> bool:
        return self.state != "retired" or now < self.not_after


@dataclass(frozen=True, slots=True)
class User:
    """A person who signs in. ``user_id`` is the stable subject (``sub``); ``username`` is
    what they type (stored lower-cased) and what introspection reports as ``username``."""

    user_id: str
    username: str
    password_hash: str = field(repr=False)  # argon2id, PHC string format
    enabled: bool
    created_at: int
    updated_at: int
    roles: frozenset[str] = frozenset()  # "admin": the admin console and API (docs/admin.md)
    # Standard claims (OIDC Core §5.1) for the profile and email scopes; None: not set.
    name: str | None = None
    preferred_username: str | None = None
    email: str | None = None
    email_verified: bool = False


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in browser: the cookie value lives only in the browser, its SHA-256 here."""

    session_hash: bytes = field(repr=False)
    user_id: str
    created_at: int  # the time the user authenticated (auth_time)
    expires_at: int


@dataclass(frozen=True, slots=True)
class Grant:
    """What one user allowed one client through the authorization code flow: the unit the
    cascade revokes (its code, every access and refresh token issued from it)."""

    grant_id: str
    client_id: str
    user_id: str
    username: str
    scope: frozenset[str]
    aud: tuple[str, ...]
    created_at: int
    auth_time: int
    expires_at: int  # absolute lifetime: no refresh token of this grant lives past it
    revoked_at: int | None = None
    # The claims request parameter (OIDC Core §5.5), normalised (core/oidc.py); "" for none.
    claims: str = ""

    def is_live(self, now: int) -> bool:
        return self.revoked_at is None and now < self.expires_at


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    """An authorization code (RFC 6749 §4.1.2) as stored: by SHA-256, single use, short
    lived, bound to its client, redirect URI and PKCE challenge (RFC 7636 §4.4)."""

    code_hash: bytes = field(repr=False)
    grant_id: str
    client_id: str
    redirect_uri: str
    code_challenge: str  # S256 only: BASE64URL(SHA256(code_verifier))
    created_at: int
    expires_at: int
    used_at: int | None = None
    nonce: str | None = None  # OIDC Core §3.1.2.1: echoed in the ID token
    # RFC 9449 §10: the DPoP key thumbprint the authorization request named (dpop_jkt).
    dpop_jkt: str | None = None


@dataclass(slots=True)
class TokenRecord:
    """A token as stored: by hash, never by value. Treat as immutable.

    Not ``frozen``: a frozen dataclass builds itself through ``object.__setattr__`` and
    its ``__init__`` measured 10x slower (3.3 µs against 0.33 µs for 13 fields), and one
    record is built on every introspection.
    """

    token_hash: bytes
    kind: str
    client_id: str
    scope: frozenset[str]
    aud: tuple[str, ...]
    iat: int
    nbf: int
    exp: int
    jti: str
    sub: str | None = None
    username: str | None = None
    grant_id: str | None = None
    revoked_at: int | None = None
    # Sender constraint (RFC 9449 §6, RFC 8705 §3.1): the RFC 7638 thumbprint of the DPoP
    # key, or the SHA-256 thumbprint of the client certificate; None for a bearer token.
    cnf_jkt: str | None = None
    cnf_x5t: str | None = None

    def is_active(self, now: int) -> bool:
        # Expired the moment `exp` is reached (RFC 7519 §4.1.4: "on or after").
        return self.revoked_at is None and self.nbf <= now < self.exp


# How a client came to be (docs/registration.md): made by an operator (the CLI), registered
# over HTTP (RFC 7591) with an initial access token or under the open policy, or known by
# its client ID metadata document (draft-ietf-oauth-client-id-metadata-document).
RegistrationMethod = Literal["initial-access-token", "open", "metadata-document"]


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """What dynamic registration (RFC 7591) adds to a client: how and when it registered,
    its registration access token (RFC 7592 §3; SHA-256 only), the metadata it registered
    (JSON, echoed in RFC 7591 §3.2.1 / RFC 7592 §3 answers), and when it was first used
    (a token issued; None: never, and an open registration then expires)."""

    client_id: str
    method: RegistrationMethod
    registered_at: int
    access_token_hash: bytes = field(repr=False)
    metadata: str
    used_at: int | None = None


@dataclass(frozen=True, slots=True)
class InitialAccessToken:
    """An operator-made credential for the registration endpoint (RFC 7591 §3): stored as
    SHA-256, good until ``expires_at`` and for ``uses_left`` registrations (None: any)."""

    token_id: str
    token_hash: bytes = field(repr=False)
    created_at: int
    expires_at: int
    uses_left: int | None = None
    description: str = ""
