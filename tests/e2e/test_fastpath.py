"""The introspection fast path (server/fastpath.py, OAuthEndpoints.introspect_now) on a real
`keystile serve`, over raw sockets: answers identical to the full ASGI path, HTTP/1.1
semantics kept (keep-alive, pipelining, HTTP/1.0, Connection: close, Expect: 100-continue,
chunked bodies, size limit), and remembered answers that never outlive a change: revocation
through the API or by another process, client changes, expiry.
"""

from __future__ import annotations

import base64
import socket
import time
from dataclasses import dataclass

import pytest

from tests.conftest import INTROSPECT, Creds
from tests.e2e.conftest import DemoServer, RunKeystile, Server, ServerStarter, parse_demo

pytestmark = pytest.mark.process


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def comparable(self) -> tuple[int, dict[str, str], bytes]:
        """Everything but what differs from one answer to the next."""
        headers = {k: v for k, v in self.headers.items() if k not in ("date", "x-request-id")}
        return self.status, headers, self.body


class Conn:
    """One raw HTTP/1.1 connection to the server."""

    def __init__(self, server: Server) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def read(self) -> Reply:
        while b"\r\n\r\n" not in self.buf:
            assert self._fill(), "connection closed before a response"
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            assert self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return Reply(status, headers, body)

    def closed(self) -> bool:
        """True if the server closed the connection (after everything was read)."""
        self.sock.settimeout(2)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.sock.close()


def basic(creds: Creds) -> str:
    return "Basic " + base64.b64encode(f"{creds.client_id}:{creds.secret}".encode()).decode()


def request(
    creds: Creds,
    token: str,
    *,
    version: str = "1.1",
    extra: str = "",
    body: bytes | None = None,
    chunked: bool = False,
) -> bytes:
    form = body if body is not None else f"token={token}&token_type_hint=access_token".encode()
    head = (
        f"POST {INTROSPECT} HTTP/{version}\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nAuthorization: {basic(creds)}\r\n"
        + extra
    )
    if chunked:
        half = len(form) // 2
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (form[:half], form[half:]))
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunks + b"0\r\n\r\n"
    return (head + f"Content-Length: {len(form)}\r\n\r\n").encode() + form


@pytest.fixture
def demo(demo_server: DemoServer) -> DemoServer:
    return demo_server


def ask(server: Server, data: bytes) -> Reply:
    conn = Conn(server)
    try:
        conn.send(data)
        return conn.read()
    finally:
        conn.close()


def fast_answers(server: Server) -> float:
    """keystile_introspection_fast_answers_total from the server's /metrics."""
    for line in server.http.get("/metrics").text.splitlines():
        if line.startswith("keystile_introspection_fast_answers_total "):
            return float(line.split()[1])
    raise AssertionError("no fast-answer metric")


class TestSameAnswers:
    def test_fast_answers_equal_full_answers(self, demo: DemoServer, start_server: ServerStarter):
        """The first request of a caller takes the full path (its credentials are checked);
        later ones may be answered without ASGI. A server with the fast path off answers
        every one on the full path. All of them agree, headers and body (RFC 7662 §2.2)."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app, scope="read")
        cases = [token, "ks_at_unknown-or-garbage", token + "x"]
        fast = [ask(server, request(creds.rs, t)) for t in cases for _ in range(3)]
        off = start_server(
            "--no-demo",
            "--issuer",
            server.url,  # the same iss in both servers' answers
            env={"KEYSTILE_FAST_PATH": "false"},
            db=server.db,
        )
        full = [ask(off, request(creds.rs, t)) for t in cases for _ in range(3)]

        assert [r.comparable for r in fast] == [r.comparable for r in full]
        # Positive control: the first server did answer most of them on the fast path.
        assert fast_answers(server) >= 6
        assert fast_answers(off) == 0
        assert fast[0].status == 200
        assert b'"active":true' in fast[0].body
        assert fast[3].body == b'{"active":false}'
        for reply in fast:
            assert reply.headers["cache-control"] == "no-store"
            assert reply.headers["x-request-id"]

    def test_request_id_is_echoed(self, demo: DemoServer):
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        for _ in range(2):  # the full path, then the fast one
            reply = ask(server, request(creds.rs, token, extra="X-Request-Id: trace-42\r\n"))
            assert reply.headers["x-request-id"] == "trace-42"

    def test_wrong_secret_after_right_one(self, demo: DemoServer):
        """Credentials are part of what an answer is remembered by: a wrong secret is
        refused (401, RFC 6749 §5.2) even right after the right one was answered."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        assert ask(server, request(creds.rs, token)).status == 200
        assert ask(server, request(creds.rs, token)).status == 200
        wrong = Creds(creds.rs.client_id, creds.rs.secret[:-1] + "x")
        assert ask(server, request(wrong, token)).status == 401
        assert ask(server, request(creds.app, token)).status == 403  # not an introspector


class TestHttp:
    def test_keep_alive_and_pipelining(self, demo: DemoServer):
        """Many requests on one connection, and three sent in one write are answered in
        order (RFC 9112 §9.3.2)."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        conn = Conn(server)
        for _ in range(5):
            conn.send(request(creds.rs, token))
            assert conn.read().status == 200
        conn.send(
            request(creds.rs, token)
            + request(creds.rs, "ks_at_nothing")
            + request(creds.rs, token, extra="X-Request-Id: third\r\n")
        )
        replies = [conn.read() for _ in range(3)]
        assert [b'"active":true' in r.body for r in replies] == [True, False, True]
        assert replies[2].headers["x-request-id"] == "third"
        conn.close()
        assert fast_answers(server) >= 6

    @pytest.mark.parametrize(("version", "extra"), [("1.0", ""), ("1.1", "Connection: close\r\n")])
    def test_connection_closes_when_asked(self, demo: DemoServer, version: str, extra: str):
        """HTTP/1.0 without keep-alive, or Connection: close: answer, then close."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        ask(server, request(creds.rs, token))  # the caller is known: the fast path answers
        before = fast_answers(server)
        conn = Conn(server)
        conn.send(request(creds.rs, token, version=version, extra=extra))
        reply = conn.read()
        assert reply.status == 200
        assert b'"active":true' in reply.body
        assert conn.closed()
        conn.close()
        assert fast_answers(server) == before + 1

    def test_expect_100_continue(self, demo: DemoServer):
        """The client waits for 100 Continue before sending the body (RFC 9110 §10.1.1)."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        ask(server, request(creds.rs, token))
        data = request(creds.rs, token, extra="Expect: 100-continue\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        conn = Conn(server)
        conn.send(head + b"\r\n\r\n")
        assert conn.read().status == 100
        conn.send(body)
        reply = conn.read()
        assert reply.status == 200
        assert b'"active":true' in reply.body
        conn.close()

    def test_chunked_body(self, demo: DemoServer):
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        for _ in range(2):
            reply = ask(server, request(creds.rs, token, chunked=True))
            assert b'"active":true' in reply.body
        assert fast_answers(server) == 1

    def test_oversized_body_is_413(self, demo: DemoServer):
        """Larger than max_body_bytes: 413 from the full path, never a partial read."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        ask(server, request(creds.rs, token))
        big = f"token={token}&pad=".encode() + b"x" * 40_000
        reply = ask(server, request(creds.rs, token, body=big))
        assert reply.status == 413

    def test_bad_form_gets_the_full_paths_error(self, demo: DemoServer):
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        ask(server, request(creds.rs, token))
        reply = ask(server, request(creds.rs, token, body=f"token={token}&token=x".encode()))
        assert reply.status == 400
        assert b"invalid_request" in reply.body


class TestNeverStale:
    def test_revocation_is_seen_by_the_next_request(self, demo: DemoServer):
        """RFC 7009 §2.2: once revocation answered 200, introspection says inactive, even
        though the active answer was being remembered."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        for _ in range(3):
            assert b'"active":true' in ask(server, request(creds.rs, token)).body
        assert fast_answers(server) == 2  # remembered, and answered without ASGI
        assert server.revoke(creds.app, token).status_code == 200
        assert ask(server, request(creds.rs, token)).body == b'{"active":false}'

    def test_changes_by_another_process_are_seen_at_once(
        self, demo: DemoServer, run_keystile: RunKeystile
    ):
        """A client disabled with the CLI (another process) makes the very next answer
        inactive: any commit to the database empties what the fast path remembers."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        for _ in range(3):
            assert b'"active":true' in ask(server, request(creds.rs, token)).body
        done = run_keystile("client", "disable", "demo-app", "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        assert ask(server, request(creds.rs, token)).body == b'{"active":false}'

    def test_secret_rotation_by_another_process(self, demo: DemoServer, run_keystile: RunKeystile):
        """The introspecting client's old secret stops working on the next request."""
        server, creds = demo.server, demo.demo
        token = server.issue(creds.app)
        for _ in range(2):
            assert ask(server, request(creds.rs, token)).status == 200
        done = run_keystile("client", "rotate-secret", "demo-rs", "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        assert ask(server, request(creds.rs, token)).status == 401

    def test_expiry(self, start_server: ServerStarter, run_keystile: RunKeystile):
        """An active answer is remembered only until the token's exp (RFC 7662 §2.2)."""
        server = start_server()
        demo = parse_demo(server.stdout)
        done = run_keystile("client", "update", "demo-app", "--ttl", "2", "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        token = server.issue(demo.app)
        issued = time.time()
        for _ in range(3):
            assert b'"active":true' in ask(server, request(demo.rs, token)).body
        time.sleep(max(0.0, issued + 3.1 - time.time()))
        assert ask(server, request(demo.rs, token)).body == b'{"active":false}'
