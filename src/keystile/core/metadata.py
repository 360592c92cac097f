"""Authorization server metadata (RFC 8414 §2)."""

from __future__ import annotations

from typing import Any

from keystile.core.models import AUTH_METHODS, GRANT_TYPES

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path, not a secret
INTROSPECTION_PATH = "/oauth2/introspect"
REVOCATION_PATH = "/oauth2/revoke"
EVENTS_PATH = "/events"
METADATA_PATH = "/.well-known/oauth-authorization-server"


def server_metadata(
    issuer: str, *, scopes: frozenset[str], docs_url: str | None = None
) -> dict[str, Any]:
    base = issuer.rstrip("/")
    methods = list(AUTH_METHODS)
    body: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": base + TOKEN_PATH,
        "introspection_endpoint": base + INTROSPECTION_PATH,
        "revocation_endpoint": base + REVOCATION_PATH,
        "grant_types_supported": list(GRANT_TYPES),
        # No authorization endpoint yet, so no response type is supported (§2 REQUIRED).
        "response_types_supported": [],
        "scopes_supported": sorted(scopes),
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_methods_supported": methods,
        # An extension (RFC 8414 §2 allows more members): where resource servers subscribe
        # to revocation events (Server-Sent Events, HTTP Basic as an introspecting client).
        "keystile_events_endpoint": base + EVENTS_PATH,
    }
    if docs_url:
        body["service_documentation"] = docs_url
    return body
