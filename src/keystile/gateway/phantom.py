"""Phantom tokens: upstream gets the AS's signed introspection answer (RFC 9701), not the token.

On a route with ``phantom_token = true`` the caller's token is first checked like on any
route (cache, events, policy). Then the gateway asks the AS for the same introspection as a
JWT (``Accept: application/token-introspection+jwt``, RFC 9701 §4) and forwards
``Authorization: Bearer <that JWT>`` instead of the caller's token. The upstream verifies the
signature against the AS's ``jwks_uri``, ``typ`` = ``token-introspection+jwt``, ``iss``, and
``aud`` = the gateway's client id, and reads the claims from ``token_introspection``; the
caller's token never leaves the gateway.

The JWT is kept for the same time as a cached introspection answer (``[cache] max_ttl``, never
past the token's ``exp``). It is only ever handed out after the SDK said the token is active,
so a revocation event (which evicts the SDK's entry) stops it at once too. Anything but a
signed answer saying ``active: true`` fails closed: an AS that answers plain JSON (the
resource server's ``introspection_response`` is ``json``) is a 503, logged as a setup error.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import httpx

from keystile.errors import IntrospectionUnavailable, InvalidToken, SignedAnswersUnavailable
from keystile.resource.cache import cache_key
from keystile.resource.principal import Principal

if TYPE_CHECKING:
    from keystile.gateway.config import GatewayConfig
    from keystile.resource.introspector import TokenValidator

log = logging.getLogger("keystile.gateway")

JWT_MEDIA_TYPE = "application/token-introspection+jwt"  # RFC 9701 §4


def _claims(jws: str) -> dict[str, Any]:
    """The payload of a compact JWS, unverified: the gateway got it from the AS itself over
    the channel it trusts for every introspection answer; the upstream verifies it."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    if not isinstance(header, dict) or header.get("typ") != "token-introspection+jwt":
        raise ValueError("not a token-introspection+jwt")
    payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    if not isinstance(payload, dict):
        raise ValueError("the payload is not a JSON object")
    return payload


class PhantomTokens:
    """``await phantoms.exchange(token, principal)`` → the signed introspection JWT."""

    def __init__(
        self, config: GatewayConfig, validator: TokenValidator, *, max_entries: int = 100_000
    ) -> None:
        self.validator = validator
        self.max_ttl = config.cache.max_ttl
        self.max_entries = max_entries
        a = config.authorization_server
        self._form_auth = (
            {"client_id": a.client_id, "client_secret": config.client_secret}
            if a.auth_method == "client_secret_post"
            else {}
        )
        self._entries: OrderedDict[bytes, tuple[float, str]] = OrderedDict()
        self.fetched = 0  # calls made to the AS, for tests and metrics

    async def exchange(self, token: str, principal: Principal) -> str:
        key = cache_key(token)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(key)
            return entry[1]
        jws = await self._fetch(token)
        ttl = self.max_ttl
        if principal.exp is not None:
            ttl = min(ttl, principal.exp - time.time())
        if ttl > 0:
            self._entries[key] = (now + ttl, jws)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return jws

    async def _fetch(self, token: str) -> str:
        v = self.validator
        if v.introspection_endpoint is None:
            raise IntrospectionUnavailable("the introspection endpoint is not known yet")
        headers = {"accept": JWT_MEDIA_TYPE}
        if not self._form_auth:
            headers["authorization"] = v.basic_authorization
        data = {"token": token, "token_type_hint": "access_token", **self._form_auth}
        self.fetched += 1
        try:
            r = await v.http.post(v.introspection_endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise IntrospectionUnavailable(f"introspection failed: {type(exc).__name__}") from exc
        media = r.headers.get("content-type", "").split(";")[0].strip().lower()
        if r.status_code != 200:
            raise IntrospectionUnavailable(f"introspection answered {r.status_code}")
        if media != JWT_MEDIA_TYPE:
            # The AS answered, in plain JSON: its resource server for our client is not set
            # to sign (keystile: `resource update … --introspection-response jwt`).
            log.error(
                "no signed introspection answer (RFC 9701) for a phantom_token route: set the "
                "resource server's introspection response to jwt at the AS",
                extra={"status": r.status_code, "content_type": media},
            )
            raise SignedAnswersUnavailable("the AS gave no signed introspection answer")
        jws = r.text.strip()
        try:
            answer = _claims(jws).get("token_introspection")
        except ValueError as exc:
            raise IntrospectionUnavailable(f"invalid signed introspection answer: {exc}") from exc
        if not isinstance(answer, dict) or answer.get("active") is not True:
            # Revoked or expired since the check a moment ago.
            raise InvalidToken("the access token is not active")
        return jws
