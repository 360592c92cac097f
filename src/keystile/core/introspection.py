"""Token introspection (RFC 7662): is a token active, and what may the caller see?"""

from __future__ import annotations

from typing import Any

from keystile.core.models import ResourceServer, TokenRecord
from keystile.core.scope import format_scope


def may_see(caller: ResourceServer, record: TokenRecord) -> bool:
    """The introspection policy: may this resource server learn about this token? (§4)"""
    rules = caller.rules
    if "any" in rules:
        return True
    if caller.identifier in record.aud:
        return True
    return "owner" in rules and record.client_id in caller.introspection_clients


def introspection_response(
    record: TokenRecord | None, *, caller: ResourceServer, now: int, issuer: str
) -> dict[str, Any]:
    """The RFC 7662 §2.2 response body.

    Unknown, expired, revoked and not-visible tokens all give exactly ``{"active": false}``,
    so the caller cannot tell which (§2.2, §4).
    """
    if record is None or not record.is_active(now) or not may_see(caller, record):
        return {"active": False}  # a fresh dict: callers may add to what they get
    allowed = caller.claims
    full: dict[str, Any] = {
        "scope": format_scope(record.scope) if record.scope else None,
        "client_id": record.client_id,
        "username": record.username,
        "token_type": "Bearer" if record.kind == "access_token" else "refresh_token",
        "exp": record.exp,
        "iat": record.iat,
        "nbf": record.nbf,
        "sub": record.sub,
        # A single audience is a string, several an array (RFC 7519 §4.1.3).
        "aud": (record.aud[0] if len(record.aud) == 1 else list(record.aud)) or None,
        "iss": issuer,
        "jti": record.jti,
    }
    body: dict[str, Any] = {"active": True}
    for name, value in full.items():
        if value is not None and name in allowed:
            body[name] = value
    return body
