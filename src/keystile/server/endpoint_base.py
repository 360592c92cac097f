"""What the OAuth endpoints share: the request record, the request cycle, caller caches.

The handlers (token, introspection, revocation) speak raw ASGI because these are the hot
paths (see ``http.py``); ``EndpointBase.asgi`` wraps each in the same cycle: headers read in
one pass, the form parsed, OAuth errors rendered, metrics and logs kept.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from keystile.clock import Clock
from keystile.core.forms import Form, parse_form
from keystile.core.jwt_introspection import JWT_MEDIA_TYPE
from keystile.core.models import Client, ResourceServer, TokenRecord
from keystile.errors import (
    InvalidRequest,
    MethodNotAllowed,
    OAuthError,
    StoreUnavailable,
)
from keystile.server.client_metadata import MetadataDocumentClients
from keystile.server.http import (
    NO_STORE_HEADERS,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    read_body,
    send_json,
)
from keystile.server.keys import SigningKeys
from keystile.server.logs import request_id
from keystile.server.metrics import ServerMetrics
from keystile.server.throttle import FailureThrottle, Throttle
from keystile.settings import ServerSettings
from keystile.store.base import Store

log = logging.getLogger("keystile.server")

Result = tuple[int, Any]
Handler = Callable[["Call"], Awaitable[Result]]

_REQUEST_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_RETRY_AFTER = b"1"
_REPEATABLE = frozenset({"resource"})  # RFC 8707 §2: resource may be given several times
_NO_BODY = object()
_ANSWER_LIMIT = 8192  # introspection answers remembered by the fast path (then emptied)


_RID_PREFIX = secrets.token_hex(4)  # per process, so ids stay unique across workers
_rid_counter = itertools.count(1)


@dataclass(slots=True)
class Call:
    """One OAuth endpoint request, its headers read in a single pass."""

    scope: Scope
    form: Form
    authorization: str | None
    source: str
    body: bytes = b""  # as received (introspection remembers answers by its digest)
    ctype: str | None = None


def _read_headers(scope: Scope) -> tuple[str | None, str | None, str | None, str | None]:
    """content-type, content-length, authorization, x-request-id (one pass, as ASCII).

    A second Authorization header is a malformed request (RFC 7235 allows one).
    """
    ctype = length = authorization = rid = None
    for key, value in scope["headers"]:
        if key == b"authorization":
            if authorization is not None:
                raise InvalidRequest("more than one Authorization header")
            try:
                authorization = value.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidRequest("malformed Authorization header") from None
        elif key == b"content-type":
            ctype = value.decode("latin-1")
        elif key == b"content-length":
            length = value.decode("latin-1")
        elif key == b"x-request-id":
            rid = value.decode("latin-1")
    return ctype, length, authorization, rid


def _request_id(given: str | None) -> str:
    if given and len(given) <= 128 and all(ch in _REQUEST_ID_CHARS for ch in given):
        return given
    return f"{_RID_PREFIX}{next(_rid_counter):08x}"


class CallerCache:
    """Introspection callers whose credentials were verified, keyed by a digest of those
    credentials and valid only for the registry version they were verified at: any change
    to any client or resource server, in any process, empties it (ARCHITECTURE.md §2)."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._version = -1
        self._entries: dict[bytes, tuple[Client, ResourceServer | None]] = {}

    def get(self, key: bytes, version: int) -> tuple[Client, ResourceServer | None] | None:
        if version != self._version:
            self._entries.clear()
            self._version = version
            return None
        return self._entries.get(key)

    def put(self, key: bytes, version: int, client: Client, rs: ResourceServer | None) -> None:
        if version != self._version:
            return
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[key] = (client, rs)


def credential_key(authorization: str | None, form: Form) -> bytes | None:
    """A digest naming the exact credentials of a request, or None for unusual shapes
    (those take the full authentication path, which also reports their errors)."""
    if "client_assertion" in form or "client_assertion_type" in form:
        return None  # private_key_jwt (RFC 7523): every assertion is single-use, never cached
    if "client_secret" in form:
        if authorization is not None:
            return None
        client_id = form.get("client_id")
        if client_id is None:
            return None
        raw = "p\0" + client_id + "\0" + form["client_secret"]
    elif authorization is not None and "client_id" not in form:
        raw = "b\0" + authorization
    else:
        return None
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).digest()


class EndpointBase:
    """What the OAuth endpoints share: settings, store, clock, metrics, throttle, signing
    keys and caches, and the request cycle that wraps every handler."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        clock: Clock,
        metrics: ServerMetrics,
        throttle: Throttle | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.issuer = settings.effective_issuer
        self.max_body = settings.max_body_bytes
        # In-process counts unless a shared throttle is given (Redis: shared_throttle.py).
        if throttle is None:
            throttle = FailureThrottle(
                clock, limit=settings.throttle_failures, window=settings.throttle_window
            )
        self.throttle: Throttle = throttle
        self.log_success = settings.access_log
        self.callers = CallerCache()
        self.on_event: Callable[[], None] = _nothing  # set by the app: wakes the event bus
        self.signing = SigningKeys(settings, store, clock)  # RFC 9068, RFC 9701
        # Which client a client_id names: the store, or a client ID metadata document.
        self.clients = MetadataDocumentClients(
            settings,
            store,
            clock,
            on_fetch=lambda result: metrics.metadata_documents.labels(result).inc(),
        )
        # Remembered introspection answers (introspect_now) need a store that says when they
        # may have changed: ``data_version_now()``. SQLite's reads PRAGMA data_version, and
        # its synchronous point reads (``lookup_token_now``) let introspect_now fill the
        # memory itself. PostgreSQL's is the answer lease's epoch (store/postgres/answers.py):
        # the full path fills the memory, introspect_now answers from it.
        lookup_now: Callable[[bytes | None], tuple[int, TokenRecord | None]] | None
        lookup_now = getattr(store, "lookup_token_now", None)
        self._lookup_now = lookup_now
        self._data_version_now: Callable[[], int] | None = getattr(store, "data_version_now", None)
        # Whether introspect_now can answer at all (server/fastpath.py asks once per connection).
        self.answers_now = (
            self._data_version_now is not None
            and settings.fast_path
            and (lookup_now is not None or settings.answer_lease > 0)
        )
        self._fill_on_full_path = self.answers_now and lookup_now is None
        self._answers: dict[bytes, tuple[int, float, bool, bytes]] = {}
        self._answers_version = -1
        self._client_jwks: dict[str, Any] = {}  # private_key_jwt: parsed JWK Sets by text

    # -- the shared request cycle ---------------------------------------------------------

    def asgi(
        self, endpoint: str, handler: Handler
    ) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        metrics = self.metrics
        ok = metrics.ok[endpoint]
        timer = metrics.timer[endpoint]

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            started = time.perf_counter()
            try:
                ctype, length, authorization, given_rid = _read_headers(scope)
                header_error = None
            except InvalidRequest as exc:
                ctype = length = authorization = given_rid = None
                header_error = exc
            rid = _request_id(given_rid)
            token = request_id.set(rid)
            rid_header = (b"x-request-id", rid.encode())
            outcome = "ok"
            status = 200
            try:
                try:
                    if scope["method"] != "POST":
                        raise MethodNotAllowed(f"use POST for the {endpoint} endpoint")
                    if header_error is not None:
                        raise header_error
                    body = await read_body(receive, length, self.max_body)
                    form = parse_form(body, ctype, repeatable=_REPEATABLE)
                    call = Call(scope, form, authorization, _source(scope), body, ctype)
                    status, payload = await handler(call)
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
                    elif type(payload) is SignedAnswer:
                        await _send_signed(send, status, payload, rid_header)
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


@dataclass(frozen=True, slots=True)
class SignedAnswer:
    """An RFC 9701 answer: a compact JWS sent as application/token-introspection+jwt."""

    jwt: bytes


_SIGNED_HEADERS = [(b"content-type", JWT_MEDIA_TYPE.encode()), *NO_STORE_HEADERS[1:]]


async def _send_signed(
    send: Send, status: int, answer: SignedAnswer, rid_header: tuple[bytes, bytes]
) -> None:
    headers = [*_SIGNED_HEADERS, (b"content-length", str(len(answer.jwt)).encode()), rid_header]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.jwt})


def _nothing() -> None:
    return None


def _source(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
