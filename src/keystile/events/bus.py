"""Fan-out of the store's durable event log to the subscribers in this process.

The log itself lives in the store (written in the same transaction as each revocation).
This bus notices new rows and hands them to every subscriber of this process, in order:

- SQLite: it polls ``latest_event_id()`` every ``poll_interval`` (10 ms by default; one
  indexed read) and is woken at once by ``notify()`` when this process wrote the event.
  Other processes (the CLI, other workers) are seen on the next poll.
- A store that can push (PostgreSQL LISTEN/NOTIFY) offers ``listen_events(callback)``;
  the bus then waits for those wake-ups and polls only as a slow safety net.

A subscriber that falls behind by more than its queue holds is closed; it reconnects with
Last-Event-ID and replays from the store, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from keystile.errors import KeystileError
from keystile.store.base import Event, Store

log = logging.getLogger("keystile.events")

_PAGE = 500


class Subscription:
    """What one stream consumer receives: events in id order, or None when it must stop."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.closed = False

    def _offer(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # Too slow: close it rather than block everyone; it resumes from the store.
            self.closed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def end(self) -> None:
        """Tell the consumer to stop (the server is shutting down)."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)

    def close(self) -> None:
        self._bus._subscribers.discard(self)
        self.closed = True


class EventBus:
    def __init__(
        self, store: Store, *, poll_interval: float = 0.01, queue_size: int = 10_000
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.queue_size = queue_size
        self.last_id = 0
        self._subscribers: set[Subscription] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pushed = False

    @property
    def subscriber_count(self) -> int:
        """Event-stream subscribers in this process now (the admin dashboard shows it)."""
        return len(self._subscribers)

    async def lag(self) -> int:
        """Events in the store's log that this process has not fanned out yet."""
        return max(0, await self.store.latest_event_id() - self.last_id)

    async def start(self) -> None:
        self.last_id = await self.store.latest_event_id()
        listen: Callable[[Callable[[], None]], Any] | None = getattr(
            self.store, "listen_events", None
        )
        if listen is not None:
            await listen(self.notify)
            self._pushed = True
        self._task = asyncio.create_task(self._run(), name="keystile-event-bus")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.end_streams()

    def end_streams(self) -> None:
        """Ask every open stream to finish (server shutdown): clients reconnect elsewhere."""
        for sub in list(self._subscribers):
            sub.end()

    def notify(self) -> None:
        """Something was written: look now instead of at the next poll."""
        self._wake.set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self, self.queue_size)
        self._subscribers.add(sub)
        return sub

    async def _run(self) -> None:
        # With push notifications the poll is only a safety net against a lost wake-up.
        interval = 1.0 if self._pushed else self.poll_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            try:
                await self._deliver()
            except KeystileError as exc:
                log.warning("event bus cannot read the store", extra={"error": str(exc)})
                await asyncio.sleep(min(1.0, interval * 10))

    async def _deliver(self) -> None:
        latest = await self.store.latest_event_id()
        while latest > self.last_id:
            events = await self.store.events_after(self.last_id, _PAGE)
            if not events:
                # Rows between last_id and latest were purged already: nothing to replay.
                self.last_id = latest
                break
            for event in events:
                for sub in list(self._subscribers):
                    sub._offer(event)
                self.last_id = event.id
            if len(events) < _PAGE:
                break
