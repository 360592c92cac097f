"""Row mapping shared by the SQLite and PostgreSQL stores: one place for the columns
and for turning rows into records and records into parameters."""

from __future__ import annotations

import importlib.resources
import re
from typing import Any

from keystile.core.models import (
    AuthorizationCode,
    Client,
    ClientRegistration,
    Grant,
    InitialAccessToken,
    SigningKey,
    TokenRecord,
    User,
)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

TOKEN_COLUMNS = (
    "token_hash, kind, client_id, scope, aud, iat, nbf, exp, jti, sub, username, grant_id,"
    " revoked_at, cnf_jkt, cnf_x5t"
)

CLIENT_COLUMNS = (
    "client_id, name, secret_hash, auth_method, grant_types, scopes, default_audience, "
    "access_token_ttl, enabled, created_at, updated_at, token_format, jwks, redirect_uris, "
    "refresh_token_ttl, refresh_token_max_ttl, id_token_signed_response_alg, "
    "post_logout_redirect_uris, logout_revokes_grants, require_dpop"
)

USER_COLUMNS = (
    "user_id, username, password_hash, enabled, created_at, updated_at, roles, name,"
    " preferred_username, email, email_verified"
)

GRANT_COLUMNS = (
    "grant_id, client_id, user_id, username, scope, aud, created_at, auth_time, expires_at,"
    " revoked_at, claims"
)

CODE_COLUMNS = (
    "code_hash, grant_id, client_id, redirect_uri, code_challenge, created_at, expires_at, used_at,"
    " nonce, dpop_jkt"
)


def placeholders(columns: str, style: str = "?") -> str:
    """``?,?,...`` (SQLite) or ``$1,$2,...`` (PostgreSQL, style ``$``) for ``columns``."""
    n = len(columns.split(","))
    if style == "?":
        return ",".join("?" * n)
    return ",".join(f"${i}" for i in range(1, n + 1))


KEY_COLUMNS = (
    "kid, alg, state, public_jwk, private_jwk_enc, created_at, activated_at, retired_at, not_after,"
    " use_for"
)


def migrations(package: str) -> list[tuple[int, str, str]]:
    """The versioned SQL migrations in ``package`` (one folder per engine), in order."""
    out = []
    for entry in importlib.resources.files(package).iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    return sorted(out)


def split(value: str) -> frozenset[str]:
    return frozenset(value.split()) if value else frozenset()


def join(values: frozenset[str] | tuple[str, ...]) -> str:
    return " ".join(sorted(values)) if isinstance(values, frozenset) else " ".join(values)


def token_from_row(row: Any) -> TokenRecord:
    return TokenRecord(
        token_hash=bytes(row[0]),
        kind=row[1],
        client_id=row[2],
        scope=split(row[3]),
        aud=tuple(row[4].split()) if row[4] else (),
        iat=row[5],
        nbf=row[6],
        exp=row[7],
        jti=row[8],
        sub=row[9],
        username=row[10],
        grant_id=row[11],
        revoked_at=row[12],
        cnf_jkt=row[13],
        cnf_x5t=row[14],
    )


def client_from_row(row: Any) -> Client:
    return Client(
        client_id=row[0],
        name=row[1],
        secret_hash=bytes(row[2]),
        auth_method=row[3],
        grant_types=split(row[4]),
        scopes=split(row[5]),
        default_audience=tuple(row[6].split()) if row[6] else (),
        access_token_ttl=row[7],
        enabled=bool(row[8]),
        created_at=row[9],
        updated_at=row[10],
        token_format=row[11],
        jwks=row[12],
        redirect_uris=tuple(row[13].split()) if row[13] else (),
        refresh_token_ttl=row[14],
        refresh_token_max_ttl=row[15],
        id_token_signed_response_alg=row[16],
        post_logout_redirect_uris=tuple(row[17].split()) if row[17] else (),
        logout_revokes_grants=bool(row[18]),
        require_dpop=bool(row[19]),
    )


def client_params(client: Client) -> tuple[Any, ...]:
    return (
        client.client_id,
        client.name,
        client.secret_hash,
        client.auth_method,
        join(client.grant_types),
        join(client.scopes),
        " ".join(client.default_audience),
        client.access_token_ttl,
        client.enabled,
        client.created_at,
        client.updated_at,
        client.token_format,
        client.jwks,
        " ".join(client.redirect_uris),
        client.refresh_token_ttl,
        client.refresh_token_max_ttl,
        client.id_token_signed_response_alg,
        " ".join(client.post_logout_redirect_uris),
        client.logout_revokes_grants,
        client.require_dpop,
    )


_CLIENT_MUTABLE = [
    c.strip() for c in CLIENT_COLUMNS.split(",") if c.strip() not in ("client_id", "created_at")
]


def client_update(style: str = "?") -> str:  # column names are module constants
    """``UPDATE clients SET ... WHERE client_id = ...`` for every column but the id and
    created_at; use with ``client_update_params``."""
    if style == "?":
        sets = ", ".join(f"{c}=?" for c in _CLIENT_MUTABLE)
        return f"UPDATE clients SET {sets} WHERE client_id=?"
    sets = ", ".join(f"{c}=${i}" for i, c in enumerate(_CLIENT_MUTABLE, start=2))
    return f"UPDATE clients SET {sets} WHERE client_id=$1"


def client_update_params(client: Client, style: str = "?") -> tuple[Any, ...]:
    params = client_params(client)
    rest = (*params[1:9], *params[10:])  # all but client_id and created_at
    return (*rest, client.client_id) if style == "?" else (client.client_id, *rest)


def key_from_row(row: Any) -> SigningKey:
    return SigningKey(
        kid=row[0],
        alg=row[1],
        state=row[2],
        public_jwk=row[3],
        private_jwk_enc=None if row[4] is None else bytes(row[4]),
        created_at=row[5],
        activated_at=row[6],
        retired_at=row[7],
        not_after=row[8],
        use_for=row[9],
    )


def token_params(record: TokenRecord) -> tuple[Any, ...]:
    """A token record as the parameters of ``INSERT INTO tokens (TOKEN_COLUMNS)``."""
    return (
        record.token_hash,
        record.kind,
        record.client_id,
        join(record.scope),
        " ".join(record.aud),
        record.iat,
        record.nbf,
        record.exp,
        record.jti,
        record.sub,
        record.username,
        record.grant_id,
        record.revoked_at,
        record.cnf_jkt,
        record.cnf_x5t,
    )


def user_from_row(row: Any) -> User:
    return User(
        user_id=row[0],
        username=row[1],
        password_hash=row[2],
        enabled=bool(row[3]),
        created_at=row[4],
        updated_at=row[5],
        roles=frozenset(row[6].split()),
        name=row[7],
        preferred_username=row[8],
        email=row[9],
        email_verified=bool(row[10]),
    )


def user_params(user: User) -> tuple[Any, ...]:
    return (
        user.user_id,
        user.username,
        user.password_hash,
        user.enabled,
        user.created_at,
        user.updated_at,
        " ".join(sorted(user.roles)),
        user.name,
        user.preferred_username,
        user.email,
        user.email_verified,
    )


def grant_from_row(row: Any) -> Grant:
    return Grant(
        grant_id=row[0],
        client_id=row[1],
        user_id=row[2],
        username=row[3],
        scope=split(row[4]),
        aud=tuple(row[5].split()) if row[5] else (),
        created_at=row[6],
        auth_time=row[7],
        expires_at=row[8],
        revoked_at=row[9],
        claims=row[10],
    )


def grant_params(grant: Grant) -> tuple[Any, ...]:
    return (
        grant.grant_id,
        grant.client_id,
        grant.user_id,
        grant.username,
        join(grant.scope),
        " ".join(grant.aud),
        grant.created_at,
        grant.auth_time,
        grant.expires_at,
        grant.revoked_at,
        grant.claims,
    )


def code_from_row(row: Any) -> AuthorizationCode:
    return AuthorizationCode(
        code_hash=bytes(row[0]),
        grant_id=row[1],
        client_id=row[2],
        redirect_uri=row[3],
        code_challenge=row[4],
        created_at=row[5],
        expires_at=row[6],
        used_at=row[7],
        nonce=row[8],
        dpop_jkt=row[9],
    )


def code_params(code: AuthorizationCode) -> tuple[Any, ...]:
    return (
        code.code_hash,
        code.grant_id,
        code.client_id,
        code.redirect_uri,
        code.code_challenge,
        code.created_at,
        code.expires_at,
        code.used_at,
        code.nonce,
        code.dpop_jkt,
    )


def revoked_token_payload(row: Any) -> dict[str, Any]:
    """The token_revoked event payload from ``token_hash, jti, client_id, kind, aud, exp``."""
    return {
        "token_sha256": bytes(row[0]).hex(),
        "jti": row[1],
        "client_id": row[2],
        "token_type": row[3],
        "aud": row[4].split() if row[4] else [],
        "exp": row[5],
    }


REGISTRATION_COLUMNS = "client_id, method, registered_at, access_token_hash, metadata, used_at"
INITIAL_TOKEN_COLUMNS = "token_id, token_hash, created_at, expires_at, uses_left, description"


def registration_from_row(row: Any) -> ClientRegistration:
    return ClientRegistration(
        client_id=row[0],
        method=row[1],
        registered_at=row[2],
        access_token_hash=bytes(row[3]),
        metadata=row[4],
        used_at=row[5],
    )


def registration_params(r: ClientRegistration) -> tuple[Any, ...]:
    return (r.client_id, r.method, r.registered_at, r.access_token_hash, r.metadata, r.used_at)


def initial_token_from_row(row: Any) -> InitialAccessToken:
    return InitialAccessToken(
        token_id=row[0],
        token_hash=bytes(row[1]),
        created_at=row[2],
        expires_at=row[3],
        uses_left=row[4],
        description=row[5],
    )


def initial_token_params(t: InitialAccessToken) -> tuple[Any, ...]:
    return (t.token_id, t.token_hash, t.created_at, t.expires_at, t.uses_left, t.description)
