"""The gateway's common requests without ASGI: uvicorn's httptools protocol, plus a shortcut.

Measured (docs/benchmarks.md, decision 0009): on a cache hit, most of the gateway's CPU per
relayed request went to machinery around the decision: uvicorn's ASGI task and message dicts,
a coroutine chain through the proxy and the pool, asyncio events and timeouts per upstream
read, and two socket writes per response. ``GatewayProtocol`` answers two kinds of request
itself, on the event loop, once the request is complete:

- a bodiless request to a route (no ``Content-Length``, no ``Transfer-Encoding``, not
  ``HEAD``) whose decision needs no I/O (``Authorizer.decide_now``: public, or a bearer
  token that is a cache hit, not sender-constrained, with the route's audience and scopes),
  when an idle keep-alive connection to the upstream is at hand: the request head goes
  upstream in one write, and a response framed by ``Content-Length`` up to ``SMALL_BODY``
  bytes goes back to the caller whole, head and body in one write. Any other response
  (larger, chunked, delimited by close) is relayed by the proxy's streaming code in a task;
- a forward-auth check (``GatewayApp.forward_auth_now``) the same way: one write.

Everything else takes the full ASGI path unchanged, deciding from the start: a cache miss, a
refusal (401/403/405, with its challenge), DPoP proofs and bound tokens, ``realtime`` and
``phantom_token`` routes, bodies, no idle upstream connection, a caller not reading its
answers (the transport's write buffer full), and the gateway's own endpoints. The headers
going upstream are built by the same ``Proxy.upstream_headers`` (identity and forwarding
headers stripped under every spelling, hop-by-hop removed), the response headers filtered as
``Proxy._relay`` does.

Answers and request heads are written together at the end of the loop's turn (``_Deadlines.
write``), as the ASGI path's tasks write theirs: written right after each read, they broke
the loop's batches and cost more CPU per request than ASGI did (decision 0009).

Tied to uvicorn's httptools protocol internals (``_start_asgi_task``, the request cycle's
``more_body``, ``keep_alive``, ``disconnected``, ``default_headers``, ``response_*`` and
``message_event``, ``on_response_complete``, ``flow`` and ``STATUS_LINE``); pyproject.toml
caps uvicorn at a tested version and tests/e2e/test_gateway_fastpath.py drives a real gateway
through every case above, so an incompatible uvicorn fails the tests, not users.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from keystile.gateway.headers import HOP_BY_HOP
from keystile.server.tls_peer import PeerCertificateProtocol

if TYPE_CHECKING:
    from keystile.gateway.app import Answer, GatewayApp
    from keystile.gateway.pool import UpstreamPool, _Connection
    from keystile.gateway.routes import Route

log = logging.getLogger("keystile.gateway")

# A response up to this size (framed by Content-Length) is kept whole and written in one go.
SMALL_BODY = 64 * 1024
# Upstream timeouts of fast-path exchanges are checked this often (a timer per request cost
# more than the rest of the exchange's bookkeeping), so they fire up to this much late.
TICK = 0.1


def _find_gateway(app: Any) -> GatewayApp | None:
    """The GatewayApp behind uvicorn's middleware wrappers, if the fast path is on."""
    from keystile.gateway.app import GatewayApp

    for _ in range(8):
        if isinstance(app, GatewayApp):
            return app if app.config.gateway.fast_path else None
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def _head(status: int, headers: list[tuple[bytes, bytes]], cycle: RequestResponseCycle) -> bytes:
    """Status line and headers as uvicorn's ``send`` writes them for a framed response."""
    parts = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n")
    return b"".join(parts)


class _Deadlines:
    """Per event loop: the fast-path exchanges in flight, with one timer checking their
    upstream timeouts every ``TICK`` seconds while there are any, and the writes waiting for
    the end of the loop's turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.relays: set[_Relay] = set()
        self.ticking = False
        self.writes: list[tuple[asyncio.BaseTransport, bytes, bool]] = []

    def write(self, transport: Any, data: bytes, close: bool = False) -> None:
        """Write at the end of this turn of the loop, after the other connections' reads:
        the peers then get their answers together, as the ASGI path's tasks give them, and
        come back together (fewer wake-ups per request than a write per read)."""
        if not self.writes:
            self.loop.call_soon(self._flush)
        self.writes.append((transport, data, close))

    def _flush(self) -> None:
        writes, self.writes = self.writes, []
        for transport, data, close in writes:
            if not transport.is_closing():
                transport.write(data)  # type: ignore[attr-defined]
                if close:
                    transport.close()

    def add(self, relay: _Relay) -> None:
        self.relays.add(relay)
        if not self.ticking:
            self.ticking = True
            self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        for relay in [r for r in self.relays if r.deadline <= now]:
            relay.timed_out()
        if self.relays:
            self.loop.call_later(TICK, self._tick)
        else:
            self.ticking = False


_deadlines: dict[asyncio.AbstractEventLoop, _Deadlines] = {}


def _deadlines_of(loop: asyncio.AbstractEventLoop) -> _Deadlines:
    found = _deadlines.get(loop)
    if found is None:
        for old in [k for k in _deadlines if k.is_closed()]:
            del _deadlines[old]
        found = _deadlines[loop] = _Deadlines(loop)
    return found


class GatewayProtocol(PeerCertificateProtocol):
    """uvicorn's httptools protocol (reporting TLS peer certificates), answering the
    gateway's common requests itself (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gateway = _find_gateway(self.app)
        self._deadlines = _deadlines_of(self.loop)
        self._waiting: RequestResponseCycle | None = None  # bodiless, message not complete
        self._relay: _Relay | None = None  # upstream exchange in flight

    # -- uvicorn's hooks -------------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if (
            self._gateway is not None
            and app is self.app  # not uvicorn's 503 app (limit_concurrency)
            and cycle.scope["method"] != "HEAD"
        ):
            if cycle.more_body:
                # Headers only so far; a bodiless request completes in the same data.
                if not any(n in _BODY for n, _ in cycle.scope["headers"]):
                    self._waiting = cycle
                    return
            elif self._answer(cycle):
                return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self._waiting
        if cycle is not None and not cycle.more_body:
            self._waiting = None
            if not self._answer(cycle):
                super()._start_asgi_task(cycle, self.app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting = None
        relay = self._relay
        if relay is not None:
            relay.client_gone()
        super().connection_lost(exc)

    # -- the shortcut ----------------------------------------------------------------------

    def _answer(self, cycle: RequestResponseCycle) -> bool:
        """Answer ``cycle`` (or start its upstream exchange) if the shortcut can; False: the
        full path takes it."""
        gateway = self._gateway
        assert gateway is not None
        if self.flow.write_paused or self.transport.is_closing():
            return False  # a caller not reading: the full path waits for it (drain)
        scope: Any = cycle.scope
        try:
            path: str = scope["path"]
            fa = gateway.forward_auth_path
            if fa is not None and (path == fa or path.startswith(fa + "/")):
                answer = gateway.forward_auth_now(scope)
                if answer is None:
                    return False
                gateway.metrics.fast_forward_auth += 1
                self.finish(cycle, answer)
                return True
            if path == gateway.health_path or path == gateway.metrics_path:
                return False
            plan = gateway.proxy_now(scope)
            if plan is None:
                return False
            route, target, headers, outcome = plan
            pool = gateway.proxy.pool
            assert route.origin is not None
            connection = pool.checkout_now(route.origin)
            if connection is None:
                return False
            if outcome == "allowed":
                gateway.metrics.cache_hit.inc()  # the lookup decide_now made
        except Exception:  # never lose a request to the shortcut: the full path decides
            log.exception("gateway fast path failed; using the full path")
            return False
        head = b"".join(
            [scope["method"].encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
            + [b"%s: %s\r\n" % (n, v) for n, v in headers]
            + [b"\r\n"]
        )
        relay = _Relay(self, cycle, gateway, route, outcome, pool, connection, self._deadlines)
        self._relay = relay
        connection.listener = relay
        relay.start(head)
        return True

    def finish(self, cycle: RequestResponseCycle, answer: Answer) -> None:
        """Write a whole response in one write and complete the cycle as uvicorn would."""
        status, headers, body = answer
        self.write_whole(cycle, _head(status, headers, cycle) + body)

    def write_whole(self, cycle: RequestResponseCycle, response: bytes) -> None:
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        if cycle.disconnected or self.transport.is_closing():
            return  # as uvicorn's send(): nobody to answer
        self._deadlines.write(self.transport, response, not cycle.keep_alive)
        # What uvicorn's send() does once a response is complete (the close comes after
        # the write, in _flush).
        cycle.message_event.set()
        self.on_response_complete()

    def stream(self, cycle: RequestResponseCycle, app: Any) -> None:
        """Continue ``cycle`` in an ASGI task running ``app`` (uvicorn's error handling)."""
        super()._start_asgi_task(cycle, app)


_BODY = frozenset({b"content-length", b"transfer-encoding"})


class _Relay:
    """One fast-path exchange with the upstream, driven by the connection's callbacks."""

    __slots__ = (
        "connection",
        "cycle",
        "deadline",
        "deadlines",
        "done",
        "gateway",
        "outcome",
        "pool",
        "protocol",
        "reused",
        "route",
        "started",
    )

    def __init__(
        self,
        protocol: GatewayProtocol,
        cycle: RequestResponseCycle,
        gateway: GatewayApp,
        route: Route,
        outcome: str,
        pool: UpstreamPool,
        connection: _Connection,
        deadlines: _Deadlines,
    ) -> None:
        self.protocol = protocol
        self.cycle = cycle
        self.gateway = gateway
        self.route = route
        self.outcome = outcome  # allowed or public
        self.pool = pool
        self.connection = connection
        self.done = False
        self.started = 0.0
        self.deadlines = deadlines
        self.deadline = float("inf")

    def start(self, head: bytes) -> None:
        connection = self.connection
        assert connection.transport is not None
        self.started = time.perf_counter()
        timeout = self.gateway.proxy._timeout(self.route)["read"]
        if timeout is not None:
            self.deadline = self.deadlines.loop.time() + timeout
            self.deadlines.add(self)
        self.deadlines.write(connection.transport, head)

    # -- the connection's callbacks ----------------------------------------------------------

    def upstream_head(self) -> None:
        connection = self.connection
        self.gateway.metrics.upstream_time(self.route.label, time.perf_counter() - self.started)
        length = connection.length
        if (length is not None and length <= SMALL_BODY) or connection.status in (204, 304):
            return  # the whole response follows: upstream_complete writes it
        self._handover()

    def upstream_complete(self) -> None:
        if self.done:
            return
        connection = self.connection
        if connection.error is not None:
            self.upstream_failed()
            return
        chunks = connection.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        head = _response_head(connection.status, connection.headers, self.cycle)
        self._end()
        self.pool.checkin(connection)
        metrics = self.gateway.metrics
        metrics.request(self.route.label, "proxy", self.outcome)
        metrics.fast_proxy += 1
        self.protocol.write_whole(self.cycle, head + body)

    def upstream_failed(self) -> None:
        if self.done:
            return
        connection = self.connection
        self._end()
        connection.abort()
        self.pool.checkin(connection)
        if not connection.started:
            # A pooled connection the upstream closed meanwhile: the full path sends the
            # request again, on another connection (as the pool does for bodiless requests).
            self.protocol.stream(self.cycle, self.protocol.app)
            return
        error = connection.error
        self._fail(502, "bad_gateway", type(error).__name__ if error else "upstream failed")

    # -- the gateway's side ------------------------------------------------------------------

    def timed_out(self) -> None:
        if self.done:
            return
        connection = self.connection
        self._end()
        connection.abort()
        self.pool.checkin(connection)
        self._fail(504, "gateway_timeout", "ReadTimeout")

    def client_gone(self) -> None:
        if self.done:
            return
        connection = self.connection
        self._end()
        connection.abort()  # its response would be left unread
        self.pool.checkin(connection)
        self.gateway.metrics.request(self.route.label, "proxy", "client_gone")

    def _end(self) -> None:
        self.done = True
        self.protocol._relay = None
        self.deadlines.relays.discard(self)

    def _fail(self, status: int, outcome: str, error: str) -> None:
        """Answer 502/504 as ``GatewayApp.proxy_request`` does: nothing reached the caller."""
        log.warning(
            "upstream failed", extra={"route": self.route.label, "status": status, "error": error}
        )
        self.gateway.metrics.request(self.route.label, "proxy", outcome)
        message = (
            "the upstream service did not answer in time"
            if status == 504
            else "the upstream service cannot be reached"
        )
        data = orjson.dumps({"error": outcome, "error_description": message})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(data)),
            (b"cache-control", b"no-store"),
        ]
        if not self.protocol.transport.is_closing():
            self.protocol.finish(self.cycle, (status, headers, data))

    def _handover(self) -> None:
        """A large or unframed body: relay it streaming, in a task, with the proxy's code."""
        from keystile.gateway.pool import UpstreamResponse

        connection = self.connection
        self._end()
        connection.listener = None
        read = self.gateway.proxy._timeout(self.route)["read"]
        response = UpstreamResponse(self.pool, connection, read)
        gateway, label, allowed = self.gateway, self.route.label, self.outcome

        async def relay(scope: Any, receive: Any, send: Any) -> None:
            try:
                outcome = await gateway.proxy._relay(response, receive, send)
            finally:
                await response.aclose()
            gateway.metrics.request(label, "proxy", allowed if outcome == "ok" else outcome)

        self.protocol.stream(self.cycle, relay)


def _response_head(
    status: int, raw: list[tuple[bytes, bytes]], cycle: RequestResponseCycle
) -> bytes:
    """The caller's response head from the upstream's: headers filtered as ``Proxy._relay``
    does (hop-by-hop and those named in Connection removed, names lower-cased), written as
    uvicorn's ``send`` writes them. No value check: llhttp refuses control characters in
    upstream header values, the ones uvicorn refuses (tests/gateway/test_pool.py)."""
    named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            named.update(t.strip().lower() for t in value.split(b","))
    parts = [STATUS_LINE[status]]
    for name, value in cycle.default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        parts += (lower, b": ", value, b"\r\n")
    parts.append(b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n")
    return b"".join(parts)
