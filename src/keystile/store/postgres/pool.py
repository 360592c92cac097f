"""A bounded PostgreSQL connection pool, and which errors mean "the database could not answer"."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg

from keystile.errors import StoreUnavailable

# Errors that mean "the database could not answer", never "the answer is no".
_UNAVAILABLE = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def _unavailable(exc: BaseException) -> StoreUnavailable:
    detail = str(exc) or type(exc).__name__
    return StoreUnavailable(f"PostgreSQL store unavailable: {detail}")


def _reusable_after(exc: BaseException) -> bool:
    """May a connection go back to the pool after ``exc``? Yes after an error the server
    reported (SQL errors, and our NotFound/Conflict raised after the rollback); no after
    I/O errors, timeouts and cancellation, which can leave it mid-protocol."""
    if isinstance(exc, asyncpg.PostgresError):
        return not isinstance(exc, asyncpg.PostgresConnectionError)
    return isinstance(exc, Exception) and not isinstance(exc, _UNAVAILABLE)


class _Pool:
    """A bounded pool of connections, lean on the hot path: taking an idle connection and
    giving it back never awaits. Only when every connection is busy does a caller wait, at
    most ``acquire_timeout`` and behind at most ``max_waiting`` others; past either bound it
    gets StoreUnavailable (503), never an unbounded queue.

    A connection that saw an error other than an SQL error (I/O, timeout, cancellation) is
    closed rather than reused; closed connections (the server restarted) are skipped and
    replaced on demand, so the pool heals by itself when the database comes back.
    (asyncpg's own pool costs about as much CPU per request as the query itself, measured.)
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        size: int,
        acquire_timeout: float,
        max_waiting: int,
    ) -> None:
        self._connect = connect
        self.size = size
        self.acquire_timeout = acquire_timeout
        self.max_waiting = max_waiting
        self.opened = 0  # open or opening, idle or in use
        self._idle: list[asyncpg.Connection] = []
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> asyncpg.Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()  # LIFO: the fewest connections stay warm
            if not conn.is_closed():
                return conn
            self.opened -= 1
        return await self._acquire_slow()

    async def _acquire_slow(self) -> asyncpg.Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.acquire_timeout
        while True:
            if self.closed:
                raise StoreUnavailable("store is not open")
            if self.opened < self.size:
                self.opened += 1
                try:
                    async with asyncio.timeout_at(deadline):
                        return await self._connect()
                except BaseException:
                    self.opened -= 1
                    self._hand(None)
                    raise
            if len(self._waiters) >= self.max_waiting:
                raise StoreUnavailable(
                    f"PostgreSQL store busy: {self.size} connections in use and "
                    f"{self.max_waiting} requests waiting"
                )
            waiter: asyncio.Future[asyncpg.Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await waiter
            except TimeoutError:
                if waiter.done() and not waiter.cancelled():  # handed over at the last moment
                    self._give_back(waiter.result())
                raise StoreUnavailable(
                    f"PostgreSQL store busy: no connection free within {self.acquire_timeout} s"
                ) from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if conn is not None:
                return conn
            # None: a connection was dropped, so a slot is free: go round and open one.

    def release(self, conn: asyncpg.Connection, *, reusable: bool = True) -> None:
        if reusable and not self.closed and not conn.is_closed():
            self._hand(conn)
            return
        self.opened -= 1
        if not conn.is_closed():
            conn.terminate()
        self._hand(None)

    def _give_back(self, conn: asyncpg.Connection | None) -> None:
        if conn is not None:
            self.release(conn)

    def _hand(self, conn: asyncpg.Connection | None) -> None:
        """Pass a connection (or a free slot, None) to the first live waiter, else keep it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is not None:
            self._idle.append(conn)

    async def close(self, grace: float) -> None:
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(StoreUnavailable("store is closing"))
        idle, self._idle = self._idle, []
        for conn in idle:
            self.opened -= 1
            try:
                await conn.close(timeout=grace)
            except (*_UNAVAILABLE, asyncio.CancelledError):
                conn.terminate()
