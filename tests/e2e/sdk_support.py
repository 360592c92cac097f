"""Shared pieces of the SDK integration tests: counting AS calls, serving an app on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn

from tests.e2e.conftest import LOOPBACK, Server, free_port


def introspections_on_as(server: Server) -> float:
    """How many introspections the AS answered (its own /metrics, not the SDK's count)."""
    text = server.http.get("/metrics").text
    for line in text.splitlines():
        if line.startswith('keystile_requests_total{endpoint="introspect",outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> float:
    """Poll ``predicate`` until it holds; the seconds it took (fails after ``limit``)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < limit, "condition not met in time"
        time.sleep(0.002)
    return time.monotonic() - start


class ServedApp:
    """An ASGI app served by a real uvicorn on a free loopback port, in a background thread,
    with its lifespan run as in production."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        config = uvicorn.Config(
            app,
            host=LOOPBACK,
            port=self.port,
            lifespan="on",
            log_level="warning",
            ws="none",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> ServedApp:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn stopped during startup"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.005)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self.thread.join(10)
