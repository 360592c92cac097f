"""A small upstream service for the gateway tests, run in its own process:

    python tests/e2e/gateway_upstream.py PORT

- any path: echoes the method, path, query and the headers it received, as JSON;
- ``/slow?seconds=S``: answers after S seconds;
- ``/upload``: reads the body as it comes, counting bytes (``/_progress`` reports the count
  while the upload is still running) and answers its length and SHA-256;
- ``/download?size=N``: sends N bytes; the second half only once ``/_release`` was called,
  so a test can prove the first half reached the client through the gateway beforehand;
- ``/set-cookie``: answers with a ``Set-Cookie`` header.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from typing import Any

import orjson

CHUNK = 64 * 1024
state: dict[str, Any] = {"received": 0, "release": None}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                state["release"] = asyncio.Event()
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = scope["query_string"].decode()
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    if path == "/_progress":
        await _json(send, {"received": state["received"]})
        return
    if path == "/_release":
        state["release"].set()
        await _json(send, {"released": True})
        return
    if path.endswith("/upload"):
        state["received"] = 0
        digest = hashlib.sha256()
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            state["received"] += len(chunk)
            more = message.get("more_body", False)
        await _json(send, {"length": state["received"], "sha256": digest.hexdigest()})
        return
    if path.endswith("/download"):
        size = int(params["size"])
        state["release"] = asyncio.Event()
        length = str(size).encode()
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        block = b"x" * CHUNK
        while sent < size:
            if sent >= size // 2 and not state["release"].is_set():
                await state["release"].wait()
            n = min(CHUNK, size - sent)
            await send({"type": "http.response.body", "body": block[:n], "more_body": True})
            sent += n
        await send({"type": "http.response.body", "body": b""})
        return
    if path.endswith("/slow"):
        await asyncio.sleep(float(params.get("seconds", "2")))
    extra: list[tuple[bytes, bytes]] = []
    if path.endswith("/set-cookie"):
        extra.append((b"set-cookie", b"session=secret-of-one-caller; Path=/"))
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await _json(
        send,
        {
            "method": scope["method"],
            "path": path,
            "raw_path": scope["raw_path"].decode("latin-1"),
            "query": query,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_length": len(body),
        },
        extra,
    )


async def _json(send: Any, body: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = orjson.dumps(body)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        # Hop-by-hop headers the gateway must not relay to its caller.
        (b"connection", b"keep-alive, x-upstream-hop"),
        (b"x-upstream-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": data})


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        lifespan="on",
        http="h11" if "--h11" in sys.argv else "httptools",
    )
