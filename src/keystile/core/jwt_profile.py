"""JWT access tokens (RFC 9068): what we sign, and recognising our own before any lookup.

A JWT access token is also recorded like an opaque one, by SHA-256 of its exact string (and
its ``jti``), so introspection, revocation and revocation events treat both formats alike.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, Key

from keystile.core.introspection import confirmation
from keystile.core.models import TokenRecord
from keystile.core.scope import format_scope
from keystile.core.signing_keys import SIGNING_ALGS, KeyRing, Signer, jws_registry
from keystile.core.tokens import token_hash

AT_JWT_TYP = "at+jwt"  # RFC 9068 §2.1: the media type application/at+jwt, shortened (RFC 7515)
MAX_JWT_LENGTH = 8192  # ours are ~300-600 characters; anything far larger is not ours
# Three base64url segments, none empty: a JWS compact serialization (RFC 7515 §7.1).
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_VERIFY_REGISTRY = jws_registry(SIGNING_ALGS)


def looks_like_jwt(token: str) -> bool:
    """True for a token shaped like a signed JWT (never an opaque keystile token)."""
    return (
        len(token) <= MAX_JWT_LENGTH
        and token.count(".") == 2
        and _JWT_SHAPE.fullmatch(token) is not None
    )


PUBLISH_GRANULARITY = 300  # seconds; see published_until


def published_until(exp: int) -> int:
    """How long the key that signed a token expiring at ``exp`` stays published: ``exp``
    rounded up, so recording it writes to the key's row once per few minutes, not per token."""
    return -(-exp // PUBLISH_GRANULARITY) * PUBLISH_GRANULARITY


def access_token_claims(
    record: TokenRecord, *, issuer: str, auth_time: int | None = None
) -> dict[str, Any]:
    """The claims of an RFC 9068 §2.2 access token for a stored record (``auth_time``:
    when the user signed in, §2.2.1, for tokens of the authorization code grant)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": record.sub if record.sub is not None else record.client_id,
        # A single audience is a string, several an array (RFC 7519 §4.1.3).
        "aud": record.aud[0] if len(record.aud) == 1 else list(record.aud),
        "exp": record.exp,
        "iat": record.iat,
        "jti": record.jti,
        "client_id": record.client_id,
    }
    if record.scope:
        claims["scope"] = format_scope(record.scope)  # §2.2.3: space-delimited, as in §3.3
    if auth_time is not None:
        claims["auth_time"] = auth_time
    cnf = confirmation(record)
    if cnf is not None:
        claims["cnf"] = cnf  # RFC 9449 §6.1, RFC 8705 §3.1
    return claims


def sign_jwt(claims: dict[str, Any], signer: Signer, *, typ: str) -> str:
    """A compact JWS over ``claims`` with the active key, its ``kid`` and ``typ`` in the header."""
    header = {"alg": signer.alg, "kid": signer.kid, "typ": typ}
    return jws.serialize_compact(
        header, orjson.dumps(claims), signer.key, algorithms=[signer.alg], registry=signer.registry
    )


def sign_access_token(
    record: TokenRecord, *, issuer: str, signer: Signer, auth_time: int | None = None
) -> str:
    """The JWT for ``record``: header ``typ: at+jwt`` and ``kid`` (RFC 9068 §2.1)."""
    claims = access_token_claims(record, issuer=issuer, auth_time=auth_time)
    return sign_jwt(claims, signer, typ=AT_JWT_TYP)


def verify_access_token(token: str, ring: KeyRing, *, issuer: str, now: int) -> bytes | None:
    """SHA-256 of ``token`` if it is one of our access tokens, else None. No I/O.

    Ours means: typ ``at+jwt``, a ``kid`` we publish, that key's algorithm, a valid signature
    and our ``iss``. Expiry, revocation and audience are the stored record's business.
    """
    digest = token_hash(token)
    if ring.recall(digest, now):
        return digest

    def key_for(guest: GuestProtocol) -> Key:
        header = guest.headers()
        if header.get("typ") != AT_JWT_TYP:
            raise LookupError("not an RFC 9068 access token")
        key, _ = ring.verification_key(header.get("kid"), header.get("alg"), now)
        return key

    try:
        verified = jws.deserialize_compact(token, key_for, registry=_VERIFY_REGISTRY)
        claims = orjson.loads(verified.payload)
    except (JoseError, ValueError, LookupError, TypeError):
        return None
    if not isinstance(claims, dict) or claims.get("iss") != issuer:
        return None
    ring.remember(digest, str(verified.headers()["kid"]))
    return digest
