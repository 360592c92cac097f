"""The gateway's fast path (decision 0009), driven through real processes on raw sockets.

Two gateways in front of one AS and one echoing upstream: one with the fast path (the
default) and one with ``fast_path = false`` (everything through ASGI). Each case sends the
same bytes to both and compares the answers byte for byte (the upstream's ``date`` aside),
and checks from ``keystile_gateway_fast_answers_total`` which path answered. The fast path
leans on uvicorn's httptools protocol internals (pyproject.toml caps uvicorn): a uvicorn that
changes them fails here.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import LOOPBACK, Demo, Server, ServerStarter, parse_demo
from tests.e2e.gateway_procs import Gateway, Upstream, start_gateway, start_upstream, wait_until

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}
realm = "fast-test"
FAST

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret_file = "rs.secret"

[cache]
max_ttl = 3600

[upstream]
keepalive_expiry = 60

[[routes]]
path = "/public"
upstream = "UPSTREAM"
public = true

[[routes]]
path = "/api"
upstream = "UPSTREAM"
scopes = ["read"]

[[routes]]
path = "/quick"
upstream = "UPSTREAM"
scopes = ["read"]
timeout = 0.5

[[routes]]
path = "/admin"
upstream = "UPSTREAM"
scopes = ["admin"]
"""

_DATE = re.compile(rb"^date: [^\r\n]*\r\n", re.MULTILINE | re.IGNORECASE)


@dataclass
class Stack:
    server: Server
    demo: Demo
    upstream: Upstream
    fast: Gateway
    slow: Gateway  # fast_path = false
    token: str

    def both(self) -> tuple[Gateway, Gateway]:
        return self.fast, self.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("gateway-fastpath")
    starter = ServerStarter(folder)
    server = starter("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(folder)
    (folder / "rs.secret").write_text(demo.rs.secret + "\n")
    config = CONFIG.replace("AS_URL", server.url).replace("UPSTREAM", upstream.url)
    fast = start_gateway(folder, config.replace("FAST", ""), name="fast")
    slow = start_gateway(folder, config.replace("FAST", "fast_path = false"), name="slow")
    token = server.issue(demo.app, scope="read")
    try:
        fast.wait_events()
        slow.wait_events()
        yield Stack(server, demo, upstream, fast, slow, token)
    finally:
        slow.stop()
        fast.stop()
        upstream.stop()
        starter.stop_all()


def exchange(gateway: Gateway, data: bytes, *, answers: int = 1, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a new connection; everything read until ``answers`` responses
    arrived (counted by status lines) and a short quiet, or the connection closed."""
    with socket.create_connection((LOOPBACK, gateway.port), timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(0.3 if got.count(b"HTTP/1.1 ") >= answers else timeout)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
        return got


def closed_after(gateway: Gateway, data: bytes) -> tuple[bytes, bool]:
    """The answer to ``data`` and whether the gateway then closed the connection."""
    with socket.create_connection((LOOPBACK, gateway.port), timeout=5) as sock:
        sock.sendall(data)
        got = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got, True
            got += chunk
            if b"\r\n\r\n" in got:
                head, _, body = got.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
                if length and len(body) >= int(length.group(1)):
                    sock.settimeout(1.0)
                    try:
                        return got, sock.recv(1) == b""
                    except TimeoutError:
                        return got, False


def same(answer: bytes) -> bytes:
    return _DATE.sub(b"", answer)


def fast_answers(gateway: Gateway, mode: str) -> float:
    return gateway.metric("keystile_gateway_fast_answers_total", mode=mode)


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: api.test", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def warm(stack: Stack, path: str = "/api/warm") -> None:
    """Cache the token and leave an idle upstream connection in both gateways."""
    for gateway in stack.both():
        r = gateway.http.get(path, headers={"Authorization": f"Bearer {stack.token}"})
        assert r.status_code == 200, r.text


class TestProxy:
    def test_cache_hit_answered_fast_byte_for_byte(self, stack: Stack):
        """A bodiless request with a cached token is relayed by the fast path, and the caller
        gets exactly what the ASGI path gives (head and body)."""
        warm(stack)
        before = fast_answers(stack.fast, "proxy"), fast_answers(stack.slow, "proxy")
        hits = [
            g.metric("keystile_gateway_cache_lookups_total", result="hit") for g in stack.both()
        ]
        request = get("/api/items?x=1", f"Authorization: Bearer {stack.token}", "Accept: */*")
        fast, slow = (exchange(g, request) for g in stack.both())
        assert fast.startswith(b"HTTP/1.1 200 OK\r\n")
        assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "proxy") == before[0] + 1
        assert fast_answers(stack.slow, "proxy") == before[1] == 0
        # One lookup counted per request on either path.
        after = [
            g.metric("keystile_gateway_cache_lookups_total", result="hit") for g in stack.both()
        ]
        assert after == [hits[0] + 1, hits[1] + 1]

    def test_identity_and_forwarding_spellings_stripped_on_the_fast_path(self, stack: Stack):
        """Every spelling of identity and forwarding headers is dropped on the fast path too;
        the upstream gets the gateway's own."""
        warm(stack)
        before = fast_answers(stack.fast, "proxy")
        spoofed = [
            "X-Auth-Subject: caller1",
            "x_auth_subject: caller2",
            "X_AUTH-SCOPE: caller3",
            "X-Forwarded-For: 10.9.9.9",
            "x_forwarded_host: caller4",
            "X-Real-IP: 10.8.8.8",
            "Connection: keep-alive, X-Custom",
            "X-Custom: dropped",
        ]
        answer = exchange(
            stack.fast, get("/api/h", f"Authorization: Bearer {stack.token}", *spoofed)
        )
        assert fast_answers(stack.fast, "proxy") == before + 1
        body = answer.partition(b"\r\n\r\n")[2]
        headers = [tuple(h) for h in httpx.Response(200, content=body).json()["headers"]]
        for value in (b"caller", b"10.9.9.9", b"10.8.8.8", b"dropped"):
            assert value not in body
        assert ("x-auth-subject", "demo-app") in headers
        assert ("x-auth-scope", "read") in headers
        assert ("x-forwarded-for", "127.0.0.1") in headers
        assert ("x-forwarded-host", "api.test") in headers
        assert ("authorization", f"Bearer {stack.token}") in headers

    def test_public_route_fast(self, stack: Stack):
        """A public route is relayed fast, counted as public, identical to the ASGI path."""
        warm(stack, "/public/warm")
        before = fast_answers(stack.fast, "proxy")
        request = get("/public/p", "X-Auth-Subject: caller-zz9")
        fast, slow = (exchange(g, request) for g in stack.both())
        assert same(fast) == same(slow)
        assert b"caller-zz9" not in fast
        assert fast_answers(stack.fast, "proxy") == before + 1

    def test_pipelined_requests_answered_in_order(self, stack: Stack):
        """Three pipelined requests on one connection get their answers in order."""
        warm(stack)
        auth = f"Authorization: Bearer {stack.token}"
        request = get("/api/one", auth) + get("/api/two", auth) + get("/api/three", auth)
        fast, slow = (exchange(g, request, answers=3) for g in stack.both())
        assert fast.count(b"HTTP/1.1 200 OK") == 3
        assert [m.group(1) for m in re.finditer(rb'"path":"(/api/\w+)"', fast)] == [
            b"/api/one",
            b"/api/two",
            b"/api/three",
        ]
        assert same(fast) == same(slow)

    @pytest.mark.parametrize(
        ("version", "extra"),
        [("1.0", ()), ("1.1", ("Connection: close",))],
        ids=["http10", "close"],
    )
    def test_connection_close(self, stack: Stack, version: str, extra: tuple[str, ...]):
        """HTTP/1.0 and Connection: close get connection: close and the connection ends,
        as uvicorn does."""
        warm(stack)
        request = get("/api/c", f"Authorization: Bearer {stack.token}", *extra, version=version)
        before = fast_answers(stack.fast, "proxy")
        (fast, fast_closed), (slow, slow_closed) = (closed_after(g, request) for g in stack.both())
        assert b"\r\nconnection: close\r\n" in fast
        assert fast_closed
        assert slow_closed
        assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "proxy") == before + 1

    def test_refusals_take_the_full_path(self, stack: Stack):
        """No token, another scheme, an unknown token, a missing scope, two Authorization
        headers and a dot segment are answered by the ASGI path (with their challenges), as
        is any request with a DPoP header; never by the fast path."""
        warm(stack)
        before = fast_answers(stack.fast, "proxy")
        for request in (
            get("/api/x"),
            get("/api/x", "Authorization: Basic dXNlcjpwYXNz"),
            get("/api/x", "Authorization: Bearer ks_at_unknown"),
            get("/admin/x", f"Authorization: Bearer {stack.token}"),
            get(
                "/api/x",
                f"Authorization: Bearer {stack.token}",
                f"Authorization: Bearer {stack.token}",
            ),
            get("/api/../admin", f"Authorization: Bearer {stack.token}"),
        ):
            fast, slow = (exchange(g, request) for g in stack.both())
            assert not fast.startswith(b"HTTP/1.1 200"), fast
            assert same(fast) == same(slow)
        # A DPoP header with an unbound bearer token: the full path's sender check decides.
        request = get("/api/x", f"Authorization: Bearer {stack.token}", "DPoP: e30.e30.sig")
        fast, slow = (exchange(g, request) for g in stack.both())
        assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "proxy") == before

    def test_head_and_bodies_take_the_full_path(self, stack: Stack):
        """HEAD and requests with a body are relayed by the ASGI path (same answers)."""
        warm(stack)
        before = fast_answers(stack.fast, "proxy")
        auth = f"Authorization: Bearer {stack.token}"
        head = b"HEAD /api/h HTTP/1.1\r\nHost: api.test\r\n" + auth.encode() + b"\r\n\r\n"
        post = (
            b"POST /api/upload HTTP/1.1\r\nHost: api.test\r\n"
            + auth.encode()
            + b"\r\nContent-Length: 5\r\n\r\nhello"
        )
        for request in (head, post):
            fast, slow = (exchange(g, request) for g in stack.both())
            assert fast.startswith(b"HTTP/1.1 200 OK"), fast
            assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "proxy") == before

    def test_large_response_streams(self, stack: Stack):
        """A response over the fast path's whole-body limit is streamed: its first half
        reaches the caller before the upstream sends the second."""
        warm(stack)
        size = 512 * 1024
        with httpx.Client(base_url=stack.fast.url, trust_env=False, timeout=10) as client:
            headers = {"Authorization": f"Bearer {stack.token}"}
            with client.stream("GET", f"/api/download?size={size}", headers=headers) as r:
                assert r.status_code == 200
                got = 0
                released = False
                for chunk in r.iter_raw():
                    got += len(chunk)
                    if got >= size // 2 and not released:
                        httpx.get(f"{stack.upstream.url}/_release", trust_env=False)
                        released = True
                assert got == size

    def test_upstream_timeout_answers_504(self, stack: Stack):
        """An upstream slower than the route's timeout gets 504 on the fast path, as on
        the ASGI path."""
        warm(stack, "/quick/warm")
        before = fast_answers(stack.fast, "proxy")
        timeouts = stack.fast.metric(
            "keystile_gateway_requests_total",
            route="*/quick",
            mode="proxy",
            outcome="gateway_timeout",
        )
        started = time.monotonic()
        request = get("/quick/slow?seconds=2", f"Authorization: Bearer {stack.token}")
        fast = exchange(stack.fast, request)
        assert time.monotonic() - started < 1.5
        slow = exchange(stack.slow, request)
        assert fast.startswith(b"HTTP/1.1 504 ")
        assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "proxy") == before
        after = stack.fast.metric(
            "keystile_gateway_requests_total",
            route="*/quick",
            mode="proxy",
            outcome="gateway_timeout",
        )
        assert after == timeouts + 1

    def test_revoked_token_refused_at_once(self, stack: Stack):
        """A token answered by the fast path is refused as soon as its revocation event
        arrives (max_ttl is an hour: only the event can evict it)."""
        token = stack.server.issue(stack.demo.app, scope="read")
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(3):
            assert stack.fast.http.get("/api/r", headers=headers).status_code == 200
        before = fast_answers(stack.fast, "proxy")
        assert stack.fast.http.get("/api/r", headers=headers).status_code == 200
        assert fast_answers(stack.fast, "proxy") == before + 1
        assert stack.server.revoke(stack.demo.app, token).status_code == 200
        wait_until(lambda: stack.fast.http.get("/api/r", headers=headers).status_code == 401, 2.0)

    def test_client_gone_while_upstream_works(self, stack: Stack):
        """A caller hanging up during a fast exchange costs the gateway nothing lasting:
        the upstream connection is dropped and the next requests pass."""
        warm(stack)
        with socket.create_connection((LOOPBACK, stack.fast.port)) as sock:
            sock.sendall(get("/api/slow?seconds=0.5", f"Authorization: Bearer {stack.token}"))
            time.sleep(0.1)
        wait_until(
            lambda: (
                stack.fast.metric(
                    "keystile_gateway_requests_total",
                    route="*/api",
                    mode="proxy",
                    outcome="client_gone",
                )
                >= 1
            )
        )
        threads = [threading.Thread(target=warm, args=(stack,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert exchange(
            stack.fast, get("/api/x", f"Authorization: Bearer {stack.token}")
        ).startswith(b"HTTP/1.1 200 OK")


class TestForwardAuth:
    def test_allowed_answered_fast_byte_for_byte(self, stack: Stack):
        """An allowed forward-auth check is answered by the fast path, identical to ASGI's."""
        warm(stack)
        before = fast_answers(stack.fast, "forward_auth")
        request = get(
            "/_keystile/auth", f"Authorization: Bearer {stack.token}", "X-Original-URI: /api/x"
        )
        fast, slow = (exchange(g, request) for g in stack.both())
        assert fast.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nx-auth-subject: demo-app\r\n" in fast
        assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "forward_auth") == before + 1

    def test_refusals(self, stack: Stack):
        """A spoofed header spelling and an unrouted request are refused by the fast path
        with the ASGI path's answers; token refusals go to the full path."""
        warm(stack)
        auth = f"Authorization: Bearer {stack.token}"
        before = fast_answers(stack.fast, "forward_auth")
        for request in (
            get("/_keystile/auth", auth, "X-Original-URI: /api/x", "X_Auth_Subject: me"),
            get("/_keystile/auth", auth, "X-Original-URI: /nowhere"),
        ):
            fast, slow = (exchange(g, request) for g in stack.both())
            assert fast.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 403 ")), fast
            assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "forward_auth") == before + 2
        for request in (
            get("/_keystile/auth", "X-Original-URI: /api/x"),
            get("/_keystile/auth", auth, "X-Original-URI: /admin/x"),
            get("/_keystile/auth", auth, "X-Original-URI: /api/x", "X-Original-Method: HEAD"),
        ):
            fast, slow = (exchange(g, request) for g in stack.both())
            assert same(fast) == same(slow)
        assert fast_answers(stack.fast, "forward_auth") == before + 3  # HEAD is allowed
