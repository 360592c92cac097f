"""Pooled HTTP/1.1 connections to upstreams (RFC 9112), lean enough for a proxy's hot path.

An asyncio protocol per connection with httptools (llhttp, the parser uvicorn uses) reading
responses. Measured behind 32 concurrent callers (docs/benchmarks.md), the stock
``httpx.AsyncClient`` spent about 1 ms of CPU per relayed request on this path: its pool
re-examines every pooled connection (a ``poll()`` and a ``getpeername()`` each) on every
request, its client extracts cookies and re-validates URLs and headers, and httpcore/h11/anyio
add cancel scopes and locks per read and write. Here a request takes the most recently used
idle connection to its origin or opens one, writes the head in one call, streams the body
(as given, or chunked), and gives the connection back when the response is complete.

The gateway's fast path (``fastpath.py``) uses the same connections without a task:
``checkout_now`` hands it an idle connection (or None), and a ``listener`` set on the
connection hears of the response head, its end or a failure from the protocol callbacks.

Bodies stream both ways with backpressure: the request body is written as it is produced,
waiting while the socket's buffer is full; the response body is read only as fast as the
caller consumes it (the transport pauses reading beyond a small queue). Errors are httpx's
exception types: ``httpx.ConnectError``/``ConnectTimeout``, ``httpx.ReadTimeout``/
``WriteTimeout``, ``httpx.ReadError``/``WriteError``, ``httpx.RemoteProtocolError``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Protocol, cast

import httptools
import httpx

Origin = tuple[bytes, bytes, int]

_HIGH_WATER = 4  # response chunks queued before the socket stops being read
_EOF = b""


class Listener(Protocol):
    """Told by a connection's callbacks what its response does (the fast path's relay)."""

    def upstream_head(self) -> None: ...
    def upstream_complete(self) -> None: ...
    def upstream_failed(self) -> None: ...


class _Slots:
    """How many requests may be in flight upstream (``max_connections``): an
    ``asyncio.Semaphore`` that can also be taken without awaiting (``take_now``)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self, wait: float | None) -> None:
        if self.take_now():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            async with asyncio.timeout(wait):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot just as the wait ended: give it back
            else:
                future.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(future)
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("no upstream connection free in time") from exc
            raise

    def release(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes straight to the first waiter
                return
        self.free += 1


def origin_of(url: httpx.URL) -> Origin:
    scheme = url.raw_scheme
    return (scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one request/response in flight."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self.expires = 0.0
        self.listener: Listener | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._writable = asyncio.Event()
        self._writable.set()
        self.head_done = asyncio.Event()
        self.readable = asyncio.Event()
        self.chunks: collections.deque[bytes] = collections.deque()
        self._reset()

    def _reset(self) -> None:
        # Between two requests nobody waits on the events, and the last body was read.
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done.clear()
        self.chunks.clear()
        self.readable.clear()
        self.complete = False
        self.length: int | None = None
        self.started = False  # any response byte seen
        self.error: Exception | None = None
        self._paused = False
        self.head_only = False
        self.reusable_after = True
        self._read_until_close = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid upstream response: {exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        if self.head_done.is_set() and not self.complete and self._read_until_close:
            self.on_message_complete()  # a body delimited by the connection's end
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._writable.set()
        if not self.complete:
            self._fail(httpx.ReadError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim response (103 Early Hints…): wait for the real one
            self.headers = []
            return
        self.status = status
        length: int | None = None
        framed = False
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length":
                framed = True
                with contextlib.suppress(ValueError):
                    length = int(value)
            elif lower == b"transfer-encoding":
                framed = True
                length = None  # chunked wins (RFC 9112 §6.3); llhttp refuses both anyway
                break
        self.length = length  # the body's length when Content-Length frames it
        self._read_until_close = not framed
        self.head_done.set()
        if self.listener is not None:
            self.listener.upstream_head()
        if self.head_only or status in (204, 304):
            # No body follows, whatever the headers say (RFC 9112 §6.3); llhttp cannot be
            # told a response answers HEAD, so the connection is not reused after one.
            self.reusable_after = not self.head_only
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.readable.set()
        if (
            len(self.chunks) >= _HIGH_WATER
            and self.listener is None  # the fast path keeps a small body whole
            and not self._paused
            and self.transport is not None
        ):
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.complete:
            return
        self.complete = True
        self.reusable = self.reusable_after and not self.closed and self._parser.should_keep_alive()
        self.readable.set()
        if self.listener is not None:
            self.listener.upstream_complete()

    # -- used by the pool ---------------------------------------------------------------------

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        self.complete = True
        self.reusable = False
        self.head_done.set()
        self.readable.set()
        if self.listener is not None:
            self.listener.upstream_failed()

    def abort(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    async def write(self, data: bytes, limit: float | None) -> None:
        if self.closed or self.transport is None:
            raise httpx.WriteError("the upstream connection is closed")
        self.transport.write(data)
        if not self._writable.is_set():
            try:
                async with asyncio.timeout(limit):
                    await self._writable.wait()
            except TimeoutError as exc:
                raise httpx.WriteTimeout("writing to the upstream timed out") from exc
            if self.closed:
                raise httpx.WriteError("the upstream closed the connection")

    async def next_chunk(self, limit: float | None) -> bytes:
        while not self.chunks:
            if self.complete:
                if self.error is not None:
                    raise self.error
                return _EOF
            self.readable.clear()
            try:
                async with asyncio.timeout(limit):
                    await self.readable.wait()
            except TimeoutError as exc:
                raise httpx.ReadTimeout("the upstream sent nothing in time") from exc
        chunk = self.chunks.popleft()
        if self._paused and len(self.chunks) < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk


class UpstreamResponse:
    """Status, headers and the raw body of one upstream response; ``aclose()`` it always."""

    __slots__ = ("_closed", "_connection", "_pool", "_read_timeout", "headers", "status")

    def __init__(self, pool: UpstreamPool, connection: _Connection, read_timeout: float | None):
        self.status = connection.status
        self.headers = connection.headers
        self._pool = pool
        self._connection = connection
        self._read_timeout = read_timeout
        self._closed = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as it arrives (still transfer-decoded: chunk framing removed)."""
        while True:
            chunk = await self._connection.next_chunk(self._read_timeout)
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool._checkin(self._connection)


class UpstreamPool:
    """``await pool.request(b"GET", origin, b"/path?q", headers, None, timeouts)``."""

    def __init__(
        self,
        *,
        max_connections: int = 512,
        max_keepalive_connections: int = 128,
        keepalive_expiry: float | None = 5.0,
    ) -> None:
        self._slots = _Slots(max_connections)
        self._idle: dict[Origin, list[_Connection]] = {}
        self._idle_count = 0
        self.max_keepalive_connections = max_keepalive_connections
        self.keepalive_expiry = keepalive_expiry
        self.opened = 0  # connections opened, for tests and benchmarks

    async def request(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        content: AsyncIterable[bytes] | None,
        timeouts: Mapping[str, float | None],
    ) -> UpstreamResponse:
        """Send one request; ``headers`` must carry Host and the body's framing
        (Content-Length, or Transfer-Encoding: chunked, which is then applied here)."""
        await self._slots.take(timeouts.get("pool"))
        try:
            return await self._request(method, origin, target, headers, content, timeouts)
        except BaseException:
            self._slots.release()
            raise

    async def _request(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        content: AsyncIterable[bytes] | None,
        timeouts: Mapping[str, float | None],
    ) -> UpstreamResponse:
        head = b"".join(
            [method, b" ", target, b" HTTP/1.1\r\n"]
            + [b"%s: %s\r\n" % (n, v) for n, v in headers]
            + [b"\r\n"]
        )
        chunked = any(n == b"transfer-encoding" for n, _ in headers)
        write_timeout = timeouts.get("write")
        # A pooled connection the upstream closed meanwhile fails before any response byte:
        # a request without a body is then sent once more, on a new connection.
        for attempt in (0, 1):
            connection, reused = await self._checkout(origin, timeouts.get("connect"))
            connection.head_only = method == b"HEAD"
            try:
                await connection.write(head, write_timeout)
                if content is not None:
                    async for chunk in content:
                        if not chunk:
                            continue
                        if chunked:
                            chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                        await connection.write(chunk, write_timeout)
                    if chunked:
                        await connection.write(b"0\r\n\r\n", write_timeout)
                try:
                    async with asyncio.timeout(timeouts.get("read")):
                        await connection.head_done.wait()
                except TimeoutError as exc:
                    raise httpx.ReadTimeout("the upstream did not answer in time") from exc
                if connection.error is not None:
                    raise connection.error
            except (httpx.ReadError, httpx.WriteError):
                connection.abort()
                if attempt == 0 and reused and content is None and not connection.started:
                    continue
                raise
            except BaseException:
                connection.abort()
                raise
            return UpstreamResponse(self, connection, timeouts.get("read"))
        raise AssertionError("unreachable")  # pragma: no cover

    def checkout_now(self, origin: Origin) -> _Connection | None:
        """An idle keep-alive connection to ``origin`` and a slot for it, without waiting;
        None when either would need a wait (the caller then takes the awaiting path).
        Give it back with ``checkin``."""
        idle = self._idle.get(origin)
        if not idle or not self._slots.take_now():
            return None
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if not connection.closed and connection.expires > now:
                connection._reset()
                return connection
            connection.abort()
        self._slots.release()
        return None

    def checkin(self, connection: _Connection) -> None:
        """Give back a connection from ``checkout_now``: kept for the next request if its
        response was read whole and it may carry another, else closed."""
        connection.listener = None
        self._checkin(connection)

    async def _checkout(self, origin: Origin, connect: float | None) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            if not connection.closed and connection.expires > now:
                connection._reset()
                return connection, True
            connection.abort()
        loop = asyncio.get_running_loop()
        scheme, host, port = origin
        try:
            async with asyncio.timeout(connect):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(origin),
                    host.decode("ascii"),
                    port,
                    ssl=True if scheme == b"https" else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("connecting to the upstream timed out") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to the upstream: {exc.strerror}") from exc
        self.opened += 1
        return protocol, False

    def _checkin(self, connection: _Connection) -> None:
        try:
            if (
                connection.complete
                and connection.reusable
                and connection.error is None
                and self._idle_count < self.max_keepalive_connections
            ):
                connection.expires = time.monotonic() + (self.keepalive_expiry or 0.0)
                self._idle.setdefault(connection.origin, []).append(connection)
                self._idle_count += 1
            else:
                # Unread body or no keep-alive: the connection cannot carry another request.
                connection.abort()
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                with contextlib.suppress(Exception):
                    connection.abort()
        self._idle.clear()
        self._idle_count = 0
