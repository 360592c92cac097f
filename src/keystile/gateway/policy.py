"""Route policies (RFC 6750): may this request pass? Shared by the proxy and forward-auth.

``Authorizer.decide(route, method, authorization)`` answers with a ``Decision``: allowed (with
the token's Principal, or none on a public route), or refused with the error to render. The
order of checks is fixed: method, then credentials (400/401), then the token (401, or 503 when
the authorization server cannot say), then the sender (401: a DPoP proof or client
certificate for a bound token, RFC 9449 §7, RFC 8705 §3; the route's ``sender_constrained``),
then audience (401) and scopes (403). The sender is checked on every request, cached answer
or not.

When the AS cannot answer, a route with ``on_unavailable = "stale"`` may still pass a token the
gateway saw active less than ``stale_max_age`` seconds ago, never past its ``exp``, and never
one a revocation event evicted or a later answer called inactive (those entries are gone from
the cache or replaced by a negative one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from keystile.core.dpop_scheme import access_credentials
from keystile.core.dpop_state import MemoryReplayCache, NonceSource
from keystile.errors import (
    InsufficientScope,
    IntrospectionUnavailable,
    InvalidRequest,
    InvalidToken,
    OAuthError,
)
from keystile.resource.cache import MISS, cache_key
from keystile.resource.middleware import MissingToken
from keystile.resource.principal import Principal
from keystile.resource.replay import SharedReplayCache
from keystile.resource.sender import SENDER_MODES, SenderCheck, SenderRefused, confirmation

if TYPE_CHECKING:
    from keystile.gateway.config import IdentityHeaders
    from keystile.gateway.metrics import GatewayMetrics
    from keystile.gateway.routes import Route
    from keystile.resource.introspector import TokenValidator

log = logging.getLogger("keystile.gateway")

Refusal = OAuthError | IntrospectionUnavailable


@dataclass(frozen=True, slots=True)
class Decision:
    """``outcome`` names what happened, for metrics: allowed, public, stale, or a refusal."""

    outcome: str
    principal: Principal | None = None
    error: Refusal | None = None
    token: str | None = None

    @property
    def allowed(self) -> bool:
        return self.error is None and self.outcome != "method_not_allowed"


PUBLIC = Decision("public")
METHOD_NOT_ALLOWED = Decision("method_not_allowed")


def refused(error: Refusal) -> Decision:
    if isinstance(error, IntrospectionUnavailable):
        return Decision("unavailable", error=error)
    outcome = {
        "invalid_request": "bad_request",
        "invalid_token": "unauthorized",
        "invalid_dpop_proof": "unauthorized",
        "use_dpop_nonce": "unauthorized",
        "insufficient_scope": "forbidden",
    }.get(error.error, "refused")
    return Decision(outcome, error=error)


class Authorizer:
    """Applies a route's policy with the SDK's validator (cache, single-flight, events)."""

    def __init__(
        self,
        validator: TokenValidator,
        metrics: GatewayMetrics,
        *,
        dpop_max_age: int = 60,
        nonces: NonceSource | None = None,
        shared_replay: SharedReplayCache | None = None,
    ) -> None:
        self.validator = validator
        self.cache = validator.cache
        self.metrics = metrics
        # One check per route mode, one replay cache for all: a proof is used once here.
        replay = MemoryReplayCache()
        self.senders = {
            mode: SenderCheck(
                mode=mode,
                max_age=dpop_max_age,
                replay_cache=replay,
                shared_replay=shared_replay,
                nonces=nonces,
            )
            for mode in SENDER_MODES
        }

    async def decide(
        self,
        route: Route,
        method: str,
        authorization: str | None,
        *,
        repeated: bool = False,
        proof: str | None = None,
        proofs: int = 0,
        url: str = "",
        certificate_x5t: str | None = None,
    ) -> Decision:
        """``proof``/``proofs``: the DPoP header and how many were sent; ``url``: the URL the
        caller used (``htu``, RFC 9449 §4.3), without query."""
        if not route.allows_method(method):
            return METHOD_NOT_ALLOWED
        if route.config.public:
            return PUBLIC
        try:
            if repeated:
                raise InvalidRequest("more than one Authorization header")
            credentials = access_credentials(authorization)
            if credentials is None:
                raise MissingToken()
            scheme, token = credentials
            principal, stale = await self._principal(route, token)
            config = route.config
            if proofs > 1:
                raise SenderRefused("send one DPoP header")  # RFC 9449 §4.3 item 1
            await self.senders[config.sender_constrained].acheck(
                principal,
                scheme=scheme,
                token=token,
                proof=proof,
                method=method,
                url=url,
                certificate_x5t=certificate_x5t,
            )
            if config.audience is not None and config.audience not in principal.aud:
                raise InvalidToken("the access token is not meant for this resource")
            if route.scopes:
                granted = principal.scopes
                ok = (
                    granted.issuperset(route.scopes)
                    if config.scope_match == "all"
                    else not granted.isdisjoint(route.scopes)
                )
                if not ok:
                    raise InsufficientScope(route.scope_text)
        except (OAuthError, IntrospectionUnavailable) as exc:
            return refused(exc)
        return Decision("stale" if stale else "allowed", principal, token=token)

    def decide_now(self, route: Route, method: str, authorization: str | None) -> Decision | None:
        """The decision ``decide`` would reach when it needs no I/O and allows the request:
        a public route, or a bearer token that is a cache hit, not sender-constrained
        (no ``cnf``, the route not ``required``), with the route's audience and scopes.
        None otherwise: anything to await, refuse or explain goes to ``decide``, which then
        decides it from the start. The caller must have seen one ``Authorization`` header
        and no ``DPoP`` header, and counts the cache hit (``metrics.cache_hit``) of an
        ``allowed`` decision it acts on."""
        if not route.allows_method(method):
            return None
        config = route.config
        if config.public:
            return PUBLIC
        if config.realtime or authorization is None:
            return None
        try:
            credentials = access_credentials(authorization)
        except OAuthError:
            return None
        if credentials is None or credentials[0] != "bearer":
            return None
        token = credentials[1]
        found = self.cache.get(cache_key(token))
        if not isinstance(found, Principal):
            return None
        try:
            jkt, x5t = confirmation(found)
        except SenderRefused:
            return None
        # A bound token, or a route that needs one, goes through the full sender check.
        if jkt is not None or x5t is not None or config.sender_constrained != "if_bound":
            return None
        if config.audience is not None and config.audience not in found.aud:
            return None
        if route.scopes:
            granted = found.scopes
            if config.scope_match == "all":
                if not granted.issuperset(route.scopes):
                    return None
            elif granted.isdisjoint(route.scopes):
                return None
        # Not counted as a cache hit here: the caller counts it once it answers (it may still
        # hand the request to the full path, which counts its own lookup).
        return Decision("allowed", found, token=token)

    async def _principal(self, route: Route, token: str) -> tuple[Principal, bool]:
        key = cache_key(token)
        realtime = route.config.realtime
        if not realtime:
            found = self.cache.get(key)
            if isinstance(found, Principal):
                self.metrics.cache_hit.inc()
                return found, False
            if found is not MISS:
                self.metrics.cache_negative.inc()
                raise InvalidToken("the access token is not active")
            self.metrics.cache_miss.inc()
        started = time.perf_counter()
        try:
            if realtime:
                evictions = self.cache.evictions
                answer = await self.validator.introspect(token)
                if answer is None:
                    self._inactive(key)
                    raise InvalidToken("the access token is not active")
                # Keep the fresh answer for cached routes and "stale" lookups, unless an
                # event evicted something while we asked: it may have been this token.
                if self.cache.evictions == evictions:
                    self.cache.put(key, answer)
                return answer, False
            try:
                return await self.validator.validate(token), False
            except InvalidToken:
                self._inactive(key)
                raise
        except IntrospectionUnavailable:
            if route.config.on_unavailable == "stale" and route.config.stale_max_age:
                stale = self.cache.get_stale(key, route.config.stale_max_age)
                if stale is not None:
                    log.warning("authorization server unavailable; serving a stale answer")
                    return stale, True
            raise
        finally:
            histogram = (
                self.metrics.introspect_realtime if realtime else self.metrics.introspect_miss
            )
            histogram.observe(time.perf_counter() - started)

    def _inactive(self, key: bytes) -> None:
        """The AS called the token inactive: no older positive entry may outlive that answer
        (with ``negative_ttl = 0`` nothing replaces it), so a stale lookup never finds it."""
        self.cache.put(key, None)
        if self.cache.get_stale(key, float("inf")) is not None:
            self.cache.evict(key)


def identity_headers(
    names: IdentityHeaders, principal: Principal | None
) -> list[tuple[bytes, bytes]]:
    """The identity headers for upstream; a value that is not a safe header value is left out."""
    if principal is None:
        return []
    out: list[tuple[bytes, bytes]] = []
    values = (
        (names.subject, principal.sub),
        (names.client_id, principal.client_id),
        (names.username, principal.username),
        (names.scope, " ".join(sorted(principal.scopes)) if principal.scopes else None),
    )
    for name, value in values:
        if value and value.isprintable():
            out.append((name.lower().encode("ascii"), value.encode("utf-8")))
    return out
