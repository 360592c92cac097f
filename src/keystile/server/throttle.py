"""Counting failed authentications per key, in fixed windows.

After ``limit`` failures inside ``window`` seconds a key is over its limit until the window
ends. What a key is, and what being over the limit refuses, is the caller's rule:

- client authentication (server/client_authentication.py): keys are the (client id,
  address) pair and the address; only *failing* attempts are refused (429), a credential
  that verifies never is;
- the sign-in form (server/ui_pages.py): keys are the username, whose lock refuses every
  attempt until the window ends, and the address, whose lock refuses wrong passwords only.

Successful requests are never counted, so a legitimate resource server under load is not
slowed by its own traffic. In-process state: each AS process keeps its own counters
(``shared_throttle.py`` shares them through Redis).
"""

from __future__ import annotations

from typing import Protocol

from keystile.clock import Clock

_MAX_KEYS = 100_000


class Throttle(Protocol):
    """What the endpoints need from a throttle. Both run without I/O, and only for failed
    authentications; ``server/shared_throttle.py`` shares counts across processes behind
    this interface."""

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
