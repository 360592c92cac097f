"""Load shedding (server/shedding.py) on a real `keystile serve`: past --max-in-flight
requests in progress, 503 + Retry-After: 1 with an RFC 6749 error body; probes, metrics and
what is already in progress are not affected; the limit's settings fail clearly.

No timing: a request whose body has not all arrived stays in progress for as long as the
test wants, and keystile_requests_in_flight says when the server has started on it; that
fills the only slot deterministically.
"""

from __future__ import annotations

import base64
import socket
import time

import httpx
import pytest

from tests.conftest import TOKEN, Creds
from tests.e2e.conftest import Cli, RunKeystile, ServerStarter, clean_env, free_port, parse_demo

pytestmark = pytest.mark.process


def _basic(creds: Creds) -> str:
    raw = f"{creds.client_id}:{creds.secret}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _metric(http: httpx.Client, name: str) -> float:
    r = http.get("/metrics")  # never shed
    assert r.status_code == 200
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} missing from /metrics")


def _shed_count(http: httpx.Client) -> float:
    return _metric(http, "keystile_requests_shed_total")


def _wait_in_flight(http: httpx.Client, n: int) -> None:
    """Until the server works on ``n`` requests (the slow one has been read, not only sent)."""
    for _ in range(500):
        if _metric(http, "keystile_requests_in_flight") == n:
            return
        time.sleep(0.01)
    raise AssertionError(f"never {n} requests in flight")


def test_sheds_past_the_limit_and_keeps_probes(start_server: ServerStarter) -> None:
    server = start_server("--max-in-flight", "1", "--log-level", "warning")
    demo = parse_demo(server.stdout)
    http = server.http
    assert _shed_count(http) == 0

    # One token request whose body is still on its way: it holds the only slot.
    body = b"grant_type=client_credentials"
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        slow.sendall(
            b"POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: %s\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
            % (TOKEN.encode(), _basic(demo.app).encode(), len(body))
            + body[:5]
        )
        _wait_in_flight(http, 1)
        shed = server.token(demo.app)
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.headers["cache-control"] == "no-store"
        assert shed.headers["content-type"] == "application/json"
        assert shed.json()["error"] == "temporarily_unavailable"  # RFC 6749 §4.1.2.1

        # Probes and metrics still answer, and the refusal was counted.
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 200
        assert _shed_count(http) >= 1
        assert server.token(demo.app).status_code == 503  # still full
        assert _metric(http, "keystile_requests_in_flight") == 1

        # The request in progress is answered normally, and frees its slot.
        slow.sendall(body[5:])
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = slow.recv(65536)
            assert chunk, "connection closed before the answer"
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
    finally:
        slow.close()
    _wait_in_flight(http, 0)
    assert server.token(demo.app).status_code == 200


def test_no_limit_with_zero(start_server: ServerStarter) -> None:
    """--max-in-flight 0 turns shedding off: a request in progress does not refuse others."""
    server = start_server("--max-in-flight", "0", "--log-level", "warning")
    demo = parse_demo(server.stdout)
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        slow.sendall(
            b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\ngrant" % TOKEN.encode()
        )
        _wait_in_flight(server.http, 1)
        for _ in range(5):
            assert server.token(demo.app).status_code == 200
    finally:
        slow.close()
    assert _shed_count(server.http) == 0


class TestSettings:
    def test_negative_flag_exits_2(self, cli: Cli) -> None:
        result = cli("serve", "--max-in-flight", "-1")
        assert result.exit_code == 2
        assert result.stderr == (
            "keystile: invalid settings: --max-in-flight -1: max_in_flight must be at least 0\n"
        )

    def test_bad_env_exits_2(self, run_keystile: RunKeystile, tmp_path: object) -> None:
        done = run_keystile(
            "serve", "--port", str(free_port()), env=clean_env(KEYSTILE_MAX_IN_FLIGHT="many")
        )
        assert done.returncode == 2
        assert done.stderr.startswith(
            "keystile: invalid settings: KEYSTILE_MAX_IN_FLIGHT=many: max_in_flight "
        )
        assert "Traceback" not in done.stderr

    def test_env_sets_limit(self, start_server: ServerStarter) -> None:
        server = start_server("--log-level", "warning", env=clean_env(KEYSTILE_MAX_IN_FLIGHT="1"))
        demo = parse_demo(server.stdout)
        slow = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            slow.sendall(
                b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\ngrant" % TOKEN.encode()
            )
            _wait_in_flight(server.http, 1)
            assert server.token(demo.app).status_code == 503
        finally:
            slow.close()


def test_a_burst_of_connections_is_served(start_server: ServerStarter) -> None:
    """server/accept.py drains the accept queue in batches: a burst of more connections than
    one batch (all opened before any is read) is accepted, and each gets its answer."""
    from keystile.server.accept import BATCH

    server = start_server("--no-demo", "--log-level", "warning")
    conns = [
        socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(BATCH + 88)
    ]
    try:
        for c in conns:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        for c in conns:
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = c.recv(4096)
                assert chunk, "connection closed before the answer"
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200 "), reply[:100]
    finally:
        for c in conns:
            c.close()
