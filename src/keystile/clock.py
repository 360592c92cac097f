"""Time, passed in: expiry decisions take a Clock so tests can move time without sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time in whole seconds since the Unix epoch."""

    def now(self) -> int: ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> int:
        return int(time.time())


class FixedClock:
    """A clock that stands still until told to move: ``clock.advance(3600)``."""

    def __init__(self, now: int = 1_800_000_000) -> None:
        self._now = now

    def now(self) -> int:
        return self._now

    def advance(self, seconds: int) -> None:
        self._now += seconds

    def set(self, now: int) -> None:
        self._now = now
