"""The resource side of revocation events: follow the AS's stream, evict at once.

Connects to the AS's event endpoint (Server-Sent Events; see docs/events.md), resumes with
``Last-Event-ID`` after any disconnect, and applies each event to the validator's cache:

- ``token_revoked``: evict that token (the event carries its SHA-256, our cache key);
- ``client_disabled`` / ``client_deleted``: evict that client's tokens;
- ``grant_revoked`` / ``user_sessions_revoked``: nothing more to do: every token such a
  cascade revokes comes with its own ``token_revoked`` event in the same transaction;
- ``reset`` or an event type this version does not know: flush everything (safe side);
- ``ready``: the stream is live; the cache leaves degraded mode.

While disconnected the cache is in degraded mode (entries older than ``degraded_ttl`` are
not used), so staleness stays bounded. Reconnection backs off exponentially with jitter.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from keystile.resource.cache import TokenCache
    from keystile.resource.introspector import TokenValidator
    from keystile.resource.revoked import RevokedTokens

log = logging.getLogger("keystile.resource")

_KNOWN = frozenset(
    {
        "token_revoked",
        "client_disabled",
        "client_deleted",
        "grant_revoked",
        "user_sessions_revoked",
        "reset",
        "ready",
    }
)


class EventParser:
    """Server-Sent Events framing: feed it lines, get back each complete event's fields."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}

    def feed(self, line: str) -> dict[str, str] | None:
        if line == "":
            fields, self._fields = self._fields, {}
            return fields if "event" in fields or "data" in fields else None
        if not line.startswith(":"):  # ":" starts a keepalive comment
            name, _, value = line.partition(":")
            self._fields[name] = value[1:] if value.startswith(" ") else value
        return None


def apply_event(
    cache: TokenCache,
    event: str,
    data_text: str | None,
    revoked: RevokedTokens | None = None,
) -> None:
    """Apply one event of the AS's stream to a cache (the table in docs/events.md).

    ``revoked`` also records revocations, for tokens validated locally (JWTs), which an
    eviction alone would not stop.

    Shared by the asyncio client below and the sync client's thread, which calls it under
    its cache lock.
    """
    try:
        parsed: Any = json.loads(data_text or "{}")
    except ValueError:
        parsed = None
    data: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    if event == "token_revoked":
        if revoked is not None:
            revoked.token_revoked(data)
        digest = data.get("token_sha256")
        try:
            cache.evict(bytes.fromhex(digest)) if isinstance(digest, str) else cache.clear()
        except ValueError:
            cache.clear()
    elif event in ("client_disabled", "client_deleted"):
        if revoked is not None:
            revoked.client_revoked(data)
        client_id = data.get("client_id")
        if isinstance(client_id, str):
            cache.evict_client(client_id)
        else:
            cache.clear()
    elif event == "ready":
        cache.stream_connected = True
    elif event == "reset" or event not in _KNOWN:
        # Something we cannot apply precisely (a gap, or a newer AS's event type):
        # forgetting everything is always safe.
        cache.clear()


class EventStreamClient:
    def __init__(
        self,
        validator: TokenValidator,
        *,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        read_timeout: float = 45.0,
    ) -> None:
        self.validator = validator
        self.cache = validator.cache
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.read_timeout = read_timeout
        self.last_event_id: str | None = None
        self.connected = asyncio.Event()
        self.applied = 0  # events applied, for tests and metrics
        self.connects = 0
        self.readies = 0  # streams that got as far as "ready": live at least once

    async def run(self) -> None:
        delay = self.backoff_min
        while True:
            try:
                await self._follow()
                delay = self.backoff_min  # the server ended a healthy stream: come back soon
            except asyncio.CancelledError:
                self._disconnected()
                raise
            except (httpx.HTTPError, ValueError, OSError) as exc:
                log.warning("event stream lost", extra={"error": type(exc).__name__})
            self._disconnected()
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter only
            delay = min(self.backoff_max, delay * 2)

    def _disconnected(self) -> None:
        self.connected.clear()
        self.cache.stream_connected = False

    async def _follow(self) -> None:
        v = self.validator
        assert v.events_endpoint is not None
        headers = {"accept": "text/event-stream", "authorization": v.basic_authorization}
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        timeout = httpx.Timeout(10.0, read=self.read_timeout)
        async with v.http.stream(
            "GET",
            v.events_endpoint,
            headers=headers,
            timeout=timeout,
        ) as r:
            if r.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"event stream answered {r.status_code}", request=r.request, response=r
                )
            self.connects += 1
            parser = EventParser()
            async for line in r.aiter_lines():
                fields = parser.feed(line)
                if fields is not None:
                    await self._apply(fields)

    async def _apply(self, fields: dict[str, str]) -> None:
        event = fields.get("event", "message")
        apply_event(self.cache, event, fields.get("data"), self.validator.revoked)
        shared = self.validator.shared
        if shared is not None and event != "ready":
            try:
                parsed = json.loads(fields.get("data") or "{}")
            except ValueError:
                parsed = None
            await shared.apply_event(event, parsed if isinstance(parsed, dict) else {})
        if event == "ready":
            self.readies += 1
            self.connected.set()
        if "id" in fields:
            self.last_event_id = fields["id"]
        self.applied += 1
