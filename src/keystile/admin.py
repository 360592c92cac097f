"""Administration of clients, resource servers and users: the operations behind the CLI
and the admin API (docs/admin.md).

Validation lives here, so the CLI, the admin API, the demo setup and tests create and change
records the same way: a rule changed here changes for all of them. Users live in
``user_admin.py``; their functions are re-exported here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from keystile.clock import Clock
from keystile.core.issuance import check_resource_uri
from keystile.core.models import (
    AUTH_METHODS,
    GRANT_TYPES,
    INTROSPECTION_RESPONSES,
    INTROSPECTION_RULES,
    RFC7662_CLAIMS,
    TOKEN_FORMATS,
    Client,
    ResourceServer,
)
from keystile.core.registration import redirect_uri_problem
from keystile.core.scope import parse_scope
from keystile.core.signing_keys import SIGNING_ALGS
from keystile.core.tokens import new_client_secret, token_hash
from keystile.errors import ConfigurationError, OAuthError
from keystile.store.base import NotFound, Store
from keystile.user_admin import (
    ADMIN_ROLE,
    USER_ID_PREFIX,
    USER_ROLES,
    check_password,
    check_username,
    create_user,
    delete_user,
    get_user,
    refuse_yourself,
    revoke_user_sessions,
    set_password,
    set_user_enabled,
    set_user_roles,
    update_user,
    user_view,
)

__all__ = [
    "ADMIN_ROLE",
    "USER_ID_PREFIX",
    "USER_ROLES",
    "check_password",
    "check_username",
    "create_user",
    "delete_user",
    "get_user",
    "refuse_yourself",
    "revoke_user_sessions",
    "set_password",
    "set_user_enabled",
    "set_user_roles",
    "update_user",
    "user_view",
]

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
MAX_TTL = 86400 * 30
# Refresh tokens (docs/cli.md): the idle lifetime of each one, and the absolute lifetime
# of the grant they come from.
MIN_REFRESH_TTL = 60
MAX_REFRESH_TTL = 86400 * 365


def _check_client_id(client_id: str) -> str:
    if not _CLIENT_ID.fullmatch(client_id):
        raise ConfigurationError(
            "client id must be 1-128 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit"
        )
    return client_id


def _scopes(values: Iterable[str]) -> frozenset[str]:
    try:
        return parse_scope(" ".join(values))
    except OAuthError as exc:
        raise ConfigurationError(str(exc.description)) from None


def _audience(values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        try:
            check_resource_uri(value)
        except OAuthError as exc:
            raise ConfigurationError(f"audience {value!r}: {exc.description}") from None
        if value not in out:
            out.append(value)
    return tuple(out)


def _check_identifier(value: str) -> str:
    try:
        check_resource_uri(value)
    except OAuthError as exc:
        raise ConfigurationError(f"resource identifier {value!r}: {exc.description}") from None
    return value


def _check_choice(kind: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigurationError(f"unknown {kind} {value!r}; choose from {', '.join(allowed)}")


def _ttl(value: int) -> int:
    if not 1 <= value <= MAX_TTL:
        raise ConfigurationError(f"access-token lifetime must be 1..{MAX_TTL} seconds")
    return value


async def create_client(
    store: Store,
    clock: Clock,
    *,
    client_id: str,
    name: str | None = None,
    auth_method: str = "client_secret_basic",
    grant_types: Iterable[str] | None = None,
    scopes: Iterable[str] = (),
    default_audience: Iterable[str] = (),
    access_token_ttl: int = 3600,
    token_format: str = "opaque",  # noqa: S107 - a format name, not a secret
    jwks: str | None = None,
    redirect_uris: Iterable[str] = (),
    refresh_token_ttl: int | None = None,
    refresh_token_max_ttl: int | None = None,
    id_token_signed_response_alg: str | None = None,
    post_logout_redirect_uris: Iterable[str] = (),
    logout_revokes_grants: bool = False,
    require_dpop: bool = False,
) -> tuple[Client, str]:
    """Register a client; returns it with its generated secret (shown once, stored hashed).

    A ``private_key_jwt`` client authenticates with its ``jwks`` instead (RFC 7523), and a
    public client (``auth_method="none"``) does not authenticate at all; their generated
    secret is of no use until they switch to a secret method.

    ``grant_types`` defaults to client_credentials for a confidential client without
    redirect URIs, else to authorization_code and refresh_token.
    """
    _check_client_id(client_id)
    _check_choice("auth method", auth_method, AUTH_METHODS)
    _check_choice("token format", token_format, TOKEN_FORMATS)
    jwks = _jwks(jwks)
    if auth_method == "private_key_jwt" and jwks is None:
        raise ConfigurationError("private_key_jwt needs the client's public keys: give --jwks")
    uris = _redirect_uris(redirect_uris)
    if grant_types is None:
        interactive = auth_method == "none" or bool(uris)
        grant_types = ("authorization_code", "refresh_token") if interactive else GRANT_TYPES[:1]
    grants = frozenset(grant_types)
    for grant in grants:
        _check_choice("grant type", grant, GRANT_TYPES)
    secret = new_client_secret()
    now = clock.now()
    client = Client(
        client_id=client_id,
        name=name or client_id,
        secret_hash=token_hash(secret),
        auth_method=auth_method,  # type: ignore[arg-type]
        grant_types=grants,
        scopes=_scopes(scopes),
        default_audience=_audience(default_audience),
        access_token_ttl=_ttl(access_token_ttl),
        enabled=True,
        created_at=now,
        updated_at=now,
        token_format=token_format,  # type: ignore[arg-type]
        jwks=jwks,
        redirect_uris=uris,
        id_token_signed_response_alg=_id_token_alg(id_token_signed_response_alg),
        post_logout_redirect_uris=_redirect_uris(post_logout_redirect_uris),
        logout_revokes_grants=logout_revokes_grants,
        require_dpop=require_dpop,
    )
    refresh: dict[str, Any] = {}
    if refresh_token_ttl is not None:
        refresh["refresh_token_ttl"] = refresh_token_ttl
    if refresh_token_max_ttl is not None:
        refresh["refresh_token_max_ttl"] = refresh_token_max_ttl
    client = _check_client(replace(client, **refresh))
    await store.create_client(client)
    return client, secret


async def get_client(store: Store, client_id: str) -> Client:
    client = await store.get_client(client_id)
    if client is None:
        raise NotFound(f"no client {client_id!r}")
    return client


async def update_client(
    store: Store,
    clock: Clock,
    client_id: str,
    *,
    name: str | None = None,
    auth_method: str | None = None,
    grant_types: Iterable[str] | None = None,
    scopes: Iterable[str] | None = None,
    default_audience: Iterable[str] | None = None,
    access_token_ttl: int | None = None,
    token_format: str | None = None,
    jwks: str | None = None,
    redirect_uris: Iterable[str] | None = None,
    refresh_token_ttl: int | None = None,
    refresh_token_max_ttl: int | None = None,
    id_token_signed_response_alg: str | None = None,
    post_logout_redirect_uris: Iterable[str] | None = None,
    logout_revokes_grants: bool | None = None,
    require_dpop: bool | None = None,
) -> Client:
    """Change the settings given; lists (grant types, redirect URIs, ...) are replaced.
    ``id_token_signed_response_alg=""`` goes back to the default (the active key's)."""
    client = await get_client(store, client_id)
    changes: dict[str, Any] = {"updated_at": clock.now()}
    if name is not None:
        changes["name"] = name
    if auth_method is not None:
        _check_choice("auth method", auth_method, AUTH_METHODS)
        changes["auth_method"] = auth_method
    if grant_types is not None:
        grants = frozenset(grant_types)
        for grant in grants:
            _check_choice("grant type", grant, GRANT_TYPES)
        changes["grant_types"] = grants
    if scopes is not None:
        changes["scopes"] = _scopes(scopes)
    if default_audience is not None:
        changes["default_audience"] = _audience(default_audience)
    if access_token_ttl is not None:
        changes["access_token_ttl"] = _ttl(access_token_ttl)
    if token_format is not None:
        _check_choice("token format", token_format, TOKEN_FORMATS)
        changes["token_format"] = token_format
    if jwks is not None:
        changes["jwks"] = _jwks(jwks)
    if redirect_uris is not None:
        changes["redirect_uris"] = _redirect_uris(redirect_uris)
    if refresh_token_ttl is not None:
        changes["refresh_token_ttl"] = refresh_token_ttl
    if refresh_token_max_ttl is not None:
        changes["refresh_token_max_ttl"] = refresh_token_max_ttl
    if id_token_signed_response_alg is not None:
        changes["id_token_signed_response_alg"] = _id_token_alg(id_token_signed_response_alg)
    if post_logout_redirect_uris is not None:
        changes["post_logout_redirect_uris"] = _redirect_uris(post_logout_redirect_uris)
    if logout_revokes_grants is not None:
        changes["logout_revokes_grants"] = logout_revokes_grants
    if require_dpop is not None:
        changes["require_dpop"] = require_dpop
    updated = replace(client, **changes)
    if updated.auth_method == "private_key_jwt" and updated.jwks is None:
        raise ConfigurationError("private_key_jwt needs the client's public keys: give --jwks")
    _check_client(updated)
    if updated.is_public and not client.is_public:
        rs = await store.resource_server_for_client(client_id)
        if rs is not None:
            raise ConfigurationError(
                f"client {client_id!r} introspects for resource server {rs.identifier!r}: "
                "a public client cannot (it does not authenticate)"
            )
    await store.update_client(updated)
    return updated


def _check_client(client: Client) -> Client:
    """Rules across a client's settings, checked on the client as it will be stored."""
    grants = client.grant_types
    if client.is_public and "client_credentials" in grants:
        raise ConfigurationError(
            "a public client (auth method none) cannot use the client_credentials grant: "
            "it has no credentials"
        )
    if "authorization_code" in grants and not client.redirect_uris:
        raise ConfigurationError(
            "the authorization_code grant needs at least one redirect URI: give --redirect-uri"
        )
    if "refresh_token" in grants and "authorization_code" not in grants:
        raise ConfigurationError(
            "the refresh_token grant needs the authorization_code grant "
            "(refresh tokens come only from it)"
        )
    if not MIN_REFRESH_TTL <= client.refresh_token_ttl <= MAX_REFRESH_TTL:
        raise ConfigurationError(
            f"refresh-token lifetime must be {MIN_REFRESH_TTL}..{MAX_REFRESH_TTL} seconds"
        )
    if not client.refresh_token_ttl <= client.refresh_token_max_ttl <= MAX_REFRESH_TTL:
        raise ConfigurationError(
            f"refresh-token maximum lifetime must be {client.refresh_token_ttl} (the "
            f"refresh-token lifetime)..{MAX_REFRESH_TTL} seconds"
        )
    return client


def _id_token_alg(value: str | None) -> str | None:
    """OIDC Registration §2 id_token_signed_response_alg: one of our signing algorithms;
    None or "" for the default (the active key's, ES256 unless configured)."""
    if not value:
        return None
    _check_choice("ID token signing algorithm", value, SIGNING_ALGS)
    return value


def _redirect_uris(values: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        _check_redirect_uri(value)
        if value not in out:
            out.append(value)
    return tuple(out)


def _check_redirect_uri(value: str) -> None:
    """A redirect URI a client may register (see core/registration.redirect_uri_problem)."""
    problem = redirect_uri_problem(value)
    if problem is not None:
        raise ConfigurationError(f"redirect URI {value!r}: {problem}")


async def list_clients(store: Store) -> list[dict[str, Any]]:
    """Every client as a view, with how it came to be: ``cli`` (made by an operator, with
    the CLI or the admin API) or a dynamic registration method (docs/registration.md)."""
    from keystile.registration_admin import registration_methods

    methods = await registration_methods(store)
    return [
        {**client_view(c), "registration": methods.get(c.client_id, "cli")}
        for c in await store.list_clients()
    ]


async def set_client_enabled(store: Store, clock: Clock, client_id: str, enabled: bool) -> int:
    """Enable or disable a client; disabling revokes every live token it holds (one
    transaction, one client_disabled event). The number of tokens revoked."""
    return await store.set_client_enabled(client_id, enabled, clock.now())


async def delete_client(store: Store, clock: Clock, client_id: str) -> int:
    """Revoke a client's live tokens, then delete it; the number of tokens revoked."""
    return await store.delete_client(client_id, clock.now())


async def rotate_secret(store: Store, clock: Clock, client_id: str) -> tuple[Client, str]:
    """A new secret for a client; the old one stops working at once."""
    client = await get_client(store, client_id)
    if client.is_public:
        raise ConfigurationError(
            f"client {client_id!r} is public (auth method none) and has no secret"
        )
    secret = new_client_secret()
    updated = replace(client, secret_hash=token_hash(secret), updated_at=clock.now())
    await store.update_client(updated)
    return updated, secret


async def create_resource_server(
    store: Store,
    clock: Clock,
    *,
    identifier: str,
    name: str | None = None,
    introspection_clients: Iterable[str] = (),
    claims: Iterable[str] | None = None,
    rules: Iterable[str] = ("audience",),
    introspection_response: str = "json",
) -> ResourceServer:
    _check_identifier(identifier)
    _check_choice("introspection response", introspection_response, INTROSPECTION_RESPONSES)
    await _check_introspectors(store, introspection_clients)
    now = clock.now()
    rs = ResourceServer(
        identifier=identifier,
        name=name or identifier,
        introspection_clients=frozenset(introspection_clients),
        claims=_claims(claims),
        rules=_rules(rules),
        created_at=now,
        updated_at=now,
        introspection_response=introspection_response,  # type: ignore[arg-type]
    )
    await store.create_resource_server(rs)
    return rs


async def get_resource_server(store: Store, identifier: str) -> ResourceServer:
    rs = await store.get_resource_server(identifier)
    if rs is None:
        raise NotFound(f"no resource server {identifier!r}")
    return rs


async def update_resource_server(
    store: Store,
    clock: Clock,
    identifier: str,
    *,
    name: str | None = None,
    introspection_clients: Iterable[str] | None = None,
    claims: Iterable[str] | None = None,
    rules: Iterable[str] | None = None,
    introspection_response: str | None = None,
) -> ResourceServer:
    rs = await get_resource_server(store, identifier)
    changes: dict[str, Any] = {"updated_at": clock.now()}
    if name is not None:
        changes["name"] = name
    if introspection_clients is not None:
        await _check_introspectors(store, introspection_clients)
        changes["introspection_clients"] = frozenset(introspection_clients)
    if claims is not None:
        changes["claims"] = _claims(claims)
    if rules is not None:
        changes["rules"] = _rules(rules)
    if introspection_response is not None:
        _check_choice("introspection response", introspection_response, INTROSPECTION_RESPONSES)
        changes["introspection_response"] = introspection_response
    updated = replace(rs, **changes)
    await store.update_resource_server(updated)
    return updated


async def delete_resource_server(store: Store, identifier: str) -> None:
    """Delete a resource server; its introspecting clients stay (NotFound if unknown)."""
    await store.delete_resource_server(identifier)


async def _check_introspectors(store: Store, client_ids: Iterable[str]) -> None:
    """Only confidential clients introspect: a public one proves nothing about itself."""
    for client_id in client_ids:
        client = await store.get_client(client_id)
        if client is not None and client.is_public:
            raise ConfigurationError(
                f"client {client_id!r} is public (auth method none): it cannot introspect "
                "for a resource server"
            )


def _claims(values: Iterable[str] | None) -> frozenset[str]:
    if values is None:
        return frozenset(RFC7662_CLAIMS)
    out = frozenset(values)
    for claim in out:
        _check_choice("claim", claim, RFC7662_CLAIMS)
    return out


def _rules(values: Iterable[str]) -> frozenset[str]:
    out = set(values) | {"audience"}  # the audience rule is always on
    for rule in out:
        _check_choice("introspection rule", rule, INTROSPECTION_RULES)
    return frozenset(out)


def _jwks(text: str | None) -> str | None:
    """A client's JWK Set, checked (public EC, RSA or OKP keys only) and stored compactly."""
    if text is None:
        return None
    from keystile.core.client_assertion import parse_client_jwks

    try:
        parse_client_jwks(text)
    except ValueError as exc:
        raise ConfigurationError(f"jwks: {exc}") from None
    return json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)


def client_view(client: Client) -> dict[str, Any]:
    """A client as JSON for the CLI: everything but the secret digest."""
    return {
        "client_id": client.client_id,
        "name": client.name,
        "token_endpoint_auth_method": client.auth_method,
        "grant_types": sorted(client.grant_types),
        "scope": " ".join(sorted(client.scopes)),
        "default_audience": list(client.default_audience),
        "access_token_ttl": client.access_token_ttl,
        "enabled": client.enabled,
        "created_at": client.created_at,
        "updated_at": client.updated_at,
        "token_format": client.token_format,
        "jwks": None if client.jwks is None else json.loads(client.jwks),
        "redirect_uris": list(client.redirect_uris),
        "refresh_token_ttl": client.refresh_token_ttl,
        "refresh_token_max_ttl": client.refresh_token_max_ttl,
        "id_token_signed_response_alg": client.id_token_signed_response_alg,
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "logout_revokes_grants": client.logout_revokes_grants,
        "require_dpop": client.require_dpop,
    }


def resource_server_view(rs: ResourceServer) -> dict[str, Any]:
    return {
        "identifier": rs.identifier,
        "name": rs.name,
        "introspection_clients": sorted(rs.introspection_clients),
        "claims": sorted(rs.claims),
        "introspection_rules": sorted(rs.rules),
        "introspection_response": rs.introspection_response,
        "created_at": rs.created_at,
        "updated_at": rs.updated_at,
    }
