"""The gateway's upstream connection pool against a scripted HTTP/1.1 server (RFC 9112)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from keystile.gateway.pool import UpstreamPool

TIMEOUTS = {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}
WRITERS: list[asyncio.StreamWriter] = []


@pytest.fixture(autouse=True)
async def _close_server_sides():
    """Server-side connections still open when a test ends are closed before its loop is."""
    yield
    for writer in WRITERS:
        writer.transport.abort()
    WRITERS.clear()
    await asyncio.sleep(0)


Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


async def serve(handler: Handler) -> tuple[asyncio.Server, tuple[bytes, bytes, int], list[int]]:
    """A server that reads one request head at a time and lets ``handler`` answer it; the
    handler returns False to close the connection. Counts connections accepted."""
    accepted: list[int] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        WRITERS.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not await handler(head, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, (b"http", b"127.0.0.1", port), accepted


async def get(pool: UpstreamPool, origin, method: bytes = b"GET") -> tuple[int, bytes]:
    r = await pool.request(method, origin, b"/x", [(b"host", b"up")], None, TIMEOUTS)
    try:
        body = b"".join([c async for c in r.aiter_raw()])
    finally:
        await r.aclose()
    return r.status, body


def fixed(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def test_keep_alive_reuses_one_connection():
    """Sequential requests to one origin share one connection."""

    async def handler(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(fixed(b"hello"))
        return True

    server, origin, accepted = await serve(handler)
    pool = UpstreamPool()
    for _ in range(5):
        assert await get(pool, origin) == (200, b"hello")
    assert pool.opened == 1
    assert len(accepted) == 1
    await pool.aclose()
    server.close()
    await server.wait_closed()


async def test_chunked_and_close_delimited_bodies():
    """A chunked body arrives de-chunked; a body without framing ends with the connection."""
    answers = [
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close",
    ]

    async def handler(head: bytes, w: asyncio.StreamWriter) -> bool:
        answer = answers.pop(0)
        w.write(answer)
        return b"connection: close" not in answer

    server, origin, _ = await serve(handler)
    pool = UpstreamPool()
    assert await get(pool, origin) == (200, b"abcde")
    assert await get(pool, origin) == (200, b"until-close")
    await pool.aclose()
    server.close()
    await server.wait_closed()


async def test_head_and_204_have_no_body():
    """HEAD with a Content-Length, and 204, complete without waiting for a body."""

    async def handler(head: bytes, w: asyncio.StreamWriter) -> bool:
        if head.startswith(b"HEAD"):
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        return True

    server, origin, _ = await serve(handler)
    pool = UpstreamPool()
    assert await asyncio.wait_for(get(pool, origin, b"HEAD"), 2) == (200, b"")
    assert await asyncio.wait_for(get(pool, origin), 2) == (204, b"")
    await pool.aclose()
    server.close()
    await server.wait_closed()


async def test_connection_closed_by_upstream_is_replaced():
    """A pooled connection the upstream closed is not reused: the next GET succeeds."""

    async def handler(head: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(fixed(b"ok"))
        return False  # close after each answer, without saying so

    server, origin, accepted = await serve(handler)
    pool = UpstreamPool()
    assert await get(pool, origin) == (200, b"ok")
    await asyncio.sleep(0.05)
    assert await get(pool, origin) == (200, b"ok")
    assert len(accepted) == 2
    await pool.aclose()
    server.close()
    await server.wait_closed()


async def test_request_body_streams_with_chunked_framing():
    """A body of unknown length is sent chunked and arrives whole."""
    received: list[bytes] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        WRITERS.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        received.append(body)
        writer.write(fixed(b"%d" % len(body)))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    origin = (b"http", b"127.0.0.1", server.sockets[0].getsockname()[1])

    async def body() -> AsyncIterator[bytes]:
        for part in (b"a" * 70_000, b"", b"b" * 5):
            yield part

    pool = UpstreamPool()
    headers = [(b"host", b"up"), (b"transfer-encoding", b"chunked")]
    r = await pool.request(b"POST", origin, b"/u", headers, body(), TIMEOUTS)
    assert b"".join([c async for c in r.aiter_raw()]) == b"70005"
    await r.aclose()
    assert received == [b"a" * 70_000 + b"b" * 5]
    await pool.aclose()
    server.close()
    await server.wait_closed()


async def test_errors_are_httpx_types():
    """Nothing listening: ConnectError; no answer in time: ReadTimeout."""
    pool = UpstreamPool()
    with socket_closed() as port, pytest.raises(httpx.ConnectError):
        await get(pool, (b"http", b"127.0.0.1", port))

    async def silent(head: bytes, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1)
        return False

    server, origin, _ = await serve(silent)
    short = {**TIMEOUTS, "read": 0.2}
    with pytest.raises(httpx.ReadTimeout):
        await pool.request(b"GET", origin, b"/", [(b"host", b"up")], None, short)
    await pool.aclose()
    server.close()
    await server.wait_closed()


class socket_closed:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("value", [b"a\x01b", b"a\x00b", b"a\x1bb", b"a\x7fb"])
async def test_control_characters_in_upstream_headers_are_refused(value: bytes):
    """A header value with a control character fails the response (llhttp refuses it), so
    neither path ever writes one to the caller; the fast path relies on this."""

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Evil: " + value + b"\r\nContent-Length: 0\r\n\r\n")
        return True

    server, origin, _ = await serve(answer)
    pool = UpstreamPool()
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await pool.request(b"GET", origin, b"/", [(b"host", b"u")], None, TIMEOUTS)
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()


async def test_slots_bound_requests_in_flight():
    """max_connections bounds requests in flight, for awaiting and immediate checkouts
    alike; a slot freed passes to the first waiter."""

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    server, origin, _ = await serve(answer)
    pool = UpstreamPool(max_connections=1)
    try:
        first = await pool.request(b"GET", origin, b"/", [(b"host", b"u")], None, TIMEOUTS)
        assert pool.checkout_now(origin) is None  # the only slot is taken
        waiting = asyncio.ensure_future(
            pool.request(b"GET", origin, b"/", [(b"host", b"u")], None, TIMEOUTS)
        )
        await asyncio.sleep(0.05)
        assert not waiting.done()
        async for _ in first.aiter_raw():
            pass
        await first.aclose()
        second = await asyncio.wait_for(waiting, 2)
        async for _ in second.aiter_raw():
            pass
        await second.aclose()
        connection = pool.checkout_now(origin)  # idle and a free slot
        assert connection is not None
        assert pool.checkout_now(origin) is None
        with pytest.raises(httpx.PoolTimeout):
            await pool.request(
                b"GET", origin, b"/", [(b"host", b"u")], None, {**TIMEOUTS, "pool": 0.05}
            )
        pool.checkin(connection)  # nothing read on it: closed, not kept
        assert pool._slots.free == 1  # and the timed-out wait took no slot
    finally:
        await pool.aclose()
        server.close()
        await server.wait_closed()
