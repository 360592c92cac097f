"""Tokens for people: the authorization code grant (RFC 6749 §4.1.3, RFC 7636 §4.6) and
the refresh token grant with rotation (RFC 6749 §6, RFC 9700 §4.14).

Pure decisions over records the store returned; the endpoint does the I/O, and the store
re-checks every condition that could change meanwhile inside its own transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from keystile.core import pkce
from keystile.core.issuance import check_resource_uri, new_token_record
from keystile.core.models import AuthorizationCode, Client, Grant, TokenRecord
from keystile.core.scope import parse_scope
from keystile.errors import InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget

# One message for every way a code fails: which check failed is no business of a caller
# holding a code that is not theirs.
BAD_CODE = "the authorization code is invalid, expired, used, or was issued to another client"
BAD_REFRESH = "the refresh token is invalid, expired, revoked, or was issued to another client"


@dataclass(frozen=True, slots=True)
class TokenShape:
    """What the access token of one token response carries."""

    scope: frozenset[str]
    aud: tuple[str, ...]


def check_code(
    code: AuthorizationCode, client: Client, *, redirect_uri: str | None, verifier: str | None
) -> None:
    """RFC 6749 §4.1.3: the code was issued to this client for this redirect URI, and
    RFC 7636 §4.6: the verifier hashes to the challenge. Raises InvalidGrant."""
    if redirect_uri is None:
        raise InvalidRequest("missing parameter: redirect_uri")
    if verifier is None:
        raise InvalidRequest("missing parameter: code_verifier (PKCE is required)")
    # Every check runs, so the time taken does not say which one failed.
    ok = code.client_id == client.client_id
    ok = (code.redirect_uri == redirect_uri) and ok
    ok = pkce.verify(verifier, code.code_challenge) and ok
    if not ok:
        raise InvalidGrant(BAD_CODE)


def token_shape(grant: Grant, *, requested_scope: str | None, resources: list[str]) -> TokenShape:
    """The access token a code exchange or a refresh may get: the grant's scope and audience,
    or less of them when asked (RFC 6749 §6 down-scoping; RFC 8707 §2.2 ``resource`` in the
    token request)."""
    scope = grant.scope
    if requested_scope is not None:
        scope = parse_scope(requested_scope)
        if not scope <= grant.scope:
            # §6: "MUST NOT include any scope not originally granted by the resource owner".
            raise InvalidScope("requested scope exceeds what the user granted")
    aud = grant.aud
    if resources:
        picked: list[str] = []
        for resource in resources:
            check_resource_uri(resource)
            if resource not in grant.aud:
                raise InvalidTarget("resource was not part of the original authorization")
            if resource not in picked:
                picked.append(resource)
        aud = tuple(picked)
    return TokenShape(scope, aud)


def access_record(
    client: Client, grant: Grant, shape: TokenShape, now: int, digest: bytes
) -> TokenRecord:
    """An access token of a user grant: ``sub`` is the user, ``username`` their name."""
    return new_token_record(
        "access_token",
        client.client_id,
        shape.scope,
        shape.aud,
        now=now,
        exp=now + client.access_token_ttl,
        digest=digest,
        sub=grant.user_id,
        username=grant.username,
        grant_id=grant.grant_id,
    )


def refresh_record(client: Client, grant: Grant, now: int, digest: bytes) -> TokenRecord | None:
    """The next refresh token of a grant, or None when the grant's absolute lifetime is
    spent. Its own expiry is the idle lifetime, capped by the grant's (RFC 9700 §4.14.2).
    It carries the grant's whole scope and audience (RFC 6749 §6: the new refresh token's
    scope is that of the one it replaces)."""
    exp = min(now + client.refresh_token_ttl, grant.expires_at)
    if exp <= now:
        return None
    return new_token_record(
        "refresh_token",
        client.client_id,
        grant.scope,
        grant.aud,
        now=now,
        exp=exp,
        digest=digest,
        sub=grant.user_id,
        username=grant.username,
        grant_id=grant.grant_id,
    )
