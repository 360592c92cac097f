"""Throttling of failed client authentications, per client id and per source address.

A fixed window per key: after ``limit`` failures inside ``window`` seconds, that key is
refused with 429 until the window ends. Successful requests are never counted, so a
legitimate resource server under load is not slowed by its own traffic. In-process
state: each AS process keeps its own counters.
"""

from __future__ import annotations

from typing import Protocol

from keystile.clock import Clock

_MAX_KEYS = 100_000


class Throttle(Protocol):
    """What the endpoints need from a throttle. All three run on the hot path without I/O;
    ``server/shared_throttle.py`` shares counts across processes behind this interface."""

    @property
    def active(self) -> bool: ...
    def retry_after(self, *keys: str) -> int: ...
    def failed(self, *keys: str) -> None: ...


class FailureThrottle:
    def __init__(self, clock: Clock, *, limit: int, window: int) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (window start, failures)

    @property
    def active(self) -> bool:
        """False while no failure is on record: the common case costs one check."""
        return bool(self._counts)

    def retry_after(self, *keys: str) -> int:
        """Seconds to wait if any key is over its limit now, else 0."""
        if not self._counts:
            return 0
        now = self._clock.now()
        wait = 0
        for key in keys:
            entry = self._counts.get(key)
            if entry is None:
                continue
            start, failures = entry
            if now - start >= self._window:
                continue
            if failures >= self._limit:
                wait = max(wait, start + self._window - now)
        return wait

    def failed(self, *keys: str) -> None:
        now = self._clock.now()
        if len(self._counts) >= _MAX_KEYS:
            self._expire(now)
        for key in keys:
            start, failures = self._counts.get(key, (now, 0))
            if now - start >= self._window:
                start, failures = now, 0
            self._counts[key] = (start, failures + 1)

    def _expire(self, now: int) -> None:
        stale = [k for k, (start, _) in self._counts.items() if now - start >= self._window]
        for key in stale:
            del self._counts[key]
        if len(self._counts) >= _MAX_KEYS:  # under a flood: forget the oldest half
            for key in sorted(self._counts, key=lambda k: self._counts[k][0])[: _MAX_KEYS // 2]:
                del self._counts[key]
