"""Remembered introspection answers on PostgreSQL: leases, invalidation and the write fence
(decision 0007).

An AS process may answer an introspection from memory, without a database round trip, only
while it holds an **answer lease**: a row in ``answer_leases`` that it renews every
``ttl / 4`` over a dedicated connection, which also LISTENs for changes. Locally the lease
counts as held until ``the time the renewal was sent + 0.9 * ttl``; the row says
``the database's clock when it ran + ttl``, which is later in real time. So a process never
believes it holds a lease that the database considers expired.

What keeps remembered answers right, whichever process changes what:

1. A transaction that changes what an answer depends on (a token's row, or the registry:
   clients, resource servers, keys) sets ``keystile.answers_changed`` and NOTIFYs every
   process (triggers of the answer-memory migration). On any notification a process drops
   everything it remembers (``data_version_now()`` moves on).
2. The writer, after COMMIT and **before it answers its caller**, runs the *fence*: it takes
   a fence number, NOTIFYs it, and waits until every lease still valid has acknowledged that
   number or a later one. A process acknowledges only after dropping its memory, and the
   fence was sent after the commit, so from then on every process either asks the database
   (which has the change) or remembers answers computed after the change.

   How the writer waits changes nothing above: it returns only once ``answer_leases`` itself
   says no valid lease is behind. An acknowledgement is the lease row's update, and the same
   statement NOTIFYs ``keystile_fence_ack``, delivered only once it committed; the writer's
   lease connection hears it and wakes the writer, which reads ``answer_leases`` again. A
   notification is only a wake-up: a slow poll covers one lost, and a writer without a
   lease connection (the CLI, ``answer_lease = 0``, a lease connection down) polls instead.
3. A process that cannot hear (its connection lost, its loop stalled, its host paused) stops
   renewing; its lease runs out locally before it runs out in the database, and the fence
   stops waiting for it then. A lease that lapsed, and a reconnection, drop the memory before
   the process answers from memory again. The fence therefore waits at most ``ttl``.

A revocation that answered 200 is thus seen by the next introspection in every process, as
on SQLite with ``data_version``. The price is on writes: after the commit, the statement
sending the fence, the other processes' acknowledgements and one more read of
``answer_leases`` (a millisecond or two with every process alive, at most ``ttl`` while a
dead process's lease runs out).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

import asyncpg

from keystile.errors import StoreUnavailable
from keystile.store.postgres.connection import PostgresBase, log
from keystile.store.postgres.pool import _UNAVAILABLE, _unavailable

ANSWERS_CHANNEL = "keystile_answers"
FENCE_CHANNEL = "keystile_fence"
ACK_CHANNEL = "keystile_fence_ack"

_LOCAL_SHARE = 0.9  # of the ttl a lease counts as held locally, from the renewal's sending
_RENEWALS_PER_TTL = 4
_PENDING_SQL = (
    "SELECT count(*) FROM answer_leases"
    " WHERE expires_at > clock_timestamp() AND fence < $1 AND instance_id <> $2"
)
# The fence's start, in one round trip: a number, the leases behind it, and (if any) the
# NOTIFY, sent when this statement commits. The CTE calling nextval() is volatile, so
# PostgreSQL evaluates it once.
_FENCE_SQL = (
    "WITH f AS (SELECT nextval('answer_fence') AS number),"
    " pending AS (SELECT count(*) AS n FROM answer_leases, f"
    " WHERE expires_at > clock_timestamp() AND fence < f.number AND instance_id <> $1)"
    " SELECT f.number, pending.n,"
    " CASE WHEN pending.n > 0 THEN pg_notify($2::text, $3::text || ':' || f.number) END"
    " FROM f, pending"
)
_RENEW_SQL = (
    "INSERT INTO answer_leases (instance_id, expires_at, fence)"
    " VALUES ($1, clock_timestamp() + make_interval(secs => $2), $3)"
    " ON CONFLICT (instance_id) DO UPDATE SET expires_at = excluded.expires_at,"
    " fence = greatest(answer_leases.fence, excluded.fence)"
)
# The same, acknowledging a fence out loud: the NOTIFY is part of the statement's
# transaction, so writers hear of the acknowledgement only once it is committed.
_RENEW_ACK_SQL = (
    f"WITH lease AS ({_RENEW_SQL} RETURNING fence)"
    " SELECT pg_notify($4::text, $5::text || ':' || lease.fence || ':' || $1::text) FROM lease"
)
# A writer that hears acknowledgements still reads answer_leases this often (a lost
# notification); one that does not polls every 0.5 ms for 10 ms, then backs off to 10 ms.
_FALLBACK_POLL = 0.015


class AnswersMixin(PostgresBase):
    """``start_answer_lease(ttl)``, ``data_version_now()`` and the write fence."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.instance_id = secrets.token_hex(8)
        self._answer_epoch = 0
        self._lease_until = 0.0  # time.monotonic() until which the lease is held locally
        self._lease_ttl = 0.0
        self._lease_task: asyncio.Task[None] | None = None
        self._acks: asyncio.Event | None = None
        self._fence_seen = 0
        self._fence_acked = 0  # the highest fence this process acknowledged out loud
        self._hearing_acks = False  # the lease connection LISTENs on ACK_CHANNEL now
        self._ack_waiters: dict[asyncio.Future[None], int] = {}  # waiter -> fence number

    # -- the reading side ------------------------------------------------------------------

    def data_version_now(self) -> int:
        """A number that moves on whenever what this process may remember could have
        changed; StoreUnavailable while it holds no answer lease (then nothing may be
        answered from memory)."""
        if time.monotonic() < self._lease_until:
            return self._answer_epoch
        raise StoreUnavailable("no answer lease")

    def _drop_answers(self) -> None:
        self._answer_epoch += 1

    async def start_answer_lease(self, ttl: float) -> None:
        """Take and keep an answer lease (a background task, until close()). Returns once
        the first lease is held, or the first try failed (the task keeps trying)."""
        if self._lease_task is not None:
            raise RuntimeError("start_answer_lease was called already")
        self._lease_ttl = ttl
        self._acks = asyncio.Event()
        ready = asyncio.get_running_loop().create_future()
        self._lease_task = asyncio.create_task(self._keep_lease(ready), name="keystile-pg-lease")
        await asyncio.shield(ready)

    async def stop_answer_lease(self) -> None:
        """Give the lease up (the app's shutdown; close() does it too)."""
        task, self._lease_task = self._lease_task, None
        if task is None:
            return
        self._lease_until = 0.0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Leaving cleanly: writers need not wait for this lease to run out.
        with contextlib.suppress(StoreUnavailable, *_UNAVAILABLE):
            async with self._acquire() as conn:
                await conn.execute(
                    "DELETE FROM answer_leases WHERE instance_id = $1", self.instance_id
                )

    async def _keep_lease(self, ready: asyncio.Future[None]) -> None:
        schema = self.schema
        acks = self._acks
        assert acks is not None

        def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            if channel == ACK_CHANNEL:  # another process acknowledged a fence: no change
                # "schema:fence:instance"; this process's own acknowledgements never
                # complete its fences (they wait only for the others)
                head, _, instance = payload.rpartition(":")
                acked_schema, _, number = head.rpartition(":")
                if acked_schema == schema and instance != self.instance_id and number.isdigit():
                    self._wake_fences(int(number))
                return
            number = ""
            if channel == FENCE_CHANNEL:
                payload, _, number = payload.rpartition(":")
            if payload != schema:  # another deployment's schema in the same database
                return
            self._drop_answers()
            if number:
                self._fence_seen = max(self._fence_seen, int(number))
                acks.set()  # acknowledge now, not at the next renewal

        failing = False
        while True:
            conn: asyncpg.Connection | None = None
            lost = asyncio.Event()
            try:
                conn = await self._connect()
                conn.add_termination_listener(lambda _conn, ev=lost: ev.set())
                await conn.add_listener(ANSWERS_CHANNEL, on_notify)
                await conn.add_listener(FENCE_CHANNEL, on_notify)
                await conn.add_listener(ACK_CHANNEL, on_notify)
                self._hearing_acks = True
                # Whatever changed while this process was not listening is unknown.
                self._drop_answers()
                await conn.execute(
                    "DELETE FROM answer_leases"
                    " WHERE expires_at < clock_timestamp() - interval '1 hour'"
                )
                if failing:
                    log.info("answer lease restored")
                failing = False
                await self._renew(conn, ready)
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(acks.wait(), self._lease_ttl / _RENEWALS_PER_TTL)
                    await self._renew(conn, ready)
                log.warning("answer lease connection lost; reconnecting")
            except _UNAVAILABLE as exc:
                (log.debug if failing else log.warning)(
                    "cannot hold an answer lease; introspection reads the database meanwhile",
                    extra={"error": str(exc) or type(exc).__name__},
                )
                failing = True
                if not ready.done():
                    ready.set_result(None)
            finally:
                # Deaf now: answer from the database until a new lease is held (writers
                # still wait for the old one to run out, which is what keeps them right).
                self._lease_until = 0.0
                self._hearing_acks = False  # waiting writers fall back on polling
                self._wake_fences(None)
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(self.listen_retry)

    async def _renew(self, conn: asyncpg.Connection, ready: asyncio.Future[None]) -> None:
        """Renew the lease and acknowledge the highest fence heard (one statement, which
        also NOTIFYs ACK_CHANNEL when that fence is new)."""
        acks = self._acks
        assert acks is not None
        acks.clear()
        fence = self._fence_seen
        sent = time.monotonic()
        timeout = self._lease_ttl * _LOCAL_SHARE
        if fence > self._fence_acked:
            await conn.execute(
                _RENEW_ACK_SQL,
                self.instance_id,
                self._lease_ttl,
                fence,
                ACK_CHANNEL,
                self.schema,
                timeout=timeout,
            )
            self._fence_acked = fence
        else:
            await conn.execute(
                _RENEW_SQL, self.instance_id, self._lease_ttl, fence, timeout=timeout
            )
        if sent >= self._lease_until:
            # The lease had lapsed (or this is the first): notifications may have been
            # missed meanwhile, so nothing remembered before may be used again.
            self._drop_answers()
        self._lease_until = sent + self._lease_ttl * _LOCAL_SHARE
        if not ready.done():
            ready.set_result(None)

    async def close(self) -> None:
        await self.stop_answer_lease()
        await super().close()

    # -- the writing side ------------------------------------------------------------------

    def _ack_waiter(self, number: int) -> asyncio.Future[None] | None:
        """A future done when an acknowledgement of ``number`` or later is heard (or the
        lease connection is lost); None while this process hears no acknowledgements."""
        if not self._hearing_acks:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ack_waiters[waiter] = number
        return waiter

    def _wake_fences(self, acked: int | None) -> None:
        """Wake the fences an acknowledgement of ``acked`` may have completed (None: all)."""
        for waiter, number in list(self._ack_waiters.items()):
            if acked is None or number <= acked:
                del self._ack_waiters[waiter]
                if not waiter.done():
                    waiter.set_result(None)

    def _forget_waiter(self, waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None:
            waiter.cancel()
            self._ack_waiters.pop(waiter, None)

    async def _fence(self) -> None:
        """After a COMMIT that changed answers: return once every other process holding an
        answer lease has dropped what it remembered, or its lease ran out."""
        self._drop_answers()  # this process's own memory, at once
        schema = self.schema
        waiter: asyncio.Future[None] | None = None
        try:
            # Listen before the fence is sent, so no acknowledgement can come too soon; its
            # number is not known yet, so any acknowledgement wakes it meanwhile.
            waiter = self._ack_waiter(0)
            async with self._acquire() as conn:
                row = await conn.fetchrow(_FENCE_SQL, self.instance_id, FENCE_CHANNEL, schema)
            number, pending = int(row[0]), row[1]
            if not pending:
                return
            if waiter is not None and waiter in self._ack_waiters:
                self._ack_waiters[waiter] = number
            # Bounded: leases not acknowledged run out within their ttl (at most a lease ttl
            # as configured anywhere; the cap only guards against a misconfigured clock).
            deadline = time.monotonic() + 60.0
            delay, polls = 0.0005, 0
            while True:
                if waiter is not None:
                    # Woken by an acknowledgement (or after the fallback poll's interval);
                    # either way answer_leases decides, below.
                    await asyncio.wait((waiter,), timeout=_FALLBACK_POLL)
                else:
                    # No acknowledgements heard here: poll every 0.5 ms for the first
                    # 10 ms, then back off to 10 ms (a process away).
                    await asyncio.sleep(delay)
                    polls += 1
                    if polls >= 20:
                        delay = min(delay * 2, 0.01)
                # The next wake-up is registered before answer_leases is read, so an
                # acknowledgement committed after that read still wakes this fence.
                self._forget_waiter(waiter)
                waiter = self._ack_waiter(number)
                async with self._acquire() as conn:
                    pending = await conn.fetchval(_PENDING_SQL, number, self.instance_id)
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise StoreUnavailable("answer leases were neither acknowledged nor ran out")
        except _UNAVAILABLE as exc:
            raise _unavailable(exc) from exc
        finally:
            self._forget_waiter(waiter)
