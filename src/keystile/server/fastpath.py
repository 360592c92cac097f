"""The introspection hot path without ASGI: uvicorn's httptools protocol, plus one shortcut.

Measured (docs/benchmarks.md, decision 0005): with the handler tuned, most of the CPU an
introspection costs under load was uvicorn's ASGI machinery around it: a task per request,
the receive/send message dicts, header checks, and two socket writes per response. For the
common introspection request (an opaque token from a resource server whose credentials
this process verified already, on SQLite) the answer is one point read on the loop thread,
so nothing needs a task: ``FastPathProtocol`` asks ``OAuthEndpoints.introspect_now`` once the
request body is complete, and when it answers, writes the whole response in one write.

Everything else goes through uvicorn unchanged: other paths and methods, ``Expect:
100-continue``, bodies over the size limit, and every request ``introspect_now`` declines
(first sight of a caller, JWTs, signed answers, errors, PostgreSQL). Throttled failures
do not turn the shortcut off: it answers only verified callers, and those are never
throttled on either path (client_authentication.py). HTTP/1.1 keep-alive, pipelining,
``Connection: close`` and HTTP/1.0 follow uvicorn's own rules: this class reuses its
request cycle objects and its completion callback.

Tied to uvicorn's httptools protocol internals (``_start_asgi_task``, ``cycle.body``,
``cycle.more_body``, ``on_response_complete``); tests/e2e/test_fastpath.py drives a real
server through every case above, so an incompatible uvicorn fails the tests, not users.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from keystile.core.metadata import INTROSPECTION_PATH
from keystile.server.tls_peer import PeerCertificateProtocol

log = logging.getLogger("keystile.server")

FastAnswer = Callable[[Any, bytes], "tuple[bytes, bytes] | None"]

# Exactly the headers the full path sends with a JSON answer (http.NO_STORE_HEADERS).
_HEAD = (
    b"content-type: application/json\r\n"
    b"cache-control: no-store\r\n"
    b"pragma: no-cache\r\n"
    b"x-content-type-options: nosniff\r\n"
)


def _find_endpoints(app: Any) -> Any:
    """The OAuthEndpoints behind uvicorn's middleware wrappers (proxy headers, ...)."""
    for _ in range(8):
        endpoints = getattr(app, "endpoints", None)
        if endpoints is not None and hasattr(endpoints, "introspect_now"):
            return endpoints
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class FastPathProtocol(PeerCertificateProtocol):
    """uvicorn's httptools protocol, answering common introspection requests itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        endpoints = _find_endpoints(self.app)
        self._answer_now: FastAnswer | None = None
        self._body_limit = 0
        if endpoints is not None and getattr(endpoints, "answers_now", False):
            self._answer_now = endpoints.introspect_now
            self._body_limit = min(endpoints.max_body, HIGH_WATER_LIMIT)
        self._waiting: RequestResponseCycle | None = None  # body still arriving
        self._waiting_app: Any = None

    # -- uvicorn's hooks -------------------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        if (
            self._answer_now is not None
            and app is self.app  # not uvicorn's 503 app (limit_concurrency)
            and cycle.scope["path"] == INTROSPECTION_PATH
            and cycle.scope["method"] == "POST"
            and not cycle.waiting_for_100_continue
        ):
            if cycle.more_body:
                # Wait for the rest of the body here instead of in an ASGI task.
                self._waiting, self._waiting_app = cycle, app
                return
            if self._answer(cycle):
                return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        cycle = self._waiting
        if cycle is not None and len(cycle.body) > self._body_limit:
            self._release()  # too large for the shortcut: the full path answers 413

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self._waiting
        if cycle is not None and not cycle.more_body:
            app = self._waiting_app
            self._waiting = self._waiting_app = None
            if not self._answer(cycle):
                super()._start_asgi_task(cycle, app)

    def connection_lost(self, exc: Exception | None) -> None:
        self._waiting = self._waiting_app = None
        super().connection_lost(exc)

    # -- the shortcut ----------------------------------------------------------------------

    def _release(self) -> None:
        cycle, app = self._waiting, self._waiting_app
        self._waiting = self._waiting_app = None
        if cycle is not None:
            super()._start_asgi_task(cycle, app)

    def _answer(self, cycle: RequestResponseCycle) -> bool:
        """Answer ``cycle`` at once if introspect_now can; False: take the full path."""
        assert self._answer_now is not None
        try:
            answer = self._answer_now(cycle.scope, bytes(cycle.body))
        except Exception:  # never lose a request to the shortcut: the full path decides
            log.exception("introspection fast path failed; using the full path")
            return False
        if answer is None or self.transport.is_closing():
            return False
        payload, rid = answer
        parts = [b"HTTP/1.1 200 OK\r\n"]
        for name, value in self.server_state.default_headers:  # date (and server, if on)
            parts += (name, b": ", value, b"\r\n")
        parts += (
            _HEAD,
            b"content-length: %d\r\nx-request-id: %s\r\n" % (len(payload), rid),
            b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n",
            payload,
        )
        cycle.response_started = cycle.response_complete = True
        cycle.body = bytearray()
        self.transport.write(b"".join(parts))
        # What uvicorn's send() does once a response is complete.
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
        return True
