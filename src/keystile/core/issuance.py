"""Access token requests (RFC 6749 §4.4 client credentials; RFC 8707 resource indicators)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from keystile.core.models import Client, TokenRecord
from keystile.core.scope import parse_scope
from keystile.core.tokens import new_jti
from keystile.errors import InvalidScope, InvalidTarget, UnauthorizedClient


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What an access token will carry, decided before anything is stored."""

    client_id: str
    scope: frozenset[str]
    aud: tuple[str, ...]
    ttl: int


def check_resource_uri(value: str) -> str:
    """RFC 8707 §2: an absolute URI without a fragment."""
    try:
        parts = urlsplit(value)
    except ValueError:
        raise InvalidTarget("resource is not a valid URI") from None
    # An absolute URI (RFC 3986 §4.3) has a scheme and a hier-part: https://api.example.com
    # or urn:example:api alike. No whitespace: audiences are stored space-separated.
    if (
        not parts.scheme
        or not (parts.netloc or parts.path)
        or (parts.scheme in ("http", "https") and not parts.hostname)
        or "#" in value
        or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)
    ):
        raise InvalidTarget("resource must be an absolute URI without a fragment (RFC 8707)")
    return value


def client_credentials_grant(
    client: Client,
    *,
    requested_scope: str | None,
    resources: list[str],
    known_resources: frozenset[str],
) -> TokenGrant:
    """Decide scope and audience of a client_credentials token (RFC 6749 §4.4.2, §3.3)."""
    if "client_credentials" not in client.grant_types:
        raise UnauthorizedClient("client is not allowed to use the client_credentials grant")
    if requested_scope is None:
        scope = client.scopes  # §3.3: the server may apply a pre-defined default
    else:
        scope = parse_scope(requested_scope)
        extra = scope - client.scopes
        if extra:
            # Not echoing the extra values: request input may hold anything, even a secret
            # pasted into the wrong field, and error descriptions are logged.
            raise InvalidScope("requested scope exceeds what this client may have")
    audience = requested_audience(client, resources, known_resources)
    return TokenGrant(client.client_id, scope, audience, client.access_token_ttl)


def requested_audience(
    client: Client, resources: list[str], known_resources: frozenset[str]
) -> tuple[str, ...]:
    """RFC 8707 §2: the audience ``resource`` names (registered resource servers only, in
    order, without repeats); none given means the client's default audience."""
    if not resources:
        return client.default_audience
    aud: list[str] = []
    for resource in resources:
        check_resource_uri(resource)
        if resource not in known_resources:
            # RFC 8707 §2: an unknown or unacceptable resource is invalid_target.
            raise InvalidTarget("resource is not a registered resource server")
        if resource not in aud:
            aud.append(resource)
    return tuple(aud)


def new_token_record(
    kind: str,
    client_id: str,
    scope: frozenset[str],
    aud: tuple[str, ...],
    *,
    now: int,
    exp: int,
    digest: bytes,
    sub: str,
    username: str | None = None,
    grant_id: str | None = None,
) -> TokenRecord:
    """A new token as it is stored (by ``digest``), valid from ``now`` until ``exp``, with
    a fresh jti; every grant builds its access and refresh tokens here."""
    return TokenRecord(
        token_hash=digest,
        kind=kind,
        client_id=client_id,
        scope=scope,
        aud=aud,
        iat=now,
        nbf=now,
        exp=exp,
        jti=new_jti(),
        sub=sub,
        username=username,
        grant_id=grant_id,
    )
