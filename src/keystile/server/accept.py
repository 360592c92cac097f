"""Accept every waiting connection in one event-loop turn, not one per turn.

Measured (docs/benchmarks.md, "Overload"): uvloop's server accepts one connection per turn
of the event loop. When a busy process's turns last milliseconds (each answers every
connection that has a request), a burst of new connections, such as 128 clients connecting
at once or reconnecting after a restart, waits in the kernel's accept queue for up to
128 turns: hundreds of milliseconds for the last one, while every connection already
accepted is answered in a few. This listener drains the accept queue (up to ``BATCH`` per
turn) and hands each socket to the same protocol uvicorn would have used.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("keystile.server")

BATCH = 512  # connections accepted per loop turn, at most (others wait for the next turn)


class EagerAcceptor:
    """Reads ``sock``'s accept queue on the loop; every connection gets ``factory()``."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        self._sock = sock
        self._factory = factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[asyncio.Task[object]] = set()

    @classmethod
    def for_server(cls, server: Any, sock: socket.socket) -> EagerAcceptor:
        """Started, for a started ``uvicorn.Server`` that has no listener of its own (plain
        HTTP): the protocol of each connection is the one uvicorn would have made."""
        config, state = server.config, server.server_state

        def factory() -> asyncio.Protocol:
            protocol: asyncio.Protocol = config.http_protocol_class(
                config=config, server_state=state, app_state=server.lifespan.state
            )
            return protocol

        acceptor = cls(sock, factory)
        acceptor.start()
        return acceptor

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None

    def _accept(self) -> None:
        loop = self._loop
        if loop is None:
            return
        for _ in range(BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE, ENFILE, ...: the rest waits in the kernel
                log.warning("accept failed", extra={"error": str(exc)})
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(loop.connect_accepted_socket(self._factory, conn))
            self._pending.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[object]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("connection setup failed", extra={"error": str(task.exception())})
