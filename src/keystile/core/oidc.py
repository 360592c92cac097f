"""OpenID Connect Core 1.0 on the code flow: authentication request parameters, ID tokens,
and the standard claims of a user (docs/oidc.md).

Pure functions, no I/O: the authorization endpoint parses ``nonce``, ``prompt``, ``max_age``,
``login_hint`` and ``claims`` here (§3.1.2.1, §5.5); the token endpoint builds ID tokens
(§2, §3.1.3.6, §12.2); UserInfo (§5.3) and the ID token take their claims from one place.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import orjson

from keystile.core.models import Client, Grant, User

OPENID = "openid"
# OIDC Core §2 defines no typ; "JWT" is what every RP library accepts.
ID_TOKEN_TYP = "JWT"  # noqa: S105 - a media type, not a secret
ID_TOKEN_TTL = 3600  # seconds, by default (id_token_ttl): it says who signed in, grants nothing
MAX_NONCE = 512  # characters; a nonce is echoed in a signed token, so keep it bounded
MAX_CLAIMS_REQUEST = 4096  # characters of the claims parameter (JSON)

# §5.4: the claims each scope asks for, of those keystile keeps for a user.
SCOPE_CLAIMS: Mapping[str, tuple[str, ...]] = {
    "profile": ("name", "preferred_username"),
    "email": ("email", "email_verified"),
}
USER_CLAIMS: tuple[str, ...] = ("name", "preferred_username", "email", "email_verified")
# Discovery §3 claims_supported: what an ID token or a UserInfo answer may carry.
CLAIMS_SUPPORTED: tuple[str, ...] = (
    "sub",
    "iss",
    "aud",
    "exp",
    "iat",
    "auth_time",
    "nonce",
    "azp",
    "at_hash",
    *USER_CLAIMS,
)
# §3.1.2.1: the prompt values; "select_account" is refused (one account per browser).
PROMPTS = frozenset({"none", "login", "consent"})

# §3.1.2.6 error codes, sent to the redirect URI like the RFC 6749 ones.
LOGIN_REQUIRED = "login_required"
CONSENT_REQUIRED = "consent_required"
INTERACTION_REQUIRED = "interaction_required"

ClaimsTarget = Literal["id_token", "userinfo"]


class OidcRequestError(ValueError):
    """A malformed OpenID Connect parameter: ``invalid_request`` at the redirect URI."""


def parse_prompt(value: str | None) -> frozenset[str]:
    """§3.1.2.1 ``prompt``: space-delimited; ``none`` with any other value is an error."""
    prompt = frozenset(value.split()) if value else frozenset()
    unknown = prompt - PROMPTS
    if unknown:
        raise OidcRequestError("prompt may be none, login or consent")
    if "none" in prompt and len(prompt) > 1:
        raise OidcRequestError("prompt=none cannot be combined with other values")
    return prompt


def parse_max_age(value: str | None) -> int | None:
    """§3.1.2.1 ``max_age``: seconds since the user last authenticated, a non-negative
    integer."""
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise OidcRequestError("max_age must be a non-negative integer")
    return int(value)


def parse_nonce(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_NONCE:
        raise OidcRequestError(f"nonce is too long (at most {MAX_NONCE} characters)")
    return value


def parse_claims_request(value: str | None) -> str:
    """§5.5 ``claims``: a JSON object whose ``id_token`` and ``userinfo`` members name the
    claims wanted. Normalised to ``{"id_token": [...], "userinfo": [...]}`` as JSON, or "" for
    none. Claims we do not keep are dropped, as §5.5 allows; ``essential`` and ``values`` of
    user claims change nothing beyond returning what we have (§5.5.1 lets the OP do so). One
    ``value`` binds: ``id_token.sub.value``, kept as ``"sub"``: only that user may be
    answered for (§5.5.1, see ``requested_subject``)."""
    if value is None:
        return ""
    if len(value) > MAX_CLAIMS_REQUEST:
        raise OidcRequestError("the claims parameter is too long")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise OidcRequestError("the claims parameter must be a JSON object") from None
    if not isinstance(doc, dict):
        raise OidcRequestError("the claims parameter must be a JSON object")
    out: dict[str, Any] = {}
    for target in ("id_token", "userinfo"):
        member = doc.get(target)
        if member is None:
            continue
        if not isinstance(member, dict) or any(
            v is not None and not isinstance(v, dict) for v in member.values()
        ):
            raise OidcRequestError(f"claims.{target} must map claim names to null or objects")
        names = sorted(n for n in member if n in USER_CLAIMS)
        if names:
            out[target] = names
        if (
            target == "id_token"
            and isinstance(member.get("sub"), dict)
            and "value" in member["sub"]
        ):
            wanted = member["sub"]["value"]
            if not isinstance(wanted, str) or not wanted:
                raise OidcRequestError("claims.id_token.sub.value must be a non-empty string")
            out["sub"] = wanted
    return orjson.dumps(out).decode() if out else ""


def requested_subject(claims: str) -> str | None:
    """§5.5.1: the ``sub`` an RP asked for by value in the ID token. The OP "MUST only send a
    positive response if the End-User identified by that sub value" is the one signed in,
    and "MUST NOT reply with an ID Token or Access Token for a different user"."""
    if not claims:
        return None
    wanted = orjson.loads(claims).get("sub")
    return wanted if isinstance(wanted, str) else None


def claims_requested(claims: str, target: ClaimsTarget) -> tuple[str, ...]:
    """The claim names a normalised claims request asks for in ``target``."""
    if not claims:
        return ()
    names = orjson.loads(claims).get(target, [])
    return tuple(n for n in names if n in USER_CLAIMS)


def scope_claims(scope: Iterable[str]) -> tuple[str, ...]:
    """§5.4: the user claims ``scope`` asks for."""
    wanted = {c for s in scope for c in SCOPE_CLAIMS.get(s, ())}
    return tuple(c for c in USER_CLAIMS if c in wanted)


def identity_claims(scope: Iterable[str], claims: str) -> tuple[str, ...]:
    """Every user claim an authorization asks for (scopes and claims request): what the
    consent page names."""
    scope = frozenset(scope)
    if OPENID not in scope:
        return ()
    wanted = {
        *scope_claims(scope),
        *claims_requested(claims, "id_token"),
        *claims_requested(claims, "userinfo"),
    }
    return tuple(c for c in USER_CLAIMS if c in wanted)


def user_claims(user: User, names: Iterable[str]) -> dict[str, Any]:
    """§5.1 standard claims of ``user``, those in ``names`` that have a value (§5.3.2:
    claims without a value are omitted, not sent as null)."""
    values: dict[str, Any] = {
        "name": user.name,
        "preferred_username": user.preferred_username or user.username,
        "email": user.email,
        "email_verified": user.email_verified if user.email else None,
    }
    return {n: values[n] for n in names if values.get(n) is not None}


def userinfo_claims(user: User, grant: Grant, scope: Iterable[str]) -> dict[str, Any]:
    """§5.3.2: ``sub`` and the claims the access token's scopes and the claims request's
    ``userinfo`` member ask for."""
    names = {*scope_claims(scope), *claims_requested(grant.claims, "userinfo")}
    return {"sub": user.user_id, **user_claims(user, [c for c in USER_CLAIMS if c in names])}


def token_hash_claim(value: str, alg: str) -> str:
    """§3.1.3.6 ``at_hash``: base64url of the left half of the hash of the token's ASCII,
    with the hash of the ID token's JWS algorithm (SHA-256 for ES256 and RS256; SHA-512 for
    EdDSA over Ed25519, the convention RP libraries follow)."""
    digest = (
        hashlib.sha512(value.encode("ascii")).digest()
        if alg in ("Ed25519", "EdDSA")
        else hashlib.sha256(value.encode("ascii")).digest()
    )
    half = digest[: len(digest) // 2]
    return base64.urlsafe_b64encode(half).rstrip(b"=").decode("ascii")


def id_token_claims(
    *,
    issuer: str,
    client: Client,
    grant: Grant,
    user: User,
    now: int,
    alg: str,
    access_token: str,
    nonce: str | None,
    ttl: int = ID_TOKEN_TTL,
) -> dict[str, Any]:
    """The ID token of an authorization code or refresh token response (§2, §3.1.3.3, §12.2).

    ``sub`` is the user's stable id and ``auth_time`` when they signed in, on refresh too
    (§12.2); ``nonce`` only for the code (a refreshed ID token carries none, §12.2);
    ``at_hash`` binds it to the access token issued with it (§3.1.3.6)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": user.user_id,
        "aud": client.client_id,
        "exp": now + ttl,
        "iat": now,
        "auth_time": grant.auth_time,
        # §2: azp, the party the ID token was issued to; the sole audience here.
        "azp": client.client_id,
        "at_hash": token_hash_claim(access_token, alg),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    claims.update(user_claims(user, claims_requested(grant.claims, "id_token")))
    return claims
