"""The introspection endpoint (RFC 7662 §2), its fast path, and RFC 9701 signed answers."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

import orjson

from keystile.core.forms import parse_form
from keystile.core.introspection import introspection_response
from keystile.core.jwt_introspection import introspection_jwt, response_shape
from keystile.core.jwt_profile import looks_like_jwt
from keystile.core.models import Client, ResourceServer, TokenRecord
from keystile.core.tokens import stored_digest
from keystile.errors import (
    IntrospectionForbidden,
    InvalidRequest,
    OAuthError,
    StoreUnavailable,
)
from keystile.server.client_authentication import ClientAuthentication
from keystile.server.endpoint_base import (
    _ANSWER_LIMIT,
    _REPEATABLE,
    Call,
    Result,
    SignedAnswer,
    _read_headers,
    _request_id,
    credential_key,
)
from keystile.server.http import Scope, header
from keystile.server.logs import request_id

log = logging.getLogger("keystile.server")


class IntrospectionEndpoint(ClientAuthentication):
    """Answers whether a token is active, and what the calling resource server may see."""

    async def introspect(self, call: Call) -> Result:
        """Introspection endpoint (RFC 7662 §2).

        The hot path: one store read (the token and the registry version together), and
        callers whose exact credentials were verified at that registry version are not
        checked again.
        """
        form = call.form
        token = form.get("token")
        # PostgreSQL: the answer may be remembered for introspect_now, if nothing that could
        # change it happens between now (before the lookup) and then (answers.py).
        epoch = self._memory_epoch() if self._fill_on_full_path and token is not None else None
        # token_type_hint is only a hint (§2.1): the token's own prefix tells its kind, so
        # every kind is searched whatever the hint says, and unknown hints are ignored.
        # Malformed tokens (bad prefix, length or checksum) need no lookup at all.
        digest = stored_digest(token) if token is not None else None
        if digest is None and token is not None and looks_like_jwt(token):
            # RFC 9068: a JWT is ours only if a key we publish signed it for our issuer,
            # checked before the lookup; anything else is inactive without a token lookup.
            version, record = await self.signing.lookup(token)
            epoch = None  # signature checks and their caches live on the full path
        else:
            version, record = await self.store.lookup_token(digest)
        key = credential_key(call.authorization, form)
        # Credentials verified before are never throttled: the throttle refuses failures
        # only (client_authentication.py), and a 256-bit secret leaves nothing to guess.
        cached = self.callers.get(key, version) if key is not None else None
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
        now = self.clock.now()
        body = introspection_response(record, caller=rs, now=now, issuer=self.issuer)
        (self.metrics.active if body["active"] else self.metrics.inactive).inc()
        if rs.introspection_response != "json":
            return await self._signed_answer(call, rs, caller, body, version)  # RFC 9701
        if epoch is not None:
            self._remember(call, epoch, now, record, body)
        return 200, body

    def _memory_epoch(self) -> int | None:
        version_now = self._data_version_now
        if version_now is None:
            return None
        try:
            return version_now()
        except StoreUnavailable:
            return None  # no answer lease now: nothing is remembered

    def _remember(
        self, call: Call, epoch: int, now: int, record: TokenRecord | None, body: dict[str, Any]
    ) -> None:
        """Keep the full path's answer for introspect_now (PostgreSQL), unless anything it
        depends on may have changed since ``epoch`` was read, before the lookup."""
        if self._memory_epoch() != epoch:
            return
        answers = self._answers
        if self._answers_version != epoch:
            answers.clear()
            self._answers_version = epoch
        if len(answers) >= _ANSWER_LIMIT:
            answers.clear()
        request_key = _request_key(call.authorization, call.ctype, call.body)
        active = bool(body["active"])
        answers[request_key] = (now, _holds_until(record, active, now), active, orjson.dumps(body))

    def introspect_now(self, scope: Scope, body: bytes) -> tuple[bytes, bytes] | None:
        """The introspection hot path without ASGI (server/fastpath.py): the JSON answer and
        the request id, or None whenever anything is not the common case, and the request
        then takes the full path above, which answers it (errors included) the same way.

        The common case: an opaque token (or garbage), on a store with synchronous point
        reads, from a caller whose exact credentials were verified at the registry version
        read together with the token, plain JSON answers. Failed authentications on record
        change nothing here: verified credentials are never throttled, on either path.
        Nothing is counted or changed before every condition holds.

        Answers are remembered by a digest of the request's credentials and body, for as
        long as the database is unchanged (SQLite's data_version: any commit by any process,
        a revocation or a client change included, empties the memory before the next
        request is answered) and the answer cannot change with time (until ``exp``).
        """
        started = time.perf_counter()
        version_now = self._data_version_now
        if version_now is None or scope["method"] != "POST":
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
        request_key = _request_key(authorization, ctype, body)
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
        return active, orjson.dumps(answer), _holds_until(record, active, now)

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


def _holds_until(record: TokenRecord | None, active: bool, now: int) -> float:
    """Until when the same request gets the same answer, the database unchanged: an active
    token until it expires; a token not valid yet until it is; else for good."""
    if record is not None:
        if active:
            return record.exp
        if now < record.nbf:
            return record.nbf
    return math.inf


def _request_key(authorization: str | None, ctype: str | None, body: bytes) -> bytes:
    """What a remembered answer is kept under: a digest of the request's credentials, content
    type and body, never the raw values."""
    return hashlib.sha256(
        f"{authorization}\0{ctype}\0".encode("utf-8", "surrogateescape") + body
    ).digest()
