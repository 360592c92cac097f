"""Failed client-authentication throttling shared by every AS process through Redis.

The endpoints ask the throttle synchronously, on the hot path, so this class never makes
them wait for Redis. Each process keeps a local mirror of the counters and answers from
it; Redis only feeds the mirror, in the background:

- ``failed(*keys)`` counts the failure in the mirror at once (so throttling works even with
  Redis down) and queues the keys; a background task INCRs the shared counters (one
  pipeline per batch) and PUBLISHes the new totals.
- every process SUBSCRIBEs to those totals and raises its mirror to them, so a client id
  or address throttled through one instance is throttled by all of them within
  milliseconds. A process that missed a message learns the total at its next failure
  for that key: at most one extra attempt per process and window gets through.

Windows are fixed and aligned to the clock (``now - now % window``), so all processes count
the same window. A successful caller never causes a Redis command.

When Redis is unreachable the throttle counts per process (what ``FailureThrottle`` does),
logs a warning once, ``/readyz`` says ``"redis": "unavailable"``, and it reconnects in the
background. Answers never depend on Redis: only how many guesses get through does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from typing import Any, Literal

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        "sharing throttling through Redis needs redis-py: "
        "pip install 'redis>=5.0' (keystile's redis extra)"
    ) from exc

from keystile.clock import Clock

log = logging.getLogger("keystile.server")

RedisState = Literal["connecting", "ok", "unavailable"]

_MAX_KEYS = 100_000
_QUEUE = 10_000  # failures waiting to be sent to Redis; beyond that only counted locally
_UNAVAILABLE = (RedisError, OSError, TimeoutError)


class RedisFailureThrottle:
    """``FailureThrottle`` semantics with counters shared through Redis:
    ``RedisFailureThrottle("redis://127.0.0.1:6379/0", clock, limit=10, window=60)``,
    then ``await throttle.start()`` in the app's lifespan."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        limit: int,
        window: int,
        prefix: str = "keystile:throttle",
        timeout: float = 0.5,
        retry_interval: float = 1.0,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._prefix = prefix
        self._channel = f"{prefix}:totals"
        self._retry_interval = retry_interval
        # key -> (window start, failures): the max of this process's own count and the
        # shared total last heard of.
        self._counts: dict[str, tuple[int, int]] = {}
        self._pending: asyncio.Queue[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.state: RedisState = "connecting"
        # No retries inside redis-py: a failure is reported at once and the background
        # tasks retry on their own schedule, so nothing ever waits on a dead Redis twice.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )

    # -- the synchronous interface the endpoints use ----------------------------------------

    @property
    def active(self) -> bool:
        """False while no failure is on record: the common case costs one check."""
        return bool(self._counts)

    def retry_after(self, *keys: str) -> int:
        """Seconds to wait if any key is over its limit in the current window, else 0."""
        if not self._counts:
            return 0
        now = self._clock.now()
        start = now - now % self._window
        wait = 0
        for key in keys:
            entry = self._counts.get(key)
            if entry is not None and entry[0] == start and entry[1] >= self._limit:
                wait = max(wait, start + self._window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = self._clock.now()
        start = now - now % self._window
        if len(self._counts) >= _MAX_KEYS:
            self._expire(start)
        for key in keys:
            entry = self._counts.get(key)
            count = entry[1] if entry is not None and entry[0] == start else 0
            self._counts[key] = (start, count + 1)
            if self._pending is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    self._pending.put_nowait(key)

    def _expire(self, start: int) -> None:
        for key in [k for k, (s, _) in self._counts.items() if s < start]:
            del self._counts[key]
        if len(self._counts) >= _MAX_KEYS:  # under a flood: forget the oldest half
            for key in list(self._counts)[: _MAX_KEYS // 2]:
                del self._counts[key]

    def _merge(self, key: str, start: int, total: int) -> None:
        entry = self._counts.get(key)
        if entry is None or entry[0] < start or (entry[0] == start and entry[1] < total):
            if entry is None and len(self._counts) >= _MAX_KEYS:
                self._expire(start)
            self._counts[key] = (start, total)

    # -- lifecycle and background work -------------------------------------------------------

    async def start(self) -> None:
        """Start sharing: check Redis once (a warning if it is down), then run the
        publisher and subscriber tasks. Never fails: without Redis it counts locally."""
        if self._tasks:
            return
        self._pending = asyncio.Queue(_QUEUE)
        try:
            await self._redis.ping()
            self._set_state("ok")
        except _UNAVAILABLE as exc:
            self._set_state("unavailable", exc)
        subscribed = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(
                self._publish_loop(self._pending), name="keystile-throttle-publish"
            ),
            asyncio.create_task(self._subscribe_loop(subscribed), name="keystile-throttle-sub"),
        ]
        # Wait (briefly) for the subscription, so totals published from now on are heard.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(subscribed), 2.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # A cancellation landing inside a redis-py command can be swallowed there (the
            # task then waits for the next failure for good): cancel again until it ends.
            while not task.done():
                await asyncio.wait({task}, timeout=0.1)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(*_UNAVAILABLE):
            await self._redis.aclose()

    def _set_state(self, state: RedisState, exc: BaseException | None = None) -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if state == "unavailable":
            log.warning(
                "Redis unreachable: failed-authentication throttling counts per process "
                "until it is back",
                extra={"error": (str(exc) or type(exc).__name__) if exc else None},
            )
        elif previous == "unavailable":
            log.info("Redis reachable again: failed-authentication throttling is shared")

    def _redis_key(self, start: int, key: str) -> str:
        # Keys carry caller-chosen client ids: hash them, so their size is bounded.
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{self._prefix}:{start}:{digest}"

    async def _publish_loop(self, pending: asyncio.Queue[str]) -> None:
        while True:
            keys = [await pending.get()]
            while not pending.empty() and len(keys) < 500:
                keys.append(pending.get_nowait())
            now = self._clock.now()
            start = now - now % self._window
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        rkey = self._redis_key(start, key)
                        pipe.incr(rkey)
                        pipe.expire(rkey, 2 * self._window)
                    replies: list[Any] = await pipe.execute()
                totals: dict[str, int] = {}
                for key, total in zip(keys, replies[::2], strict=True):
                    totals[key] = max(totals.get(key, 0), int(total))
                for key, total in totals.items():
                    self._merge(key, start, total)
                await self._redis.publish(
                    self._channel,
                    json.dumps([start, list(totals.items())], separators=(",", ":")),
                )
                self._set_state("ok")
            except _UNAVAILABLE as exc:
                # These failures stay counted in this process only.
                self._set_state("unavailable", exc)
                await asyncio.sleep(self._retry_interval)
                while not pending.empty():  # what piled up meanwhile: local only too
                    pending.get_nowait()

    async def _subscribe_loop(self, subscribed: asyncio.Future[None]) -> None:
        cleaned = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                self._set_state("ok")
                if not subscribed.done():
                    subscribed.set_result(None)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_totals(message.get("data"))
                    now = self._clock.now()
                    start = now - now % self._window
                    if start != cleaned:  # a new window: forget the old one's counts
                        self._expire(start)
                        cleaned = start
            except _UNAVAILABLE as exc:
                self._set_state("unavailable", exc)
                if not subscribed.done():  # start() need not wait: Redis is down
                    subscribed.set_result(None)
            finally:
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]
            await asyncio.sleep(self._retry_interval)

    def _on_totals(self, data: Any) -> None:
        try:
            start, totals = json.loads(data)
            for key, total in totals:
                if isinstance(key, str) and isinstance(total, int):
                    self._merge(key, int(start), total)
        except (ValueError, TypeError):
            log.warning("ignored a malformed throttle message from Redis")
