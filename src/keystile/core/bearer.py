"""Bearer token usage on the resource side (RFC 6750): reading the header, building challenges."""

from __future__ import annotations

import re

from keystile.errors import InvalidRequest

# b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="  (RFC 6750 §2.1)
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 8192


def bearer_token(authorization: str | None) -> str | None:
    """The token in an ``Authorization: Bearer`` header; None if the request carries none.

    None, too, for an empty header, one with another scheme, or ``Bearer`` with nothing
    after it: the request lacks any authentication information, which RFC 6750 §3.1 answers
    with a bare challenge. A bearer credential that is not well formed is an
    ``invalid_request`` (RFC 6750 §3.1).
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    # Auth schemes are case-insensitive (RFC 9110 §11.1).
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
        raise InvalidRequest("malformed bearer token")
    return token


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    *,
    realm: str | None = None,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
    resource_metadata: str | None = None,
) -> str:
    """A ``WWW-Authenticate: Bearer …`` value (RFC 6750 §3; RFC 9728 §5.1)."""
    params: list[str] = []
    if realm:
        params.append(f"realm={_quote(realm)}")
    if error:
        params.append(f"error={_quote(error)}")
    if description:
        params.append(f"error_description={_quote(description)}")
    if scope:
        params.append(f"scope={_quote(scope)}")
    if resource_metadata:
        params.append(f"resource_metadata={_quote(resource_metadata)}")
    return "Bearer " + ", ".join(params) if params else "Bearer"
