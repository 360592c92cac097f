"""Ceiling for the introspection benchmark: the least an ASGI server can do for a POST.

Reads the request body and answers a fixed 60-byte JSON, with no framework, routing or
parsing. ``bench/introspect.sh`` serves it with the same server stack as keystile (uvicorn,
httptools, uvloop, 1 worker) and measures it in the same run, so keystile's introspection
figures can be read as a fraction of what the stack itself can do on this machine:

    .venv/bin/uvicorn ceiling_app:app --app-dir bench --http httptools --loop uvloop

The same app also runs on granian (``granian --interface asgi``) for the server comparison.
"""

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]

BODY = b'{"active":true,"client_id":"app-client","scope":"readwrite"}'
assert len(BODY) == 60
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"60")]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
