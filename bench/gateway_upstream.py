"""The upstream of the gateway benchmark: a trivial ASGI app answering a small JSON body.

Run by bench/gateway.py with uvicorn (httptools, uvloop), the same stack as the gateway.
"""

from __future__ import annotations

from typing import Any

BODY = b'{"ok":true,"service":"bench-upstream"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
