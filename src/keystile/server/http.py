"""Small raw-ASGI helpers for the OAuth endpoints' hot path.

The token, introspection and revocation endpoints read a small form body and answer a
small JSON document. Going through Starlette's Request/Response objects and multipart
form parser for that costs more than the rest of the request (see docs/benchmarks.md);
these helpers do the same work directly on the ASGI messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from keystile.errors import InvalidRequest, RequestTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# RFC 6749 §5.1: token responses carry Cache-Control: no-store and Pragma: no-cache.
# We send them on every OAuth endpoint response: they all carry or concern credentials.
NO_STORE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
]


class ClientDisconnected(Exception):
    """The caller went away before sending the whole body."""


def header(scope: Scope, name: bytes) -> str | None:
    """The value of a request header (first occurrence), decoded as Latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def read_body(receive: Receive, length: str | None, limit: int) -> bytes:
    """The whole request body, refusing anything larger than ``limit`` bytes."""
    if length is not None:
        if not length.isdigit():
            raise InvalidRequest("malformed Content-Length")
        if int(length) > limit:
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
    first = await receive()
    if first["type"] != "http.request":
        raise ClientDisconnected
    body: bytes = first.get("body", b"")
    if not first.get("more_body", False):
        if len(body) > limit:
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
        return body
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(
    send: Send,
    status: int,
    body: Any,
    *,
    base_headers: list[tuple[bytes, bytes]] = NO_STORE_HEADERS,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = orjson.dumps(body)
    headers = [*base_headers, (b"content-length", str(len(payload)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
