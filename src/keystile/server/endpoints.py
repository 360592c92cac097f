"""The OAuth endpoints: token (RFC 6749 §4.4), introspection (RFC 7662), revocation (RFC 7009).

Each handler parses the form, authenticates the caller, calls the core and renders the
result. They speak raw ASGI because these are the hot paths (see ``http.py``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from keystile.clock import Clock
from keystile.core.client_auth import check_client, extract_credentials, invalid_client
from keystile.core.forms import Form, parse_form
from keystile.core.introspection import introspection_response
from keystile.core.issuance import client_credentials_grant
from keystile.core.models import Client, TokenRecord
from keystile.core.scope import format_scope
from keystile.core.tokens import new_access_token, new_jti, token_hash, token_kind
from keystile.errors import (
    IntrospectionForbidden,
    InvalidRequest,
    MethodNotAllowed,
    OAuthError,
    StoreUnavailable,
    TooManyRequests,
    UnsupportedGrantType,
)
from keystile.server.http import (
    NO_STORE_HEADERS,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    auth_header,
    header,
    read_body,
    send_json,
)
from keystile.server.logs import request_id
from keystile.server.metrics import ServerMetrics
from keystile.server.throttle import FailureThrottle
from keystile.settings import ServerSettings
from keystile.store.base import Store

log = logging.getLogger("keystile.server")

Result = tuple[int, Any]
Handler = Callable[[Scope, Form], Awaitable[Result]]

_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_RETRY_AFTER = b"1"
_REPEATABLE = frozenset({"resource"})  # RFC 8707 §2: resource may be given several times
_NO_BODY = object()


def _request_id(scope: Scope) -> str:
    given = header(scope, b"x-request-id")
    if given and len(given) <= 128 and all(ch in _REQUEST_ID_CHARS for ch in given):
        return given
    return secrets.token_hex(8)


class OAuthEndpoints:
    """The three OAuth endpoints over one store."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        clock: Clock,
        metrics: ServerMetrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.issuer = settings.effective_issuer
        self.max_body = settings.max_body_bytes
        self.throttle = FailureThrottle(
            clock, limit=settings.throttle_failures, window=settings.throttle_window
        )
        self.log_success = settings.access_log

    # -- the shared request cycle ---------------------------------------------------------

    def asgi(
        self, endpoint: str, handler: Handler
    ) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        metrics = self.metrics
        ok = metrics.ok[endpoint]
        timer = metrics.timer[endpoint]

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            started = time.perf_counter()
            rid = _request_id(scope)
            token = request_id.set(rid)
            rid_header = (b"x-request-id", rid.encode())
            outcome = "ok"
            status = 200
            try:
                try:
                    if scope["method"] != "POST":
                        raise MethodNotAllowed(f"use POST for the {endpoint} endpoint")
                    body = await read_body(scope, receive, self.max_body)
                    form = parse_form(body, header(scope, b"content-type"), repeatable=_REPEATABLE)
                    status, payload = await handler(scope, form)
                except OAuthError as exc:
                    status, outcome = exc.status_code, exc.error
                    extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
                    if isinstance(exc, MethodNotAllowed):
                        extra.append((b"allow", b"POST"))
                    extra.append(rid_header)
                    log.log(
                        logging.WARNING if status in (401, 429) else logging.INFO,
                        "request refused",
                        extra={
                            "endpoint": endpoint,
                            "status": status,
                            "error": exc.error,
                            "description": exc.description,
                            "source": _source(scope),
                        },
                    )
                    await send_json(send, status, exc.body(), extra=extra)
                except StoreUnavailable as exc:
                    # Fail closed and tell the truth: "could not check" is never "inactive".
                    status, outcome = 503, "temporarily_unavailable"
                    log.error("store unavailable", extra={"endpoint": endpoint, "error": str(exc)})
                    await send_json(
                        send,
                        503,
                        {
                            "error": "temporarily_unavailable",
                            "error_description": "the token store is unavailable; retry shortly",
                        },
                        extra=[(b"retry-after", _RETRY_AFTER), rid_header],
                    )
                else:
                    if payload is _NO_BODY:
                        await send(
                            {
                                "type": "http.response.start",
                                "status": status,
                                "headers": [
                                    *NO_STORE_HEADERS[1:],
                                    (b"content-length", b"0"),
                                    rid_header,
                                ],
                            }
                        )
                        await send({"type": "http.response.body", "body": b""})
                    else:
                        await send_json(send, status, payload, extra=[rid_header])
            except ClientDisconnected:
                outcome = "disconnected"
            except Exception:
                status, outcome = 500, "server_error"
                log.exception("unexpected error", extra={"endpoint": endpoint})
                await send_json(
                    send,
                    500,
                    {"error": "server_error", "error_description": "internal error"},
                    extra=[rid_header],
                )
            finally:
                elapsed = time.perf_counter() - started
                timer.observe(elapsed)
                if outcome == "ok":
                    ok.inc()
                else:
                    metrics.requests.labels(endpoint, outcome).inc()
                if self.log_success and outcome == "ok":
                    log.info(
                        "request",
                        extra={
                            "endpoint": endpoint,
                            "status": status,
                            "ms": round(elapsed * 1000, 3),
                        },
                    )
                request_id.reset(token)

        return app

    async def authenticate(self, scope: Scope, form: Form) -> Client:
        """RFC 6749 §2.3: authenticate the calling client, throttling repeated failures."""
        creds = extract_credentials(auth_header(scope), form)
        if creds is None:
            raise invalid_client("client authentication required")
        source = _source(scope)
        keys = ("c:" + creds.client_id, "a:" + source)
        wait = self.throttle.retry_after(*keys)
        if wait:
            raise TooManyRequests(wait)
        client = await self.store.get_client(creds.client_id)
        try:
            return check_client(client, creds)
        except OAuthError:
            self.throttle.failed(*keys)
            log.warning(
                "client authentication failed",
                extra={"client_id": creds.client_id[:64], "source": source},
            )
            raise

    # -- endpoints ------------------------------------------------------------------------------

    async def token(self, scope: Scope, form: Form) -> Result:
        """Token endpoint (RFC 6749 §3.2, §4.4, §5)."""
        client = await self.authenticate(scope, form)
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise InvalidRequest("missing parameter: grant_type")
        if grant_type != "client_credentials":
            raise UnsupportedGrantType(f"grant_type {grant_type[:64]!r} is not supported")
        grant = client_credentials_grant(
            client,
            requested_scope=form.get("scope"),
            resources=form.getall("resource"),
            known_resources=await self.store.known_resources(),
        )
        now = self.clock.now()
        value = new_access_token()
        record = TokenRecord(
            token_hash=token_hash(value),
            kind="access_token",
            client_id=client.client_id,
            scope=grant.scope,
            aud=grant.aud,
            iat=now,
            nbf=now,
            exp=now + grant.ttl,
            jti=new_jti(),
            sub=client.client_id,  # client_credentials: the client acts for itself
        )
        await self.store.insert_token(record)
        self.metrics.tokens_issued.labels("client_credentials").inc()
        log.info(
            "token issued",
            extra={
                "client_id": client.client_id,
                "jti": record.jti,
                "scope": format_scope(grant.scope),
                "aud": list(grant.aud),
            },
        )
        body: dict[str, Any] = {
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": grant.ttl,
        }
        if grant.scope:
            body["scope"] = format_scope(grant.scope)
        return 200, body

    async def introspect(self, scope: Scope, form: Form) -> Result:
        """Introspection endpoint (RFC 7662 §2)."""
        caller = await self.authenticate(scope, form)
        rs = await self.store.resource_server_for_client(caller.client_id)
        if rs is None:
            raise IntrospectionForbidden(
                "this client is not an introspecting client of any resource server"
            )
        token = form.get("token")
        if token is None:
            raise InvalidRequest("missing parameter: token")
        # token_type_hint is only a hint (§2.1): the token's own prefix tells its kind, so
        # every kind is searched whatever the hint says, and unknown hints are ignored.
        record = None
        if token_kind(token) in ("access_token", "refresh_token"):
            record = await self.store.find_token(token_hash(token))
        body = introspection_response(record, caller=rs, now=self.clock.now(), issuer=self.issuer)
        (self.metrics.active if body["active"] else self.metrics.inactive).inc()
        return 200, body

    async def revoke(self, scope: Scope, form: Form) -> Result:
        """Revocation endpoint (RFC 7009 §2)."""
        client = await self.authenticate(scope, form)
        token = form.get("token")
        if token is None:
            raise InvalidRequest("missing parameter: token")
        # §2.2: an invalid or unknown token is not an error. A token of another client is
        # left alone and also answered 200 (§2.1 lets us refuse; answering the same as for an
        # unknown token tells a caller nothing about tokens that are not its own).
        kind = token_kind(token)
        if kind in ("access_token", "refresh_token") and await self.store.revoke_token(
            token_hash(token), client.client_id, self.clock.now()
        ):
            self.metrics.revocations.inc()
            log.info(
                "token revoked",
                extra={
                    "client_id": client.client_id,
                    "token_sha256": token_hash(token).hex()[:16],
                },
            )
        return 200, _NO_BODY


def _source(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
