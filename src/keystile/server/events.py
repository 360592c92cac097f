"""``GET /events``: the revocation event log as a Server-Sent Events stream.

Resource servers (their introspecting clients, authenticated with HTTP Basic) subscribe to
learn at once that a token they may have cached was revoked. Each SSE message is::

    id: 42
    event: token_revoked
    data: {"id":42,"type":"token_revoked","iat":1800000000,"token_sha256":"…","jti":"…",…}

- ``id`` is the position in the durable, ordered log; a client reconnects with
  ``Last-Event-ID`` and gets every event it missed, replayed from the store.
- A resume point the log no longer holds (purged, or from another database) gets a
  ``reset`` event first: the subscriber must drop everything it cached.
- After any replay, a ``ready`` event says the stream is live (its ``id`` is the current
  position); ``: keepalive`` comments follow every ``keepalive`` seconds of silence.
- Payloads carry the SHA-256 of tokens and ids, never a raw token. A resource server gets
  ``token_revoked`` events only for tokens it could see at introspection (the same rules);
  client-level events go to every subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson

from keystile.core.forms import Form
from keystile.core.models import ResourceServer
from keystile.errors import IntrospectionForbidden, MethodNotAllowed, OAuthError, StoreUnavailable
from keystile.events.bus import EventBus
from keystile.server.endpoint_base import Call, _read_headers, _source
from keystile.server.endpoints import OAuthEndpoints
from keystile.server.http import Receive, Scope, Send, send_json
from keystile.store.base import (
    ADMIN_ACTION,
    GRANT_REVOKED,
    TOKEN_REVOKED,
    USER_SESSIONS_REVOKED,
    Event,
)

log = logging.getLogger("keystile.events")

RESET = "reset"
READY = "ready"
_PAGE = 500


def event_visible(rs: ResourceServer, event: Event) -> bool:
    """May this resource server learn of this event? Token events follow introspection's
    visibility rules (RFC 7662 §4); client-level events concern every cache. Cascade
    summaries (a grant, a user's sessions) name a user, and every token they revoked has its
    own token_revoked event, so only "any" resource servers get them."""
    if event.type == ADMIN_ACTION:
        return False  # the operators' audit trail: read with the admin API, never streamed
    if "any" in rs.rules:
        return True
    if event.type in (GRANT_REVOKED, USER_SESSIONS_REVOKED):
        return False
    if event.type != TOKEN_REVOKED:
        return True
    payload = event.payload
    if rs.identifier in payload.get("aud", ()):
        return True
    return "owner" in rs.rules and payload.get("client_id") in rs.introspection_clients


def sse(event_id: int, event_type: str, data: dict[str, Any]) -> bytes:
    body = orjson.dumps(data)  # one line: orjson never emits a newline
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event_type.encode(), body)


def _event_message(event: Event) -> bytes:
    return sse(
        event.id,
        event.type,
        {"id": event.id, "type": event.type, "iat": event.created_at, **event.payload},
    )


def _last_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 18:
        return -1  # unusable: treated like a resume point we do not hold
    return int(value)


class EventStream:
    """The ``/events`` endpoint over an EventBus."""

    def __init__(self, endpoints: OAuthEndpoints, bus: EventBus, *, keepalive: float = 15.0):
        self.endpoints = endpoints
        self.store = endpoints.store
        self.bus = bus
        self.keepalive = keepalive
        self._measured = 0  # the last event whose delivery delay was observed

    def _delivered(self, event: Event) -> None:
        """Observe how long the event took from its write to this send, once per event:
        the first stream of this process to send it (replays are not counted)."""
        if event.id <= self._measured or event.written_ms is None:
            return
        self._measured = event.id
        delay = time.time() - event.written_ms / 1000
        self.endpoints.metrics.event_delivery.observe(max(delay, 0.0))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["method"] != "GET":
                raise MethodNotAllowed("use GET for the event stream")
            _, _, authorization, _ = _read_headers(scope)
            call = Call(scope, Form(), authorization, _source(scope))
            client = await self.endpoints.authenticate(call)
            rs = await self.store.resource_server_for_client(client.client_id)
            if rs is None:
                raise IntrospectionForbidden(
                    "this client is not an introspecting client of any resource server"
                )
            resume = _last_event_id(_header(scope, b"last-event-id"))
        except OAuthError as exc:
            extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
            if isinstance(exc, MethodNotAllowed):
                extra.append((b"allow", b"GET"))
            await send_json(send, exc.status_code, exc.body(), extra=extra)
            return
        except StoreUnavailable:
            await send_json(
                send,
                503,
                {
                    "error": "temporarily_unavailable",
                    "error_description": "the event log is unavailable; retry shortly",
                },
                extra=[(b"retry-after", b"1")],
            )
            return
        try:
            await self._stream(scope, receive, send, rs, resume)
        except asyncio.CancelledError:
            # The server cancels streams still open when its graceful-shutdown time is up:
            # for an endless stream that is the normal end, not an application error.
            log.info("event stream closed at shutdown", extra={"resource": rs.identifier})

    async def _stream(
        self, scope: Scope, receive: Receive, send: Send, rs: ResourceServer, resume: int | None
    ) -> None:
        sub = self.bus.subscribe()  # before reading the store, so nothing falls in between

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            sub.end()

        watcher = asyncio.create_task(watch_disconnect())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-store"),
                        (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
                    ],
                }
            )
            await self._write(send, b"retry: 1000\n\n")
            position = await self._catch_up(send, rs, resume)
            log.info(
                "event stream opened",
                extra={"resource": rs.identifier, "from": resume, "position": position},
            )
            await self._write(send, sse(position, READY, {"id": position, "type": READY}))
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), self.keepalive)
                except TimeoutError:
                    await self._write(send, b": keepalive\n\n")
                    continue
                if event is None:
                    break  # disconnected, too slow (it will resume), or shutting down
                if event.id <= position:
                    continue
                position = event.id
                if event_visible(rs, event):
                    await self._write(send, _event_message(event))
                    self._delivered(event)
        except (OSError, StoreUnavailable) as exc:
            log.info("event stream ended", extra={"resource": rs.identifier, "error": str(exc)})
        finally:
            sub.close()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _catch_up(self, send: Send, rs: ResourceServer, resume: int | None) -> int:
        """Replay what a resuming subscriber missed, or tell it to reset; the new position."""
        latest = await self.store.latest_event_id()
        if resume is None:
            return latest
        oldest = await self.store.oldest_event_id()
        gap = (
            resume < 0
            or resume > latest
            or (oldest is None and resume < latest)
            or (oldest is not None and resume < oldest - 1)
        )
        if gap:
            await self._write(send, sse(latest, RESET, {"id": latest, "type": RESET}))
            return latest
        position = resume
        while True:
            events = await self.store.events_after(position, _PAGE)
            for event in events:
                position = event.id
                if event_visible(rs, event):
                    await self._write(send, _event_message(event))
                    self._delivered(event)
            if len(events) < _PAGE:
                return max(position, latest)

    @staticmethod
    async def _write(send: Send, data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
