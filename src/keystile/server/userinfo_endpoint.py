"""The UserInfo endpoint (OIDC Core 1.0 §5.3): claims about the user an access token names.

A protected resource like any other (RFC 6750): the access token comes as a Bearer header
(§2.1) or, on POST, as a form field (§2.2), and is judged exactly as introspection judges it
(one read of the stored token), so a revoked, expired or unknown token gets
``401 invalid_token`` at once, with its ``WWW-Authenticate`` challenge (§3.1).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from keystile.core.bearer import bearer_token, challenge
from keystile.core.forms import parse_form
from keystile.core.jwt_profile import looks_like_jwt
from keystile.core.models import TokenRecord
from keystile.core.oidc import OPENID, userinfo_claims
from keystile.core.tokens import token_hash, token_kind
from keystile.errors import (
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    OAuthError,
    StoreUnavailable,
)
from keystile.server.http import ClientDisconnected, read_body
from keystile.server.keys import SigningKeys
from keystile.settings import ServerSettings
from keystile.store.base import Store

log = logging.getLogger("keystile.server")

# no-store: the answer carries personal data (and OIDC Core §5.3.2 names no caching).
_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FORM = "application/x-www-form-urlencoded"


class UserInfoEndpoint:
    """GET|POST /oauth2/userinfo."""

    def __init__(self, settings: ServerSettings, store: Store, signing: SigningKeys) -> None:
        self.settings = settings
        self.store = store
        self.signing = signing
        self.clock = signing.clock

    async def endpoint(self, request: Request) -> Response:
        try:
            return await self._answer(request)
        except OAuthError as exc:
            # RFC 6750 §3: every refusal carries a Bearer challenge; a request with no token
            # at all gets the bare one (§3.1: no error code).
            headers = {**_HEADERS, **exc.headers}
            if "WWW-Authenticate" not in headers:
                headers["WWW-Authenticate"] = challenge(
                    error=exc.error, description=exc.description
                )
            return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)
        except StoreUnavailable as exc:
            log.error("store unavailable", extra={"endpoint": "userinfo", "error": str(exc)})
            return JSONResponse(
                {"error": "temporarily_unavailable"},
                status_code=503,
                headers={**_HEADERS, "Retry-After": "1"},
            )
        except ClientDisconnected:
            return Response(status_code=400)

    async def _answer(self, request: Request) -> JSONResponse:
        token = await self._token(request)
        record = await self._find(token)
        now = self.clock.now()
        # The same judgement as introspection (RFC 7662 §2.2): one stored record, active
        # now, an access token; and it must come from an OpenID Connect grant (§5.3.1).
        if (
            record is None
            or record.kind != "access_token"
            or not record.is_active(now)
            or record.grant_id is None
        ):
            raise InvalidToken("the access token is not active")
        if OPENID not in record.scope:
            raise InsufficientScope(
                "the access token was not issued with scope openid",
                headers={
                    "WWW-Authenticate": challenge(error="insufficient_scope", scope=OPENID),
                },
            )
        grant = await self.store.get_grant(record.grant_id)
        user = await self.store.get_user(record.sub) if record.sub else None
        if grant is None or grant.revoked_at is not None or user is None or not user.enabled:
            raise InvalidToken("the access token is not active")
        body = userinfo_claims(user, grant, record.scope)
        log.info(
            "userinfo answered",
            extra={"client_id": record.client_id, "jti": record.jti, "sub": user.user_id},
        )
        return JSONResponse(body, headers=_HEADERS)

    async def _token(self, request: Request) -> str:
        """The bearer token, from the header (RFC 6750 §2.1) or a POSTed form (§2.2); a
        request using both methods is refused (§2)."""
        header = request.headers.get("authorization")
        from_header = bearer_token(header)
        from_body = None
        ctype = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if request.method == "POST" and ctype == _FORM:
            body = await read_body(
                request.receive,
                request.headers.get("content-length"),
                self.settings.max_body_bytes,
            )
            from_body = parse_form(body, ctype).get("access_token")
        if from_header is not None and from_body is not None:
            raise InvalidRequest("send the access token one way only (RFC 6750 section 2)")
        token = from_header or from_body
        if token is None:
            raise InvalidToken(
                "an access token is required", headers={"WWW-Authenticate": challenge()}
            )
        return token

    async def _find(self, token: str) -> TokenRecord | None:
        if looks_like_jwt(token):
            _, record = await self.signing.lookup(token)  # ours, checked before any read
            return record
        if token_kind(token) != "access_token":  # wrong prefix or checksum: no read at all
            return None
        return await self.store.find_token(token_hash(token))
