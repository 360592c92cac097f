"""The admin API's handlers (docs/admin.md): parse the JSON input, call the operation the
CLI runs (admin.py, key_admin.py, registration_admin.py, token_admin.py), render the result
and note the change for the audit event. Routes and the OpenAPI table: admin_api.py."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.responses import Response

from keystile import admin, key_admin, registration_admin, token_admin
from keystile.admin_audit import field_names, given_fields
from keystile.core.jwt_profile import looks_like_jwt
from keystile.core.tokens import stored_digest
from keystile.errors import ConfigurationError
from keystile.server.admin_http import Body, Call, json_response, page, query_int
from keystile.store.base import NotFound

PREFIX = "/admin/v1"


# -- clients ------------------------------------------------------------------------------


async def list_clients(call: Call) -> Response:
    return json_response(page(call.request, await admin.list_clients(call.store), "client_id"))


def _client_fields(body: Body) -> dict[str, Any]:
    """The writable client fields, named as client views name them."""
    jwks = body.mapping("jwks")
    scope = body.text("scope")
    return {
        "name": body.text("name"),
        "auth_method": body.text("token_endpoint_auth_method"),
        "grant_types": body.texts("grant_types"),
        "scopes": None if scope is None else scope.split(),
        "default_audience": body.texts("default_audience"),
        "access_token_ttl": body.integer("access_token_ttl"),
        "token_format": body.text("token_format"),
        "jwks": None if jwks is None else json.dumps(jwks),
        "redirect_uris": body.texts("redirect_uris"),
        "refresh_token_ttl": body.integer("refresh_token_ttl"),
        "refresh_token_max_ttl": body.integer("refresh_token_max_ttl"),
    }


async def create_client(call: Call) -> Response:
    body = await call.body()
    client_id = body.required("client_id")
    fields = _client_fields(body)
    body.done()
    given = {k: v for k, v in fields.items() if v is not None}
    # The defaults the CLI applies: the configured lifetime, secret-based authentication.
    given.setdefault("access_token_ttl", call.settings.access_token_ttl)
    given.setdefault("scopes", [])
    given.setdefault("default_audience", [])
    given.setdefault("redirect_uris", [])
    client, secret = await admin.create_client(call.store, call.clock, client_id=client_id, **given)
    call.changed("client.create", client.client_id, fields=field_names(given))
    view = admin.client_view(client)
    if client.auth_method not in ("private_key_jwt", "none"):
        # Shown only now: keystile keeps its SHA-256 digest, never the secret.
        view["client_secret"] = secret
    location = f"{PREFIX}/clients/{quote(client.client_id, safe='')}"
    return json_response(view, 201, {"Location": location})


async def get_client(call: Call) -> Response:
    client = await admin.get_client(call.store, call.param("client_id"))
    return json_response(admin.client_view(client))


async def update_client(call: Call) -> Response:
    body = await call.body()
    fields = _client_fields(body)
    body.done()
    given = {k: v for k, v in fields.items() if v is not None}
    client = await admin.update_client(call.store, call.clock, call.param("client_id"), **given)
    call.changed("client.update", client.client_id, fields=field_names(given))
    return json_response(admin.client_view(client))


async def delete_client(call: Call) -> Response:
    client_id = call.param("client_id")
    n = await admin.delete_client(call.store, call.clock, client_id)
    call.changed("client.delete", client_id, tokens_revoked=n)
    return json_response({"client_id": client_id, "deleted": True, "tokens_revoked": n})


async def enable_client(call: Call) -> Response:
    client_id = call.param("client_id")
    await admin.set_client_enabled(call.store, call.clock, client_id, True)
    call.changed("client.enable", client_id)
    return json_response({"client_id": client_id, "enabled": True})


async def disable_client(call: Call) -> Response:
    client_id = call.param("client_id")
    n = await admin.set_client_enabled(call.store, call.clock, client_id, False)
    call.changed("client.disable", client_id, tokens_revoked=n)
    return json_response({"client_id": client_id, "enabled": False, "tokens_revoked": n})


async def rotate_client_secret(call: Call) -> Response:
    client, secret = await admin.rotate_secret(call.store, call.clock, call.param("client_id"))
    call.changed("client.rotate_secret", client.client_id)
    return json_response({"client_id": client.client_id, "client_secret": secret})


async def revoke_client_tokens(call: Call) -> Response:
    client_id = call.param("client_id")
    n = await token_admin.revoke_client_tokens(call.store, call.clock, client_id)
    call.changed("client.revoke_tokens", client_id, tokens_revoked=n)
    return json_response({"client_id": client_id, "tokens_revoked": n})


# -- resource servers -----------------------------------------------------------------------


def _rs_fields(body: Body) -> dict[str, Any]:
    return {
        "name": body.text("name"),
        "introspection_clients": body.texts("introspection_clients"),
        "claims": body.texts("claims"),
        "rules": body.texts("introspection_rules"),
        "introspection_response": body.text("introspection_response"),
    }


async def list_resource_servers(call: Call) -> Response:
    views = [admin.resource_server_view(rs) for rs in await call.store.list_resource_servers()]
    return json_response(page(call.request, views, "identifier"))


async def create_resource_server(call: Call) -> Response:
    body = await call.body()
    identifier = body.required("identifier")
    given = {k: v for k, v in _rs_fields(body).items() if v is not None}
    body.done()
    rs = await admin.create_resource_server(call.store, call.clock, identifier=identifier, **given)
    call.changed("resource_server.create", rs.identifier, fields=field_names(given))
    location = f"{PREFIX}/resource-servers/{quote(rs.identifier, safe='')}"
    return json_response(admin.resource_server_view(rs), 201, {"Location": location})


async def get_resource_server(call: Call) -> Response:
    rs = await admin.get_resource_server(call.store, call.param("identifier"))
    return json_response(admin.resource_server_view(rs))


async def update_resource_server(call: Call) -> Response:
    body = await call.body()
    given = {k: v for k, v in _rs_fields(body).items() if v is not None}
    body.done()
    rs = await admin.update_resource_server(
        call.store, call.clock, call.param("identifier"), **given
    )
    call.changed("resource_server.update", rs.identifier, fields=field_names(given))
    return json_response(admin.resource_server_view(rs))


async def delete_resource_server(call: Call) -> Response:
    identifier = call.param("identifier")
    await admin.delete_resource_server(call.store, identifier)
    call.changed("resource_server.delete", identifier)
    return json_response({"identifier": identifier, "deleted": True})


# -- users ----------------------------------------------------------------------------------


async def list_users(call: Call) -> Response:
    views = [admin.user_view(u) for u in await call.store.list_users()]
    return json_response(page(call.request, views, "username"))


async def create_user(call: Call) -> Response:
    body = await call.body()
    username = body.required("username")
    password = body.required("password")
    roles = body.texts("roles") or []
    name, preferred_username, email = (
        body.text("name"),
        body.text("preferred_username"),
        body.text("email"),
    )
    email_verified = body.flag("email_verified")
    body.done()
    user = await admin.create_user(
        call.store,
        call.clock,
        username=username,
        password=password,
        roles=roles,
        name=name,
        preferred_username=preferred_username,
        email=email,
        email_verified=bool(email_verified),
    )
    call.changed("user.create", user.user_id, username=user.username)
    return json_response(admin.user_view(user), 201, {"Location": f"{PREFIX}/users/{user.user_id}"})


async def get_user(call: Call) -> Response:
    return json_response(admin.user_view(await admin.get_user(call.store, call.param("user"))))


async def update_user_claims(call: Call) -> Response:
    """The user's OpenID Connect claims, as `keystile user update` changes them."""
    body = await call.body()
    name, preferred_username = body.text("name"), body.text("preferred_username")
    email, email_verified = body.text("email"), body.flag("email_verified")
    body.done()
    user = await admin.update_user(
        call.store,
        call.clock,
        call.param("user"),
        name=name,
        preferred_username=preferred_username,
        email=email,
        email_verified=email_verified,
    )
    fields = given_fields(
        name=name,
        preferred_username=preferred_username,
        email=email,
        email_verified=email_verified,
    )
    call.changed("user.update", user.user_id, username=user.username, fields=fields)
    return json_response(admin.user_view(user))


async def set_user_password(call: Call) -> Response:
    body = await call.body()
    password = body.required("password")
    body.done()
    user = await admin.set_password(call.store, call.clock, call.param("user"), password)
    call.changed("user.password", user.user_id, username=user.username)
    return json_response(
        {"user_id": user.user_id, "username": user.username, "password_changed": True}
    )


async def set_user_roles(call: Call) -> Response:
    body = await call.body()
    roles = body.texts("roles")
    body.done()
    if roles is None:
        raise ConfigurationError("missing field: roles")
    user = await admin.set_user_roles(
        call.store, call.clock, call.param("user"), roles, acting=call.caller.user
    )
    call.changed("user.roles", user.user_id, username=user.username, roles=sorted(user.roles))
    return json_response(admin.user_view(user))


async def _user_enabled(call: Call, enabled: bool) -> Response:
    user, n = await admin.set_user_enabled(
        call.store, call.clock, call.param("user"), enabled, acting=call.caller.user
    )
    action = "user.enable" if enabled else "user.disable"
    call.changed(action, user.user_id, username=user.username, tokens_revoked=n)
    body: dict[str, Any] = {"user_id": user.user_id, "username": user.username, "enabled": enabled}
    if not enabled:
        body["tokens_revoked"] = n
    return json_response(body)


async def enable_user(call: Call) -> Response:
    return await _user_enabled(call, True)


async def disable_user(call: Call) -> Response:
    return await _user_enabled(call, False)


async def revoke_user_sessions(call: Call) -> Response:
    user, n = await admin.revoke_user_sessions(call.store, call.clock, call.param("user"))
    call.changed("user.revoke_sessions", user.user_id, username=user.username, tokens_revoked=n)
    return json_response({"user_id": user.user_id, "username": user.username, "tokens_revoked": n})


async def delete_user(call: Call) -> Response:
    user, n = await admin.delete_user(
        call.store, call.clock, call.param("user"), acting=call.caller.user
    )
    call.changed("user.delete", user.user_id, username=user.username, tokens_revoked=n)
    return json_response(
        {"user_id": user.user_id, "username": user.username, "deleted": True, "tokens_revoked": n}
    )


# -- signing keys ---------------------------------------------------------------------------


def _key_views(call: Call, keys: list[Any]) -> list[dict[str, Any]]:
    now = call.clock.now()
    return [key_admin.key_view(k, now) for k in keys]


async def list_keys(call: Call) -> Response:
    keys = await call.store.list_signing_keys()
    return json_response({"items": _key_views(call, keys), "next_cursor": None})


async def create_key(call: Call) -> Response:
    body = await call.body()
    alg = body.text("alg") or "ES256"
    body.done()
    kek = key_admin.require_kek(call.settings)
    key = await key_admin.create_key(call.store, call.clock, kek, alg=alg)
    call.changed("signing_key.create", key.kid, alg=key.alg)
    return json_response(_key_views(call, [key])[0], 201)


async def rotate_keys(call: Call) -> Response:
    body = await call.body()
    alg = body.text("alg")
    body.done()
    kek = key_admin.require_kek(call.settings)
    active, retired = await key_admin.rotate(call.store, call.clock, kek, alg=alg)
    call.changed("signing_key.rotate", active.kid, retired=retired.kid if retired else None)
    return json_response(
        {
            "active": _key_views(call, [active])[0],
            "retired": _key_views(call, [retired])[0] if retired else None,
        }
    )


async def retire_key(call: Call) -> Response:
    body = await call.body()
    immediately = bool(body.flag("immediately"))
    body.done()
    key = await key_admin.retire(call.store, call.clock, call.param("kid"), immediately=immediately)
    call.changed("signing_key.retire", key.kid, immediately=immediately)
    return json_response(_key_views(call, [key])[0])


# -- registered-client policy: initial access tokens (RFC 7591 §3) ----------------------------


async def list_registration_tokens(call: Call) -> Response:
    now = call.clock.now()
    views = [
        registration_admin.initial_token_view(t, now)
        for t in await call.store.list_initial_access_tokens()
    ]
    return json_response(page(call.request, views, "token_id"))


async def create_registration_token(call: Call) -> Response:
    body = await call.body()
    ttl = body.integer("ttl")
    uses = body.integer("uses")
    unlimited = bool(body.flag("unlimited"))
    description = body.text("description") or ""
    body.done()
    if unlimited and uses is not None:
        raise ConfigurationError("give uses or unlimited, not both")
    token, value = await registration_admin.create_initial_access_token(
        call.store,
        call.clock,
        ttl=86400 if ttl is None else ttl,
        uses=None if unlimited else (1 if uses is None else uses),
        description=description,
    )
    call.changed("registration_token.create", token.token_id)
    # Shown only now: keystile keeps its SHA-256 digest, never the value.
    view = {**registration_admin.initial_token_view(token, call.clock.now()), "token": value}
    return json_response(view, 201)


async def delete_registration_token(call: Call) -> Response:
    token_id = call.param("token_id")
    await registration_admin.revoke_initial_access_token(call.store, token_id)
    call.changed("registration_token.delete", token_id)
    return json_response({"token_id": token_id, "deleted": True})


# -- tokens and events --------------------------------------------------------------------


async def find_token(call: Call) -> Response:
    query = call.request.query_params
    record = await token_admin.find_token(
        call.store, jti=query.get("jti"), digest=query.get("digest")
    )
    return json_response(token_admin.token_view(record, call.clock.now()))


async def _digest_of(call: Call, token: str) -> str:
    """The digest of a raw token given to revoke (never echoed, logged or stored)."""
    digest = stored_digest(token)
    if digest is None and looks_like_jwt(token):
        _, record = await call.signing.lookup(token)  # only a JWT we signed (RFC 9068)
        digest = None if record is None else record.token_hash
    if digest is None:
        raise NotFound("no such token")
    return digest.hex()


async def revoke_token(call: Call) -> Response:
    body = await call.body()
    token = body.text("token")
    jti = body.text("jti")
    digest = body.text("digest")
    body.done()
    if sum(v is not None for v in (token, jti, digest)) != 1:
        raise ConfigurationError("give one of token, jti or digest")
    if token is not None:
        digest = await _digest_of(call, token)
    record = await token_admin.revoke_token(call.store, call.clock, jti=jti, digest=digest)
    call.changed("token.revoke", record.jti, client_id=record.client_id)
    return json_response(token_admin.token_view(record, call.clock.now()))


async def tail_events(call: Call) -> Response:
    after = query_int(call.request, "after", None, 0, 2**62)
    limit = query_int(call.request, "limit", 100, 1, token_admin.MAX_EVENTS) or 100
    events = await token_admin.tail_events(call.store, after=after, limit=limit)
    items = [token_admin.event_view(e) for e in events]
    return json_response({"items": items, "next_after": items[-1]["id"] if items else after})


async def get_stats(call: Call) -> Response:
    """The dashboard's counters: this process now, every other live process as it last
    published them (server/instance_stats.py), and their sum."""
    if call.stats is None:
        raise NotFound("no dashboard counters in this server")
    return json_response(await call.stats.view())
