"""private_key_jwt client authentication (RFC 7523 §2.2, §3; RFC 7521 §4.2).

The client signs a short-lived JWT with a key of its registered JWK Set and sends it as
``client_assertion`` with ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:
jwt-bearer``. Our rules, where RFC 7523 leaves a choice:

- ``iss`` and ``sub`` are the client id (§3 items 1 and 2).
- ``aud`` must contain the issuer identifier, the token endpoint URL or the URL of the
  endpoint called (§3 item 3 allows all three; each names this server only).
- ``exp`` is required (§3 item 4), and at most ``MAX_LIFETIME`` seconds ahead: an assertion
  is for one request, not a credential to keep.
- ``jti`` is required, and each is accepted once (§3 item 7); the caller records it.
- Asymmetric algorithms only; ``none`` and HMAC are refused.

Clock skew of ``LEEWAY`` seconds is allowed on ``exp``, ``nbf`` and ``iat`` (§3 items 4-6).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson
from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import KeySet

from keystile.core.client_auth import invalid_client
from keystile.core.models import Client
from keystile.core.signing_keys import jws_registry
from keystile.errors import InvalidClient, InvalidRequest

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2
MAX_LIFETIME = 300  # seconds an assertion may still be valid when we receive it
LEEWAY = 30
MAX_ASSERTION_LENGTH = 8192
# RFC 7518 §3.1 asymmetric algorithms, and Ed25519 (RFC 9864). HMAC would need a shared
# secret (client_secret_jwt, not supported); "none" is no signature at all.
ASSERTION_ALGS: tuple[str, ...] = (
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "Ed25519",
    "EdDSA",
)
_REGISTRY = jws_registry(ASSERTION_ALGS, strict_header=False)  # x5t, cty... are harmless
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True, slots=True)
class ClientAssertion:
    """A client assertion as received, before anything about it is trusted."""

    client_id: str
    value: str = field(repr=False)
    payload: bytes = field(repr=False, default=b"")  # as sent, not verified yet
    claims: dict[str, Any] = field(repr=False, default_factory=dict)  # parsed from payload


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    client_id: str
    jti: str
    exp: int


def has_assertion(form: dict[str, str]) -> bool:
    return "client_assertion" in form or "client_assertion_type" in form


def extract_assertion(authorization: str | None, form: dict[str, str]) -> ClientAssertion:
    """The assertion a request carries (RFC 7521 §4.2), read without verifying it.

    The client id is the unverified ``sub`` (or ``iss``); it only picks whose keys to try.
    """
    kind = form.get("client_assertion_type")
    value = form.pop("client_assertion", None)
    if kind is None or value is None:
        raise InvalidRequest("client_assertion and client_assertion_type go together")
    if authorization is not None or "client_secret" in form:
        raise InvalidRequest("use one client authentication method, not two")
    if kind != JWT_BEARER:
        raise invalid_client(f"client_assertion_type must be {JWT_BEARER}")
    if len(value) > MAX_ASSERTION_LENGTH or value.count(".") != 2:
        raise invalid_client("client_assertion is not a signed JWT")
    try:
        payload = jws.extract_compact(value.encode("ascii")).payload
        claims = orjson.loads(payload)
    except (JoseError, ValueError, UnicodeError):
        raise invalid_client("client_assertion is not a signed JWT") from None
    if not isinstance(claims, dict):
        raise invalid_client("client_assertion is not a signed JWT")
    client_id = claims.get("sub")
    if not isinstance(client_id, str) or not client_id or len(client_id) > 255:
        raise invalid_client("client_assertion needs sub: the client id (RFC 7523 section 3)")
    given = form.get("client_id")
    if given is not None and given != client_id:
        # RFC 7521 §4.2: client_id, when present, must name the client the assertion is for.
        raise invalid_client("client_id differs from the client assertion's subject")
    return ClientAssertion(client_id, value, payload, claims)


def parse_client_jwks(text: str) -> KeySet:
    """A client's registered JWK Set; ValueError unless it holds usable public keys only."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("the JWKS is not JSON") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError('a JWK Set is an object with a non-empty "keys" array (RFC 7517 §5)')
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise ValueError("every member of keys must be a JWK object")
        if _PRIVATE_MEMBERS & set(jwk):
            raise ValueError("register public keys only: this JWKS holds private key material")
        if jwk.get("kty") not in ("EC", "RSA", "OKP"):
            raise ValueError("only EC, RSA and OKP public keys can sign client assertions")
    with warnings.catch_warnings():
        # joserfc warns about short RSA keys; we refuse them instead of warning.
        warnings.simplefilter("error", SecurityWarning)
        try:
            return KeySet.import_key_set({"keys": keys})
        except (JoseError, ValueError, TypeError, SecurityWarning) as exc:
            raise ValueError(f"the JWKS holds an unusable key: {exc}") from None


def verify_assertion(
    assertion: ClientAssertion,
    client: Client,
    keys: KeySet,
    *,
    audiences: frozenset[str],
    now: int,
) -> VerifiedAssertion:
    """Check claims and signature (RFC 7523 §3); InvalidClient otherwise.

    The claims are checked first, on the payload as sent: no cryptography is spent on an
    assertion that could not pass anyway (wrong ``iss``/``sub``/``aud``, expired, no
    ``jti``...). Then one signature verification, with the key ``kid`` names (or the only
    key), and the signed payload must be the very payload checked.

    Replay is the caller's check: it records the returned ``jti`` until ``exp``.
    """
    try:
        result = check_assertion_claims(
            assertion.claims, client.client_id, audiences=audiences, now=now
        )
    except InvalidClient as exc:
        # Nothing is verified yet, so the sender need not be the client: the same answer as
        # for an unknown client or a bad signature (the reason is the exception's cause, for
        # the log).
        raise invalid_client() from exc
    try:
        verified = jws.deserialize_compact(assertion.value, keys, registry=_REGISTRY)
    except (JoseError, ValueError, LookupError, TypeError):
        # Same answer as for an unknown client: nothing learned about what exists.
        raise invalid_client() from None
    if verified.payload != assertion.payload:  # the same compact value: never differs
        raise invalid_client()
    return result


def check_assertion_claims(
    claims: Any, client_id: str, *, audiences: frozenset[str], now: int
) -> VerifiedAssertion:
    """The claim rules of RFC 7523 §3 for ``client_id``; checks no signature."""
    if not isinstance(claims, dict):
        raise invalid_client()
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise invalid_client("client assertion: iss and sub must both be the client id")
    aud = claims.get("aud")
    given = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in audiences for a in given):
        raise invalid_client("client assertion: aud must name this authorization server")
    exp = claims.get("exp")
    if not _is_time(exp):
        raise invalid_client("client assertion: exp is required (RFC 7523 section 3)")
    if now >= exp + LEEWAY:
        raise invalid_client("client assertion has expired")
    if exp > now + MAX_LIFETIME + LEEWAY:
        raise invalid_client(f"client assertion: exp may be at most {MAX_LIFETIME} s ahead")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_time(nbf) or nbf > now + LEEWAY):
        raise invalid_client("client assertion is not valid yet (nbf)")
    iat = claims.get("iat")
    if iat is not None and (not _is_time(iat) or iat > now + LEEWAY):
        raise invalid_client("client assertion: iat is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise invalid_client("client assertion: jti is required, to refuse replays")
    return VerifiedAssertion(client_id, jti, int(exp))


def _is_time(value: object) -> TypeGuard[int | float]:
    # NumericDate (RFC 7519 §2): a JSON number; booleans are not numbers here.
    return isinstance(value, int | float) and not isinstance(value, bool)
