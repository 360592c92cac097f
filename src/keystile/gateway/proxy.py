"""Forwarding to upstream (RFC 9110 §7.6): streamed both ways over pooled connections.

Pooled keep-alive connections (``pool.py``). The request body
is read from the ASGI ``receive`` channel as it arrives and handed to the upstream connection
chunk by chunk; the response body is relayed with ``aiter_raw`` (no
decoding, no buffering), so memory per request stays at one chunk and slow readers slow the
upstream down instead of filling memory (uvicorn's flow control on one side, TCP on the other).

Headers going upstream: hop-by-hop headers (RFC 9110 §7.6.1), and every header the
``Connection`` header names, are dropped; the configured identity headers are ALWAYS dropped
from the incoming request, under every spelling (``X_Auth-Subject`` too: ``headers.py``), since
callers must not choose who they are, and set again only from a validated token;
``X-Forwarded-For``/``-Proto``/``-Host`` are set from what the gateway saw, extending the
incoming ones only when the peer is a trusted proxy. Other ``Forwarded``/``X-Forwarded-*``
headers pass only from a trusted proxy, and their underscore spellings never.

Failures: a timeout talking to upstream answers 504, a connection that cannot be made or
breaks before the response starts answers 502. Once the response has started, a failure can
only cut the connection, which tells the client the body is incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpx

from keystile.errors import KeystileError
from keystile.gateway.config import GatewayConfig
from keystile.gateway.headers import (
    AUTHORIZATION,
    CONNECTION,
    CONTENT_LENGTH,
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_OTHER,
    FORWARDED_PROTO,
    HOP_BY_HOP,
    HOST,
    IDENTITY,
    PASS,
    SPOOFED,
    TRANSFER_ENCODING,
    HeaderKinds,
)
from keystile.gateway.metrics import GatewayMetrics
from keystile.gateway.pool import UpstreamPool, UpstreamResponse
from keystile.gateway.routes import BadPath, Route

log = logging.getLogger("keystile.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# A response body up to this size is relayed without watching for the client going away.
_SMALL_BODY = 256 * 1024


class UpstreamError(KeystileError):
    """The upstream could not be reached (502) or did not answer in time (504)."""

    def __init__(self, status: int, outcome: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class ClientDisconnected(Exception):
    """The caller went away while its request body was being relayed."""


@dataclass(slots=True)
class _Exchange:
    done: bool = False
    gone: bool = False


def _timeouts(seconds: float, connect: float) -> dict[str, float | None]:
    return {"connect": connect, "read": seconds, "write": seconds, "pool": seconds}


class Proxy:
    """Relays one allowed request to its route's upstream: ``await proxy.forward(...)``."""

    def __init__(
        self,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        *,
        pool: UpstreamPool | None = None,
    ) -> None:
        up = config.upstream
        self.pool = pool or UpstreamPool(
            max_connections=up.max_connections,
            max_keepalive_connections=up.max_keepalive_connections,
            keepalive_expiry=up.keepalive_expiry,
        )
        self.default_timeouts = _timeouts(up.timeout, up.connect_timeout)
        self.connect_timeout = up.connect_timeout
        self.metrics = metrics
        self.kinds = HeaderKinds(config.identity_headers.names)
        self._timeouts: dict[float, dict[str, float | None]] = {}
        networks = [ipaddress.ip_network(p, strict=False) for p in config.gateway.trusted_proxies]
        self._trusted: Callable[[str], bool] | None = _trust_checker(networks) if networks else None

    async def close(self) -> None:
        await self.pool.aclose()

    def trusts(self, scope: Scope) -> bool:
        """Whether the peer of this request is one of ``trusted_proxies``."""
        client = scope.get("client")
        return self._trusted is not None and client is not None and self._trusted(client[0])

    def _timeout(self, route: Route) -> dict[str, float | None]:
        seconds = route.config.timeout
        if seconds is None:
            return self.default_timeouts
        found = self._timeouts.get(seconds)
        if found is None:
            found = self._timeouts[seconds] = _timeouts(seconds, min(seconds, self.connect_timeout))
        return found

    def upstream_headers(
        self,
        scope: Scope,
        route: Route,
        identity: Iterable[tuple[bytes, bytes]],
        authorization: bytes | None = None,
    ) -> tuple[list[tuple[bytes, bytes]], bool]:
        """The headers to send upstream, and whether the request has a body; a given
        ``authorization`` replaces the caller's (phantom tokens)."""
        trusted = False
        client = scope.get("client")
        peer = client[0] if client else None
        if self._trusted is not None and peer is not None:
            trusted = self._trusted(peer)
        out: list[tuple[bytes, bytes]] = []
        host = b""
        connection: bytes | None = None
        xff: bytes | None = None
        xfp: bytes | None = None
        xfh: bytes | None = None
        has_body = False
        content_length: bytes | None = None
        chunked = False
        forward_token = route.config.forward_token
        preserve_host = route.config.preserve_host
        memo = self.kinds.memo
        sort = self.kinds.of
        for name, value in scope["headers"]:
            kind = memo.get(name)
            if kind is None:
                kind = sort(name)
            if kind == PASS:
                out.append((name, value))
            elif kind in (IDENTITY, SPOOFED):
                continue  # never the caller's word for who it is, under any spelling
            elif kind == HOST:
                host = value
                if preserve_host:
                    out.append((name, value))
            elif kind == AUTHORIZATION:
                if forward_token and authorization is None:
                    out.append((name, value))
            elif kind == CONTENT_LENGTH:
                content_length = value
            elif kind == CONNECTION:
                connection = value if connection is None else connection + b"," + value
            elif kind == TRANSFER_ENCODING:
                chunked = True
            elif trusted:
                if kind == FORWARDED_FOR:
                    xff = value if xff is None else xff + b", " + value
                elif kind == FORWARDED_PROTO:
                    xfp = value
                elif kind == FORWARDED_HOST:
                    xfh = value
                elif kind == FORWARDED_OTHER:
                    out.append((name, value))
            # Left: the other hop-by-hop headers, Expect (100-continue is between the caller
            # and us) and, from an untrusted peer, Forwarded and every X-Forwarded-*.
        if connection is not None:
            named = {t.strip().lower() for t in connection.split(b",")}
            out = [(n, v) for n, v in out if n not in named]
        if not preserve_host or not host:
            out.append((b"host", route.upstream_host))
        # Body framing (RFC 9112 §6): the body uvicorn decoded is sent on with a length if the
        # caller gave one, re-chunked otherwise; with both, Transfer-Encoding wins and the
        # length goes (§6.1), so upstream and gateway cannot disagree on where it ends.
        if chunked:
            out.append((b"transfer-encoding", b"chunked"))
            has_body = True
        elif content_length is not None:
            out.append((b"content-length", content_length))
            has_body = content_length != b"0"
        if peer is not None:
            address = peer.encode("latin-1")
            out.append((b"x-forwarded-for", xff + b", " + address if xff else address))
        out.append((b"x-forwarded-proto", xfp or scope.get("scheme", "http").encode("latin-1")))
        if xfh or host:
            out.append((b"x-forwarded-host", xfh or host))
        out.extend(identity)
        if authorization is not None:
            out.append((b"authorization", authorization))
        return out, has_body

    def target(self, scope: Scope, route: Route) -> bytes:
        """The upstream URL: its base path, then the request's raw path (prefix stripped if
        the route says so), then the query."""
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        if route.config.strip_prefix:
            prefix = route.prefix.encode("utf-8")
            if not raw.startswith(prefix) or (len(raw) > len(prefix) and raw[len(prefix)] != 47):
                raise BadPath("the route prefix is percent-encoded in the request path")
            raw = raw[len(prefix) :]
            if not raw.startswith(b"/"):
                raw = b"/" + raw
        path = route.upstream_path + raw
        query: bytes = scope.get("query_string", b"")
        if query:
            path += b"?" + query
        return path

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: Route,
        identity: Iterable[tuple[bytes, bytes]],
        authorization: bytes | None = None,
    ) -> str:
        """Relay the request and the response; returns the outcome for metrics."""
        assert route.origin is not None
        target = self.target(scope, route)
        headers, has_body = self.upstream_headers(scope, route, identity, authorization)
        started = time.perf_counter()
        try:
            response = await self.pool.request(
                scope["method"].encode("ascii"),
                route.origin,
                target,
                headers,
                _request_body(receive) if has_body else None,
                self._timeout(route),
            )
        except ClientDisconnected:
            return "client_gone"
        except httpx.TimeoutException as exc:
            raise UpstreamError(504, "gateway_timeout", type(exc).__name__) from exc
        except (httpx.TransportError, OSError) as exc:
            raise UpstreamError(502, "bad_gateway", type(exc).__name__) from exc
        self.metrics.upstream_time(route.label, time.perf_counter() - started)
        try:
            return await self._relay(response, receive, send)
        finally:
            await response.aclose()

    async def _relay(self, response: UpstreamResponse, receive: Receive, send: Send) -> str:
        raw_headers = response.headers
        connection = [v for n, v in raw_headers if n.lower() == b"connection"]
        named = {t.strip().lower() for v in connection for t in v.split(b",")} if connection else ()
        headers = []
        length: int | None = None
        for name, value in raw_headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named:
                continue
            if lower == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value)
            headers.append((lower, value))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        exchange = _Exchange()
        watcher: asyncio.Task[None] | None = None
        if length is None or length > _SMALL_BODY:
            # A long or endless body (downloads, event streams): stop pulling from upstream
            # as soon as the caller hangs up, instead of at the next chunk or never.
            task = asyncio.current_task()
            assert task is not None
            watcher = asyncio.create_task(_watch_disconnect(receive, task, exchange))
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            exchange.done = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if exchange.gone and task is not None:
                task.uncancel()
                return "client_gone"
            raise
        except httpx.HTTPError as exc:
            # The status line is gone already: all we can do is cut the connection, so the
            # caller sees an incomplete body rather than a short "complete" one.
            log.warning(
                "upstream failed while streaming the response",
                extra={"error": type(exc).__name__},
            )
            raise
        finally:
            exchange.done = True
            if watcher is not None:
                watcher.cancel()
        return "ok"


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _watch_disconnect(receive: Receive, task: asyncio.Task[Any], exchange: _Exchange) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not exchange.done:
                exchange.gone = True
                task.cancel()
            return


def _trust_checker(
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> Callable[[str], bool]:
    @lru_cache(maxsize=4096)
    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    return trusted
