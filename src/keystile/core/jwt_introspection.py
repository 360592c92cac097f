"""JWT responses for token introspection (RFC 9701): which answer a caller gets, and signing it.

A resource server asks with ``Accept: application/token-introspection+jwt`` (§4) and gets a
JWT with header ``typ: token-introspection+jwt``, claims ``iss``, ``aud`` (the caller's client
id), ``iat`` and ``token_introspection``: the RFC 7662 answer, unchanged (§5).

What each resource server's ``introspection_response`` setting does:

- ``json``: plain JSON whatever the Accept header says (RFC 9110 §12.5.1 lets a server
  disregard Accept); the Content-Type tells the caller what it got.
- ``jwt``: a JWT when Accept names ``application/token-introspection+jwt`` with q > 0,
  otherwise JSON if Accept allows it; neither acceptable gives 406.
- ``jwt-required``: only JWTs; a request whose Accept does not ask for one gets 406, so a
  misconfigured resource server fails loudly instead of trusting unsigned answers.
"""

from __future__ import annotations

from typing import Any, Literal

from keystile.core.jwt_profile import sign_jwt
from keystile.core.signing_keys import Signer
from keystile.errors import NotAcceptable

JWT_MEDIA_TYPE = "application/token-introspection+jwt"  # RFC 9701 §4, §10.2
JWT_TYP = "token-introspection+jwt"  # RFC 9701 §5: the media type without "application/"
_JSON_RANGES = frozenset({"application/json", "application/*", "*/*"})

Shape = Literal["json", "jwt"]


def _accepted(accept: str) -> tuple[bool, bool]:
    """(JWT acceptable, JSON acceptable) for an Accept header value (RFC 9110 §12.5.1)."""
    jwt = json = False
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media == JWT_MEDIA_TYPE:
            jwt = True
        elif media in _JSON_RANGES:
            json = True
    return jwt, json


def response_shape(mode: str, accept: str | None) -> Shape:
    """Which answer to send a caller with this setting and Accept header; 406 if none fits."""
    if mode == "json":
        return "json"
    wants_jwt, takes_json = _accepted(accept) if accept is not None else (False, True)
    if wants_jwt:
        return "jwt"
    if mode == "jwt" and takes_json:
        return "json"
    if mode == "jwt-required":
        raise NotAcceptable(
            f"this resource server must ask for signed answers: Accept: {JWT_MEDIA_TYPE}"
        )
    raise NotAcceptable(f"acceptable answers are application/json and {JWT_MEDIA_TYPE}")


def introspection_jwt(
    body: dict[str, Any], *, issuer: str, audience: str, now: int, signer: Signer
) -> str:
    """The signed RFC 9701 §5 answer carrying ``body`` (the RFC 7662 §2.2 response)."""
    claims = {"iss": issuer, "aud": audience, "iat": now, "token_introspection": body}
    return sign_jwt(claims, signer, typ=JWT_TYP)
