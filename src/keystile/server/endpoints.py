"""The OAuth endpoints: token (RFC 6749 §4.4), introspection (RFC 7662), revocation (RFC 7009).

Each handler parses the form, authenticates the caller, calls the core and renders the
result. One class per family, combined here:

- ``endpoint_base.py``: the request record, the shared request cycle, caller caches;
- ``client_authentication.py``: client secrets, private_key_jwt, failure throttling;
- ``token_endpoint.py``, ``introspection_endpoint.py``, ``revocation_endpoint.py``.
"""

from __future__ import annotations

from keystile.server.endpoint_base import (
    Call,
    CallerCache,
    Result,
    SignedAnswer,
    credential_key,
)
from keystile.server.introspection_endpoint import IntrospectionEndpoint
from keystile.server.revocation_endpoint import RevocationEndpoint
from keystile.server.token_endpoint import TokenEndpoint, token_response

__all__ = [
    "Call",
    "CallerCache",
    "OAuthEndpoints",
    "Result",
    "SignedAnswer",
    "credential_key",
    "token_response",
]


class OAuthEndpoints(TokenEndpoint, IntrospectionEndpoint, RevocationEndpoint):
    """The three OAuth endpoints over one store."""
