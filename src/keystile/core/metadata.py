"""Authorization server metadata (RFC 8414 §2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keystile.core.dpop_scheme import DPOP_ALGS
from keystile.core.models import AUTH_METHODS, CONFIDENTIAL_AUTH_METHODS, GRANT_TYPES

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a URL path, not a secret
INTROSPECTION_PATH = "/oauth2/introspect"
REVOCATION_PATH = "/oauth2/revoke"
EVENTS_PATH = "/events"
JWKS_PATH = "/oauth2/jwks"  # RFC 8414 §2 jwks_uri: the keys our JWTs are signed with
METADATA_PATH = "/.well-known/oauth-authorization-server"
AUTHORIZATION_PATH = "/oauth2/authorize"
REGISTRATION_PATH = "/oauth2/register"  # RFC 7591 §3; RFC 7592 §2: REGISTRATION_PATH/<id>
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"  # OIDC Discovery §4
USERINFO_PATH = "/oauth2/userinfo"  # OIDC Core §5.3
END_SESSION_PATH = "/oauth2/logout"  # RP-Initiated Logout §2


def server_metadata(
    issuer: str,
    *,
    scopes: frozenset[str],
    docs_url: str | None = None,
    signing_algs: Sequence[str] = (),
    auth_signing_algs: Sequence[str] = (),
    registration: bool = False,
    client_id_metadata_document: bool = False,
    certificate_bound: bool = False,
) -> dict[str, Any]:
    base = issuer.rstrip("/")
    # "none": public clients redeem codes and refresh tokens and revoke their own tokens;
    # only confidential clients introspect.
    methods = list(AUTH_METHODS)
    body: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": base + AUTHORIZATION_PATH,
        "token_endpoint": base + TOKEN_PATH,
        "introspection_endpoint": base + INTROSPECTION_PATH,
        "revocation_endpoint": base + REVOCATION_PATH,
        "grant_types_supported": list(GRANT_TYPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        # RFC 7636 §6.2: S256 only; plain is refused (RFC 9700 §2.1.1).
        "code_challenge_methods_supported": ["S256"],
        # RFC 9207 §3: every authorization response carries iss.
        "authorization_response_iss_parameter_supported": True,
        "scopes_supported": sorted(scopes),
        "token_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
        "revocation_endpoint_auth_methods_supported": methods,
        # An extension (RFC 8414 §2 allows more members): where resource servers subscribe
        # to revocation events (Server-Sent Events, HTTP Basic as an introspecting client).
        "keystile_events_endpoint": base + EVENTS_PATH,
    }
    if auth_signing_algs:
        # RFC 8414 §2: the JWS algorithms accepted for private_key_jwt, per endpoint.
        algs = list(auth_signing_algs)
        body["token_endpoint_auth_signing_alg_values_supported"] = algs
        body["introspection_endpoint_auth_signing_alg_values_supported"] = algs
        body["revocation_endpoint_auth_signing_alg_values_supported"] = algs
    body["jwks_uri"] = base + JWKS_PATH
    if signing_algs:
        # RFC 9701 §7: how signed introspection answers (and our access tokens) are signed.
        body["introspection_signing_alg_values_supported"] = list(signing_algs)
    # RFC 9449 §5.1: the algorithms accepted in DPoP proofs.
    body["dpop_signing_alg_values_supported"] = list(DPOP_ALGS)
    # RFC 8705 §3.3: tokens are bound to the client certificate when one is presented.
    body["tls_client_certificate_bound_access_tokens"] = certificate_bound
    if registration:
        # RFC 8414 §2: published only while a registration policy is on.
        body["registration_endpoint"] = base + REGISTRATION_PATH
    if client_id_metadata_document:
        # draft-ietf-oauth-client-id-metadata-document §6: an https client_id URL works here.
        body["client_id_metadata_document_supported"] = True
    if docs_url:
        body["service_documentation"] = docs_url
    return body


def openid_configuration(
    metadata: dict[str, Any], *, id_token_algs: Sequence[str], claims: Sequence[str]
) -> dict[str, Any]:
    """OpenID Provider metadata (OIDC Discovery 1.0 §3): the RFC 8414 document (same issuer,
    same jwks_uri) plus what an RP needs for OpenID Connect on the code flow."""
    base = str(metadata["issuer"]).rstrip("/")
    return {
        **metadata,
        "userinfo_endpoint": base + USERINFO_PATH,
        "end_session_endpoint": base + END_SESSION_PATH,  # RP-Initiated Logout §2.1
        "scopes_supported": sorted({*metadata["scopes_supported"], "openid", "profile", "email"}),
        "subject_types_supported": ["public"],  # sub is the user's stable id everywhere
        "id_token_signing_alg_values_supported": list(id_token_algs),
        "userinfo_signing_alg_values_supported": [],  # plain JSON answers only
        "claims_supported": list(claims),
        "claims_parameter_supported": True,  # OIDC Core §5.5
        "request_parameter_supported": False,
        # Discovery §3: this one defaults to true, so say it.
        "request_uri_parameter_supported": False,
        "prompt_values_supported": ["none", "login", "consent"],
        "claim_types_supported": ["normal"],
    }
