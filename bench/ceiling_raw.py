"""Raw ceiling for the introspection benchmark: keystile's own fast-path protocol
(``keystile.server.fastpath.FastPathProtocol``, uvicorn's httptools protocol with the ASGI
shortcut) answering every ``POST /oauth2/introspect`` with the same fixed 60-byte JSON as
``ceiling_app.py``, without reading anything.

This is the least keystile's fast path can cost on this machine: what is left of keystile's
introspection figure above it is the introspection itself (credentials, the SQLite read,
policy, the answer). ``bench/introspect.sh`` runs it with ``CEILINGS="uvicorn raw"``:

    .venv/bin/python bench/ceiling_raw.py PORT
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).parent))

from ceiling_app import BODY
from ceiling_app import app as asgi_ceiling

from keystile.server.fastpath import FastPathProtocol


class _Endpoints:
    """What FastPathProtocol asks of keystile's OAuthEndpoints, answering a constant."""

    max_body = 16384
    answers_now = True

    @staticmethod
    def introspect_now(scope: Any, body: bytes) -> tuple[bytes, bytes]:
        return BODY, b"ceiling"


class App:
    """Everything the shortcut does not take goes to the ASGI ceiling app."""

    endpoints = _Endpoints()

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        await asgi_ceiling(scope, receive, send)


if __name__ == "__main__":
    uvicorn.run(
        App(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        http=FastPathProtocol,
        loop="uvloop",
        workers=1,
        access_log=False,
        log_level="warning",
    )
