"""The OAuth endpoints: token (RFC 6749 §4.4), introspection (RFC 7662), revocation (RFC 7009).

Each handler parses the form, authenticates the caller, calls the core and renders the
result. They speak raw ASGI because these are the hot paths (see ``http.py``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from keystile.clock import Clock
from keystile.core.client_assertion import (
    LEEWAY,
    extract_assertion,
    has_assertion,
    parse_client_jwks,
    verify_assertion,
)
from keystile.core.client_auth import check_client, extract_credentials, invalid_client
from keystile.core.forms import Form, parse_form
from keystile.core.introspection import introspection_response
from keystile.core.issuance import TokenGrant, client_credentials_grant, new_token_record
from keystile.core.jwt_introspection import JWT_MEDIA_TYPE, introspection_jwt, response_shape
from keystile.core.jwt_profile import looks_like_jwt, published_until, sign_access_token
from keystile.core.metadata import TOKEN_PATH
from keystile.core.models import Client, Grant, ResourceServer, TokenRecord
from keystile.core.scope import format_scope
from keystile.core.tokens import (
    new_access_token,
    new_refresh_token,
    stored_digest,
    token_hash,
    token_kind,
)
from keystile.core.user_grants import (
    BAD_CODE,
    BAD_REFRESH,
    TokenShape,
    access_record,
    check_code,
    refresh_record,
    refresh_shape,
)
from keystile.errors import (
    IntrospectionForbidden,
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    MethodNotAllowed,
    OAuthError,
    StoreUnavailable,
    TooManyRequests,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from keystile.server.http import (
    NO_STORE_HEADERS,
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
)
from keystile.server.keys import SigningKeys
from keystile.server.logs import request_id
from keystile.server.metrics import ServerMetrics
from keystile.server.throttle import FailureThrottle, Throttle
from keystile.settings import ServerSettings
from keystile.store.base import NewToken, Store

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


class OAuthEndpoints:
    """The three OAuth endpoints over one store."""

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
        # A store with synchronous point reads (SQLite) lets introspect_now answer without
        # a coroutine; others (PostgreSQL) always take the full path.
        lookup_now: Callable[[bytes | None], tuple[int, TokenRecord | None]] | None
        lookup_now = getattr(store, "lookup_token_now", None)
        self._lookup_now = lookup_now
        self._data_version_now: Callable[[], int] | None = getattr(store, "data_version_now", None)
        # Whether introspect_now can answer at all (server/fastpath.py asks once per connection).
        self.answers_now = lookup_now is not None and self._data_version_now is not None
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
                    call = Call(scope, form, authorization, _source(scope))
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

    async def authenticate(self, call: Call, *, allow_public: bool = False) -> Client:
        """RFC 6749 §2.3: authenticate the calling client, throttling repeated failures.

        With ``allow_public``, a request without credentials may name a public client by
        ``client_id`` (RFC 6749 §3.2.1, RFC 7009 §2.1); a confidential client must always
        authenticate.
        """
        if has_assertion(call.form):
            return await self._authenticate_assertion(call)  # RFC 7523 §2.2
        creds = extract_credentials(call.authorization, call.form)
        if creds is None:
            client_id = call.form.get("client_id")
            if allow_public and client_id:
                public = await self.store.get_client(client_id)
                if public is not None and public.is_public and public.enabled:
                    return public
            raise invalid_client("client authentication required")
        keys = ("c:" + creds.client_id, "a:" + call.source)
        wait = self.throttle.retry_after(*keys)
        if wait:
            raise TooManyRequests(wait)
        client = await self.store.get_client(creds.client_id)
        try:
            return check_client(client, creds)
        except OAuthError:
            self.throttle.failed(*keys)
            # Log a client id only if it is registered: an unknown "id" may be a secret sent
            # in the wrong field, so it is logged as a short digest instead.
            who = (
                {"client_id": client.client_id}
                if client is not None
                else {"unknown_client_sha256": token_hash(creds.client_id).hex()[:16]}
            )
            log.warning("client authentication failed", extra={**who, "source": call.source})
            raise

    # -- endpoints ------------------------------------------------------------------------------

    async def token(self, call: Call) -> Result:
        """Token endpoint (RFC 6749 §3.2, §4.1.3, §4.4, §5, §6)."""
        form = call.form
        grant_type = form.get("grant_type")
        # Public clients may redeem codes and refresh tokens (bound to them, and to a PKCE
        # verifier); only confidential clients get client_credentials tokens.
        user_grant = grant_type in ("authorization_code", "refresh_token")
        client = await self.authenticate(call, allow_public=user_grant)
        if grant_type is None:
            raise InvalidRequest("missing parameter: grant_type")
        if grant_type == "authorization_code":
            return await self._code_grant(call, client)
        if grant_type == "refresh_token":
            return await self._refresh_grant(call, client)
        if grant_type != "client_credentials":
            raise UnsupportedGrantType(
                "grant_type must be authorization_code, refresh_token or client_credentials"
            )
        grant = client_credentials_grant(
            client,
            requested_scope=form.get("scope"),
            resources=form.getall("resource"),
            known_resources=await self.store.known_resources(),
        )
        now = self.clock.now()
        if client.token_format == "jwt":  # noqa: S105 - a format name, not a secret
            return await self._issue_jwt(client, grant, now)  # RFC 9068
        value = new_access_token()
        record = _access_token_record(client, grant, now, token_hash(value))
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
        return 200, token_response(value, grant.ttl, grant.scope)

    async def introspect(self, call: Call) -> Result:
        """Introspection endpoint (RFC 7662 §2).

        The hot path: one store read (the token and the registry version together), and
        callers whose exact credentials were verified at that registry version are not
        checked again.
        """
        form = call.form
        token = form.get("token")
        # token_type_hint is only a hint (§2.1): the token's own prefix tells its kind, so
        # every kind is searched whatever the hint says, and unknown hints are ignored.
        # Malformed tokens (bad prefix, length or checksum) need no lookup at all.
        digest = stored_digest(token) if token is not None else None
        if digest is None and token is not None and looks_like_jwt(token):
            # RFC 9068: a JWT is ours only if a key we publish signed it for our issuer,
            # checked before the lookup; anything else is inactive without a token lookup.
            version, record = await self.signing.lookup(token)
        else:
            version, record = await self.store.lookup_token(digest)
        key = credential_key(call.authorization, form)
        cached = self.callers.get(key, version) if key is not None else None
        if cached is not None and self.throttle.active:
            # A throttled client id or address is refused even with verified credentials:
            # otherwise "200 for the right secret, 429 for others" is a guessing oracle.
            wait = self.throttle.retry_after("c:" + cached[0].client_id, "a:" + call.source)
            if wait:
                raise TooManyRequests(wait)
        if cached is None:
            caller = await self.authenticate(call)
            rs = await self.store.resource_server_for_client(caller.client_id)
            if key is not None:
                self.callers.put(key, version, caller, rs)
        else:
            caller, rs = cached
        if rs is None:
            raise IntrospectionForbidden(
                "this client is not an introspecting client of any resource server"
            )
        if token is None:
            raise InvalidRequest("missing parameter: token")
        body = introspection_response(record, caller=rs, now=self.clock.now(), issuer=self.issuer)
        (self.metrics.active if body["active"] else self.metrics.inactive).inc()
        if rs.introspection_response != "json":
            return await self._signed_answer(call, rs, caller, body, version)  # RFC 9701
        return 200, body

    def introspect_now(self, scope: Scope, body: bytes) -> tuple[bytes, bytes] | None:
        """The introspection hot path without ASGI (server/fastpath.py): the JSON answer and
        the request id, or None whenever anything is not the common case, and the request
        then takes the full path above, which answers it (errors included) the same way.

        The common case: an opaque token (or garbage), on a store with synchronous point
        reads, from a caller whose exact credentials were verified at the registry version
        read together with the token, no failed authentication on record, plain JSON answers.
        Nothing is counted or changed before every condition holds.

        Answers are remembered by a digest of the request's credentials and body, for as
        long as the database is unchanged (SQLite's data_version: any commit by any process,
        a revocation or a client change included, empties the memory before the next
        request is answered) and the answer cannot change with time (until ``exp``).
        """
        started = time.perf_counter()
        version_now = self._data_version_now
        if version_now is None or self.throttle.active or scope["method"] != "POST":
            return None
        try:
            ctype, length, authorization, given_rid = _read_headers(scope)
        except OAuthError:
            return None
        if len(body) > self.max_body or (length is not None and length != str(len(body))):
            return None
        try:
            data_version = version_now()
        except StoreUnavailable:
            return None
        answers = self._answers
        if data_version != self._answers_version:
            answers.clear()
            self._answers_version = data_version
        request_key = hashlib.sha256(
            f"{authorization}\0{ctype}\0".encode("utf-8", "surrogateescape") + body
        ).digest()
        now = self.clock.now()
        known = answers.get(request_key)
        if known is not None and known[0] <= now < known[1]:
            active, payload = known[2], known[3]
        else:
            computed = self._introspect_now(ctype, authorization, body, now)
            if computed is None:
                return None
            active, payload, until = computed
            if len(answers) >= _ANSWER_LIMIT:
                answers.clear()
            answers[request_key] = (now, until, active, payload)
        metrics = self.metrics
        (metrics.active if active else metrics.inactive).inc()
        rid = _request_id(given_rid)
        if self.log_success:
            reset = request_id.set(rid)
            log.info("request", extra={"endpoint": "introspect", "status": 200, "fast": True})
            request_id.reset(reset)
        metrics.ok["introspect"].inc()
        metrics.fast_answers.inc()
        metrics.timer["introspect"].observe(time.perf_counter() - started)
        return payload, rid.encode()

    def _introspect_now(
        self, ctype: str | None, authorization: str | None, body: bytes, now: int
    ) -> tuple[bool, bytes, float] | None:
        """introspect_now's answer from the store: (active, JSON, until when it holds)."""
        lookup = self._lookup_now
        if lookup is None:
            return None
        try:
            form = parse_form(body, ctype, repeatable=_REPEATABLE)
        except OAuthError:
            return None
        token = form.get("token")
        key = credential_key(authorization, form)
        if token is None or key is None:
            return None
        digest = stored_digest(token)
        if digest is None and looks_like_jwt(token):
            return None  # signature checks and their caches live on the full path
        try:
            version, record = lookup(digest)
        except StoreUnavailable:
            return None
        cached = self.callers.get(key, version)
        if cached is None:
            return None
        rs = cached[1]
        if rs is None or rs.introspection_response != "json":
            return None
        answer = introspection_response(record, caller=rs, now=now, issuer=self.issuer)
        active = bool(answer["active"])
        # Until when the same request gets the same answer, the database unchanged: an
        # active token until it expires; a token not valid yet until it is; else for good.
        until: float = math.inf
        if record is not None:
            if active:
                until = record.exp
            elif now < record.nbf:
                until = record.nbf
        return active, orjson.dumps(answer), until

    async def revoke(self, call: Call) -> Result:
        """Revocation endpoint (RFC 7009 §2). Public clients name themselves (§2.1)."""
        client = await self.authenticate(call, allow_public=True)
        form = call.form
        token = form.get("token")
        if token is None:
            raise InvalidRequest("missing parameter: token")
        # §2.2: an invalid or unknown token is not an error. A token of another client is
        # left alone and also answered 200 (§2.1 lets us refuse; answering the same as for an
        # unknown token tells a caller nothing about tokens that are not its own).
        kind = token_kind(token)
        # A JWT access token is revoked by its digest like an opaque token: only a token in
        # our store, issued to this client, is affected, so no signature check is needed.
        revocable = kind in ("access_token", "refresh_token") or looks_like_jwt(token)
        if revocable and await self.store.revoke_token(
            token_hash(token), client.client_id, self.clock.now()
        ):
            self.metrics.revocations.inc()
            self.on_event()
            log.info(
                "token revoked",
                extra={
                    "client_id": client.client_id,
                    "token_sha256": token_hash(token).hex()[:16],
                },
            )
        return 200, _NO_BODY

    # -- people: authorization code and refresh token grants (issue 3) -----------------------

    async def _code_grant(self, call: Call, client: Client) -> Result:
        """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.5): a code is good exactly once."""
        if "authorization_code" not in client.grant_types:
            raise UnauthorizedClient("client is not allowed to use the authorization_code grant")
        form = call.form
        code = form.get("code")
        redirect_uri = form.get("redirect_uri")
        verifier = form.get("code_verifier")
        # A malformed request does not use up the code: check what is missing first.
        if code is None:
            raise InvalidRequest("missing parameter: code")
        if redirect_uri is None:
            raise InvalidRequest("missing parameter: redirect_uri")
        if verifier is None:
            raise InvalidRequest("missing parameter: code_verifier (PKCE is required)")
        if token_kind(code) != "authorization_code":
            raise InvalidGrant(BAD_CODE)
        now = self.clock.now()
        found = await self.store.redeem_authorization_code(token_hash(code), now)
        if found.outcome == "replayed":
            # §4.1.2: the tokens issued from it are revoked now (the store did it, with
            # events, in the same transaction).
            grant_id = found.code.grant_id if found.code else None
            self._replayed("authorization_code", client, grant_id, source=call.source)
            raise InvalidGrant(BAD_CODE)
        if found.outcome != "ok" or found.code is None or found.grant is None:
            raise InvalidGrant(BAD_CODE)
        check_code(found.code, client, redirect_uri=redirect_uri, verifier=verifier)
        grant = found.grant
        shape = TokenShape(grant.scope, grant.aud)
        return await self._issue_user_tokens(client, grant, shape, now, rotate=None)

    async def _refresh_grant(self, call: Call, client: Client) -> Result:
        """RFC 6749 §6 with rotation: every use gives a new refresh token and retires the
        old one; presenting a retired one revokes the grant (RFC 9700 §4.14.2)."""
        if "refresh_token" not in client.grant_types:
            raise UnauthorizedClient("client is not allowed to use the refresh_token grant")
        form = call.form
        value = form.get("refresh_token")
        if value is None:
            raise InvalidRequest("missing parameter: refresh_token")
        if token_kind(value) != "refresh_token":
            raise InvalidGrant(BAD_REFRESH)
        digest = token_hash(value)
        old = await self.store.find_token(digest)
        # Bound to the client it was issued to (§6); another client's refresh token is
        # refused without touching it.
        if (
            old is None
            or old.kind != "refresh_token"
            or old.grant_id is None
            or old.client_id != client.client_id
        ):
            raise InvalidGrant(BAD_REFRESH)
        grant = await self.store.get_grant(old.grant_id)
        if grant is None:
            raise InvalidGrant(BAD_REFRESH)
        shape = refresh_shape(
            grant, requested_scope=form.get("scope"), resources=form.getall("resource")
        )
        now = self.clock.now()
        return await self._issue_user_tokens(client, grant, shape, now, rotate=digest)

    def _replayed(self, kind: str, client: Client, grant_id: str | None, **extra: Any) -> None:
        """A code or refresh token presented again: the store revoked its grant (with
        events, in the same transaction); wake the event bus, count it, log it."""
        self.on_event()
        self.metrics.replays.labels(kind).inc()
        log.warning(
            f"{kind.replace('_', ' ')} replayed; its grant is revoked",
            extra={"client_id": client.client_id, "grant_id": grant_id, **extra},
        )

    async def _issue_user_tokens(
        self, client: Client, grant: Grant, shape: TokenShape, now: int, *, rotate: bytes | None
    ) -> Result:
        """Access token (opaque or RFC 9068 JWT) plus, for clients with the refresh_token
        grant, a refresh token; stored in one transaction that re-checks the grant."""
        tokens: list[NewToken] = []
        if client.token_format == "jwt":  # noqa: S105 - a format name, not a secret
            if not shape.aud:
                raise InvalidTarget(
                    "a JWT access token needs an audience: send resource, or give the client a "
                    "default audience"
                )
            signer = await self.signing.signer()
            draft = access_record(client, grant, shape, now, b"")
            access = sign_access_token(
                draft, issuer=self.issuer, signer=signer, auth_time=grant.auth_time
            )
            record = replace(draft, token_hash=token_hash(access))
            self.signing.ring.remember(record.token_hash, signer.kid)
            tokens.append(NewToken(record, signer.kid, published_until(record.exp)))
        else:
            access = new_access_token()
            record = access_record(client, grant, shape, now, token_hash(access))
            tokens.append(NewToken(record))
        refresh: str | None = None
        if "refresh_token" in client.grant_types:
            refresh = new_refresh_token()
            next_refresh = refresh_record(client, grant, now, token_hash(refresh))
            if next_refresh is None:  # the grant's absolute lifetime is over
                if rotate is not None:
                    raise InvalidGrant(BAD_REFRESH)
                refresh = None
            else:
                tokens.append(NewToken(next_refresh))
        if rotate is None:
            if not await self.store.issue_grant_tokens(grant.grant_id, tokens, now):
                raise InvalidGrant(BAD_CODE)
            grant_type = "authorization_code"
        else:
            rotation = await self.store.rotate_refresh_token(rotate, tokens, now)
            if rotation.outcome == "replayed":
                self._replayed(
                    "refresh_token", client, grant.grant_id, tokens_revoked=rotation.tokens_revoked
                )
                raise InvalidGrant(BAD_REFRESH)
            if rotation.outcome != "ok":
                raise InvalidGrant(BAD_REFRESH)
            grant_type = "refresh_token"
        self.metrics.tokens_issued.labels(grant_type).inc()
        log.info(
            "token issued",
            extra={
                "client_id": client.client_id,
                "grant_type": grant_type,
                "grant_id": grant.grant_id,
                "sub": grant.user_id,
                "jti": record.jti,
                "scope": format_scope(shape.scope),
                "aud": list(shape.aud),
            },
        )
        return 200, token_response(access, client.access_token_ttl, shape.scope, refresh)

    # -- JWT access tokens, signed introspection answers, private_key_jwt (issue 4) ----------

    async def _issue_jwt(self, client: Client, grant: TokenGrant, now: int) -> Result:
        """An RFC 9068 JWT access token, recorded by digest and jti like an opaque one."""
        if not grant.aud:
            # RFC 9068 §2.2: aud is REQUIRED; a JWT for nobody in particular is refused.
            raise InvalidTarget(
                "a JWT access token needs an audience: send resource, or give the client a "
                "default audience"
            )
        signer = await self.signing.signer()
        draft = _access_token_record(client, grant, now, b"")  # hash set once signed
        value = sign_access_token(draft, issuer=self.issuer, signer=signer)
        record = replace(draft, token_hash=token_hash(value))
        # We signed these very bytes: this process need not verify them at introspection.
        self.signing.ring.remember(record.token_hash, signer.kid)
        # The key stays published until this token expires (rounded up; see the migration).
        await self.store.insert_jwt_token(record, signer.kid, published_until(record.exp))
        self.metrics.tokens_issued.labels("client_credentials").inc()
        log.info(
            "token issued",
            extra={
                "client_id": client.client_id,
                "jti": record.jti,
                "scope": format_scope(grant.scope),
                "aud": list(grant.aud),
                "kid": signer.kid,
            },
        )
        return 200, token_response(value, grant.ttl, grant.scope)

    async def _signed_answer(
        self,
        call: Call,
        rs: ResourceServer,
        caller: Client,
        body: dict[str, Any],
        version: int,
    ) -> Result:
        """RFC 9701: the answer as a signed JWT when the caller asks (or must) for one."""
        shape = response_shape(rs.introspection_response, header(call.scope, b"accept"))
        if shape == "json":
            return 200, body
        signer = await self.signing.signer(version)
        jwt = introspection_jwt(
            body, issuer=self.issuer, audience=caller.client_id, now=self.clock.now(), signer=signer
        )
        return 200, SignedAnswer(jwt.encode("ascii"))

    async def _authenticate_assertion(self, call: Call) -> Client:
        """private_key_jwt (RFC 7523 §2.2): never cached, since each assertion is single-use."""
        assertion = extract_assertion(call.authorization, call.form)
        keys = ("c:" + assertion.client_id, "a:" + call.source)
        wait = self.throttle.retry_after(*keys)
        if wait:
            raise TooManyRequests(wait)
        client = await self.store.get_client(assertion.client_id)
        try:
            if (
                client is None
                or not client.enabled
                or client.auth_method != "private_key_jwt"
                or client.jwks is None
            ):
                raise invalid_client()
            verified = verify_assertion(
                assertion,
                client,
                self._client_keys(client),
                audiences=self._assertion_audiences(call),
                now=self.clock.now(),
            )
            # RFC 7523 §3 item 7: one use per jti; kept until the assertion could not pass
            # the exp check anyway. The store's unique key settles concurrent replays.
            if not await self.store.record_assertion_jti(
                client.client_id, verified.jti, verified.exp + LEEWAY
            ):
                raise invalid_client("client assertion was used before (RFC 7523 section 3)")
        except OAuthError:
            self.throttle.failed(*keys)
            who = (
                {"client_id": client.client_id}
                if client is not None
                else {"unknown_client_sha256": token_hash(assertion.client_id).hex()[:16]}
            )
            log.warning(
                "client authentication failed",
                extra={**who, "source": call.source, "method": "private_key_jwt"},
            )
            raise
        return client

    def _client_keys(self, client: Client) -> Any:
        """The client's registered JWK Set, parsed once per distinct document."""
        text = client.jwks or ""
        keys = self._client_jwks.get(text)
        if keys is None:
            try:
                keys = parse_client_jwks(text)
            except ValueError as exc:
                log.error(
                    "registered JWKS unusable",
                    extra={"client_id": client.client_id, "error": str(exc)},
                )
                raise invalid_client() from None
            if len(self._client_jwks) >= 1024:
                self._client_jwks.clear()
            self._client_jwks[text] = keys
        return keys

    def _assertion_audiences(self, call: Call) -> frozenset[str]:
        # RFC 7523 §3 item 3: the issuer identifies us; the token endpoint URL may; and so
        # does the URL of the endpoint being called (common for introspection, revocation).
        base = self.issuer.rstrip("/")
        return frozenset({self.issuer, base + TOKEN_PATH, base + str(call.scope["path"])})


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


def token_response(
    access_token: str, ttl: int, scope: frozenset[str], refresh_token: str | None = None
) -> dict[str, Any]:
    """RFC 6749 §5.1: the successful token response (scope only when there is one)."""
    body: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer", "expires_in": ttl}
    if scope:
        body["scope"] = format_scope(scope)
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return body


def _access_token_record(client: Client, grant: TokenGrant, now: int, digest: bytes) -> TokenRecord:
    """What an access token from the client_credentials grant carries, opaque or JWT."""
    return new_token_record(
        "access_token",
        client.client_id,
        grant.scope,
        grant.aud,
        now=now,
        exp=now + grant.ttl,
        digest=digest,
        sub=client.client_id,  # client_credentials: the client acts for itself
    )


def _nothing() -> None:
    return None


def _source(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
