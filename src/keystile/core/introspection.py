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


def confirmation(record: TokenRecord) -> dict[str, str] | None:
    """The ``cnf`` claim of a bound token (RFC 7800 §3.1): ``jkt`` for DPoP (RFC 9449 §6.1),
    ``x5t#S256`` for a certificate (RFC 8705 §3.1); None for a bearer token."""
    if record.cnf_jkt is None and record.cnf_x5t is None:
        return None
    cnf: dict[str, str] = {}
    if record.cnf_jkt is not None:
        cnf["jkt"] = record.cnf_jkt
    if record.cnf_x5t is not None:
        cnf["x5t#S256"] = record.cnf_x5t
    return cnf


def token_type(record: TokenRecord) -> str:
    """``token_type`` at introspection: ``DPoP`` for a DPoP-bound access token (RFC 9449
    §6.2), ``Bearer`` for others (a certificate-bound token is still a Bearer token, RFC 8705
    §3), ``refresh_token`` for refresh tokens."""
    if record.kind != "access_token":
        return "refresh_token"
    return "DPoP" if record.cnf_jkt is not None else "Bearer"


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
    cnf = confirmation(record)
    if cnf is not None and "cnf" not in allowed:
        # A resource server that may not see the binding cannot check it, and would take a
        # copied token for a bearer one: to it, a bound token is inactive (fail closed).
        return {"active": False}
    full: dict[str, Any] = {
        "scope": format_scope(record.scope) if record.scope else None,
        "client_id": record.client_id,
        "username": record.username,
        "token_type": token_type(record),
        "exp": record.exp,
        "iat": record.iat,
        "nbf": record.nbf,
        "sub": record.sub,
        # A single audience is a string, several an array (RFC 7519 §4.1.3).
        "aud": (record.aud[0] if len(record.aud) == 1 else list(record.aud)) or None,
        "iss": issuer,
        "jti": record.jti,
        "cnf": cnf,
    }
    body: dict[str, Any] = {"active": True}
    for name, value in full.items():
        if value is not None and name in allowed:
            body[name] = value
    return body
