"""The OpenAPI 3.1 document of the admin API, built from its table of operations, so a
route cannot exist without being documented (served at /admin/v1/openapi.json)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from keystile import __version__

if TYPE_CHECKING:
    from keystile.server.admin_api import Operation

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_BOOL: dict[str, Any] = {"type": "boolean"}
# OpenID Connect standard claims of a user (OIDC Core §5.1; docs/oidc.md); "" clears one.
_USER_CLAIMS: dict[str, Any] = {
    "name": {"type": ["string", "null"]},
    "preferred_username": {"type": ["string", "null"]},
    "email": {"type": ["string", "null"]},
    "email_verified": _BOOL,
}
_STRS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_TIME: dict[str, Any] = {"type": "integer", "description": "Unix time, seconds"}
_ROLES: dict[str, Any] = {"type": "array", "items": {"enum": ["admin"]}}
# Dashboard counters (GET /stats): since each process started, and per second lately.
_COUNTER_KEYS = ("active", "inactive", "issued", "revoked", "throttled", "shed")
_COUNTS: dict[str, Any] = {
    "type": "object",
    "properties": {k: {"type": "integer"} for k in _COUNTER_KEYS},
    "description": "since each process started: introspections active and inactive, "
    "tokens issued, revocations, throttled (429) and shed (503) requests",
}
_RATES: dict[str, Any] = {
    "type": "object",
    "properties": {k: {"type": "number"} for k in _COUNTER_KEYS},
    "description": "per second over each process's last publishing interval",
}
_DELIVERY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "count": _INT,
        "p50_ms": {"type": ["number", "null"]},
        "p99_ms": {"type": ["number", "null"]},
    },
    "description": "events sent on event streams since start, and their delay from commit "
    "to the first stream that sent them (upper bound of the histogram bucket, ms)",
}
_LATENCY: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "properties": {
            "p50_ms": {"type": ["number", "null"]},
            "p99_ms": {"type": ["number", "null"]},
        },
    },
    "description": "per endpoint (token, introspect, revoke), since start: the upper bound "
    "of the histogram bucket the quantile falls in",
}


def _obj(props: dict[str, Any], required: Iterable[str] = (), *, extra: bool = False) -> Any:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _page(item: str) -> Any:
    return _obj(
        {
            "items": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
            "next_cursor": {"type": ["string", "null"]},
        },
        ["items", "next_cursor"],
    )


_CLIENT_FIELDS: dict[str, Any] = {
    "name": _STR,
    "token_endpoint_auth_method": {
        "enum": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
    },
    "grant_types": _STRS,
    "scope": {"type": "string", "description": "space-separated"},
    "default_audience": _STRS,
    "access_token_ttl": _INT,
    "token_format": {"enum": ["opaque", "jwt"]},
    "jwks": {"type": "object", "description": "JWK Set of a private_key_jwt client"},
    "redirect_uris": _STRS,
    "refresh_token_ttl": _INT,
    "refresh_token_max_ttl": _INT,
}
_RS_FIELDS: dict[str, Any] = {
    "name": _STR,
    "introspection_clients": _STRS,
    "claims": _STRS,
    "introspection_rules": _STRS,
    "introspection_response": {"enum": ["json", "jwt", "jwt-required"]},
}

SCHEMAS: dict[str, Any] = {
    "Problem": _obj(
        {"type": _STR, "title": _STR, "status": _INT, "detail": _STR},
        ["type", "title", "status"],
        extra=True,
    ),
    "Client": _obj(
        {
            "client_id": _STR,
            **_CLIENT_FIELDS,
            "jwks": {"type": ["object", "null"]},
            "enabled": _BOOL,
            "created_at": _TIME,
            "updated_at": _TIME,
            "registration": _STR,
            "client_secret": {"type": "string", "description": "only in the creation answer"},
        },
        ["client_id", "enabled"],
    ),
    "ClientCreate": _obj({"client_id": _STR, **_CLIENT_FIELDS}, ["client_id"]),
    "ClientUpdate": _obj(_CLIENT_FIELDS),
    "ClientPage": _page("Client"),
    "ResourceServer": _obj(
        {"identifier": _STR, **_RS_FIELDS, "created_at": _TIME, "updated_at": _TIME},
        ["identifier"],
    ),
    "ResourceServerCreate": _obj({"identifier": _STR, **_RS_FIELDS}, ["identifier"]),
    "ResourceServerUpdate": _obj(_RS_FIELDS),
    "ResourceServerPage": _page("ResourceServer"),
    "User": _obj(
        {
            "user_id": _STR,
            "username": _STR,
            "enabled": _BOOL,
            "roles": _ROLES,
            **_USER_CLAIMS,
            "created_at": _TIME,
            "updated_at": _TIME,
        },
        ["user_id", "username", "enabled"],
    ),
    "UserCreate": _obj(
        {"username": _STR, "password": _STR, "roles": _ROLES, **_USER_CLAIMS},
        ["username", "password"],
    ),
    "UserClaims": _obj(_USER_CLAIMS),
    "Roles": _obj({"roles": _ROLES}, ["roles"]),
    "UserPage": _page("User"),
    "Password": _obj({"password": _STR}, ["password"]),
    "SigningKey": _obj(
        {
            "kid": _STR,
            "alg": _STR,
            "state": {"enum": ["next", "active", "retired"]},
            "published": _BOOL,
            "created_at": _TIME,
            "activated_at": {"type": ["integer", "null"]},
            "retired_at": {"type": ["integer", "null"]},
            "not_after": {"type": ["integer", "null"]},
        },
        ["kid", "alg", "state"],
    ),
    "SigningKeyPage": _page("SigningKey"),
    "KeyCreate": _obj({"alg": {"enum": ["ES256", "RS256", "Ed25519", "EdDSA"]}}),
    "KeyRetire": _obj({"immediately": _BOOL}),
    "RegistrationToken": _obj(
        {
            "token_id": _STR,
            "created_at": _TIME,
            "expires_at": _TIME,
            "uses_left": {"type": ["integer", "null"]},
            "description": _STR,
            "live": _BOOL,
            "token": {"type": "string", "description": "only in the creation answer"},
        },
        ["token_id"],
    ),
    "RegistrationTokenCreate": _obj(
        {"ttl": _INT, "uses": _INT, "unlimited": _BOOL, "description": _STR}
    ),
    "RegistrationTokenPage": _page("RegistrationToken"),
    "Token": _obj(
        {
            "token_sha256": _STR,
            "jti": _STR,
            "token_type": _STR,
            "client_id": _STR,
            "scope": _STR,
            "aud": _STRS,
            "sub": {"type": ["string", "null"]},
            "username": {"type": ["string", "null"]},
            "grant_id": {"type": ["string", "null"]},
            "iat": _TIME,
            "nbf": _TIME,
            "exp": _TIME,
            "revoked_at": {"type": ["integer", "null"]},
            "state": {"enum": ["active", "revoked", "expired", "not_yet_valid"]},
            "active": _BOOL,
        },
        ["token_sha256", "jti", "state", "active"],
    ),
    "TokenRevoke": _obj(
        {
            "token": {"type": "string", "description": "the token itself (never echoed)"},
            "jti": _STR,
            "digest": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"},
        }
    ),
    "Stats": _obj(
        {
            "instance_id": {"type": "string", "description": "the process that answered"},
            "stale_after": {
                "type": ["integer", "null"],
                "description": "seconds after which a silent process is left out; null: "
                "processes do not publish (stats_interval = 0), only this one is shown",
            },
            "total": {"$ref": "#/components/schemas/StatsFigures"},
            "instances": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/InstanceStats"},
            },
        },
        ["instance_id", "total", "instances"],
    ),
    "StatsFigures": _obj(
        {
            "instances": _INT,
            "totals": _COUNTS,
            "rates": _RATES,
            "latency": _LATENCY,
            "in_flight": _INT,
            "subscribers": _INT,
            "lag": {"type": "integer", "description": "the largest lag of any process"},
            "event_delivery": _DELIVERY,
            "recent_delivery": {
                **_DELIVERY,
                "description": "events sent in each process's last publishing interval",
            },
        },
        extra=True,
    ),
    "InstanceStats": _obj(
        {
            "instance_id": _STR,
            "host": _STR,
            "pid": _INT,
            "this_process": _BOOL,
            "started_at": _TIME,
            "updated_at": _TIME,
            "totals": _COUNTS,
            "rates": _RATES,
            "latency": _LATENCY,
            "in_flight": _INT,
            "subscribers": _INT,
            "lag": _INT,
            "event_delivery": _DELIVERY,
        },
        ["instance_id", "totals"],
    ),
    "Event": _obj(
        {"id": _INT, "type": _STR, "created_at": _TIME}, ["id", "type", "created_at"], extra=True
    ),
    "EventPage": _obj(
        {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
            "next_after": {"type": ["integer", "null"]},
        },
        ["items", "next_after"],
    ),
}

_QUERY: dict[str, Any] = {
    "limit": {"schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    "cursor": {"schema": _STR, "description": "next_cursor of the previous page"},
    "after": {"schema": {"type": "integer", "minimum": 0}, "description": "an event id"},
    "jti": {"schema": _STR},
    "digest": {"schema": {"type": "string", "pattern": "^[0-9a-fA-F]{64}$"}},
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _operation(op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": _STR}
        for name in re.findall(r"{(\w+)}", op.path)
    ]
    params += [{"name": name, "in": "query", **_QUERY[name]} for name in op.query]
    schema: dict[str, Any] = (
        {"$ref": f"#/components/schemas/{op.response}"} if op.response else {"type": "object"}
    )
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "security": [{"keystile": ["keystile:admin"] if op.writes else ["keystile:admin:read"]}],
        "responses": {
            str(op.status): {
                "description": "OK",
                "content": {"application/json": {"schema": schema}},
            },
            "400": _problem("invalid input"),
            "401": _problem("no token, or a token that is not active"),
            "403": _problem("insufficient scope, or an address not allowed"),
            "404": _problem("no such item"),
            "409": _problem("conflict"),
            "503": _problem("the store cannot answer"),
        },
    }
    if params:
        out["parameters"] = params
    if op.request:
        out["requestBody"] = {
            "required": False,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{op.request}"}}
            },
        }
    return out


def openapi_document(operations: Iterable[Operation], prefix: str) -> dict[str, Any]:
    """The whole document: one path item per route, shared schemas under components."""
    paths: dict[str, Any] = {
        "/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "tags": ["meta"],
                "responses": {"200": {"description": "OK"}},
            }
        }
    }
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keystile admin API",
            "version": __version__,
            "description": "Administration of a keystile authorization server (docs/admin.md). "
            "Bearer tokens issued by keystile with scope keystile:admin (or keystile:admin:read "
            "for reads); errors are RFC 9457 problem details.",
        },
        "servers": [{"url": prefix}],
        "security": [{"keystile": ["keystile:admin"]}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "keystile": {
                    "type": "oauth2",
                    "description": "An access token from keystile's own token endpoint.",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": "/oauth2/token",
                            "scopes": {
                                "keystile:admin": "read and change everything",
                                "keystile:admin:read": "read only",
                            },
                        }
                    },
                }
            },
        },
    }
