"""The gateway as real processes: `keystile serve` + `keystile gateway --config` + a toy upstream.

The upstream echoes what it received, so each test can see exactly what the gateway forwarded.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import LOOPBACK, Demo, Server, ServerStarter, free_port, parse_demo
from tests.e2e.gateway_procs import (
    Gateway,
    Upstream,
    start_gateway,
    start_upstream,
    wait_until,
)

pytestmark = pytest.mark.process

MB = 1024 * 1024

CONFIG = """
[gateway]
port = {port}
realm = "gateway-test"

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret_file = "rs.secret"

[cache]
max_ttl = 60

[upstream]
timeout = 10

[[routes]]
path = "/public"
upstream = "UPSTREAM"
public = true

[[routes]]
path = "/api"
upstream = "UPSTREAM"
scopes = ["read"]
methods = ["GET", "POST", "PUT"]

[[routes]]
path = "/api/admin"
upstream = "UPSTREAM"
scopes = "admin"

[[routes]]
path = "/either"
upstream = "UPSTREAM"
scopes = ["admin", "read"]
scope_match = "any"

[[routes]]
path = "/elsewhere"
upstream = "UPSTREAM"
audience = "https://other.example.test"

[[routes]]
path = "/realtime"
upstream = "UPSTREAM"
realtime = true

[[routes]]
path = "/strip"
upstream = "UPSTREAM/base"
strip_prefix = true
public = true

[[routes]]
path = "/slow"
upstream = "UPSTREAM"
public = true
timeout = 0.5

[[routes]]
path = "/down"
upstream = "http://127.0.0.1:DEAD_PORT"
public = true

[[routes]]
name = "check-only"
path = "/check"
scopes = ["read"]

[[routes]]
host = "www.example.test"
path = "/"
upstream = "UPSTREAM"
public = true
"""


@dataclass
class Stack:
    server: Server
    demo: Demo
    upstream: Upstream
    gateway: Gateway

    def token(self, scope: str = "read") -> str:
        return self.server.issue(self.demo.app, scope=scope)

    def get(self, path: str, token: str | None = None, **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})  # type: ignore[call-overload]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.gateway.http.get(path, headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One AS, one upstream and one gateway for the whole module."""
    folder = tmp_path_factory.mktemp("gateway")
    starter = ServerStarter(folder)
    server = starter("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(folder)
    (folder / "rs.secret").write_text(demo.rs.secret + "\n")
    config = (
        CONFIG.replace("AS_URL", server.url)
        .replace("UPSTREAM", upstream.url)
        .replace("DEAD_PORT", str(free_port()))
    )
    gateway = start_gateway(folder, config)
    try:
        gateway.wait_events()
        yield Stack(server, demo, upstream, gateway)
    finally:
        gateway.stop()
        upstream.stop()
        starter.stop_all()


def echoed(r: httpx.Response) -> dict[str, str]:
    """The headers the upstream received (lower-case names; last value wins)."""
    assert r.status_code == 200, r.text
    return dict(r.json()["headers"])


class TestPolicies:
    def test_public_route_needs_no_token(self, stack: Stack):
        """A public route is forwarded without any token, and upstream gets no identity."""
        r = stack.get("/public/hello")
        seen = echoed(r)
        assert r.json()["path"] == "/public/hello"
        assert "x-auth-subject" not in seen

    def test_protected_route_without_token_gets_bare_challenge(self, stack: Stack):
        """No credentials: 401 with a Bearer challenge carrying no error code, and a body with
        no error information (RFC 6750 §3.1)."""
        r = stack.get("/api/orders")
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="gateway-test"'
        assert r.headers["cache-control"] == "no-store"
        assert r.content == b""
        assert "content-type" not in r.headers

    @pytest.mark.parametrize("value", ["Basic Zm9vOmJhcg==", "Digest x=1", "", "Bearer", "bearer"])
    def test_other_scheme_or_empty_is_no_credentials(self, stack: Stack, value: str):
        """An Authorization header with another scheme, or none at all in it, lacks any
        authentication information: the same bare challenge and empty body (RFC 6750 §3.1)."""
        r = stack.gateway.http.get("/api/orders", headers={"Authorization": value})
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Bearer realm="gateway-test"'
        assert r.content == b""

    def test_unknown_token_is_invalid_token(self, stack: Stack):
        """A token the AS calls inactive: 401 with error="invalid_token" (RFC 6750 §3.1)."""
        r = stack.get("/api/orders", token="ks_at_notarealtokenatall")
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]

    def test_malformed_authorization_is_invalid_request(self, stack: Stack):
        """A malformed bearer credential: 400 invalid_request (RFC 6750 §3.1)."""
        r = stack.gateway.http.get("/api/orders", headers={"Authorization": "Bearer a b"})
        assert r.status_code == 400
        assert 'error="invalid_request"' in r.headers["www-authenticate"]
        assert r.json()["error"] == "invalid_request"

    def test_valid_token_passes_with_identity(self, stack: Stack):
        """A token with the route's scope is forwarded, with identity headers from the AS."""
        r = stack.get("/api/orders?page=2", token=stack.token("read"))
        seen = echoed(r)
        assert r.json()["query"] == "page=2"
        assert seen["x-auth-subject"] == "demo-app"
        assert seen["x-auth-client-id"] == "demo-app"
        assert seen["x-auth-scope"] == "read"
        assert seen["authorization"].startswith("Bearer ks_at_")

    def test_wrong_scope_is_403(self, stack: Stack):
        """Longest prefix wins: /api/admin needs scope admin; a read token gets 403 with the
        needed scope in the challenge (RFC 6750 §3.1)."""
        r = stack.get("/api/admin/users", token=stack.token("read"))
        assert r.status_code == 403
        challenge = r.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert 'scope="admin"' in challenge

    def test_prefix_matches_on_segment_boundaries(self, stack: Stack):
        """/api/administrator is under /api, not /api/admin: a read token passes."""
        r = stack.get("/api/administrator", token=stack.token("read"))
        assert r.status_code == 200

    def test_any_scope_match(self, stack: Stack):
        """scope_match = "any": one of the listed scopes is enough."""
        assert stack.get("/either", token=stack.token("read")).status_code == 200
        assert stack.get("/either", token=stack.token("write")).status_code == 403

    def test_audience_mismatch_is_invalid_token(self, stack: Stack):
        """A token whose aud does not name the route's audience is refused with 401."""
        r = stack.get("/elsewhere", token=stack.token("read"))
        assert r.status_code == 401
        assert "not meant for this resource" in r.headers["www-authenticate"]

    def test_method_not_allowed(self, stack: Stack):
        """A method the route does not list: 405 with Allow (HEAD comes with GET)."""
        r = stack.gateway.http.delete(
            "/api/orders", headers={"Authorization": f"Bearer {stack.token()}"}
        )
        assert r.status_code == 405
        assert r.headers["allow"] == "GET, HEAD, POST, PUT"

    def test_no_route_is_404(self, stack: Stack):
        """A path no route covers is answered 404 by the gateway itself."""
        assert stack.get("/nothing-here").status_code == 404

    def test_host_route_wins_for_its_host(self, stack: Stack):
        """A route naming the request's host is chosen over host-less routes."""
        r = stack.get("/api/admin", headers={"Host": "WWW.example.test:8080"})
        assert r.status_code == 200
        assert r.json()["path"] == "/api/admin"

    def test_dot_segments_are_refused(self, stack: Stack):
        """/public/../api/admin is refused (400), never judged as /public and sent on."""
        with socket.create_connection((LOOPBACK, stack.gateway.port), timeout=5) as s:
            s.sendall(b"GET /public/../api/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]

    def test_strip_prefix_and_upstream_base_path(self, stack: Stack):
        """strip_prefix: /strip/a/b?x=1 reaches the upstream as /base/a/b?x=1."""
        r = stack.get("/strip/a/b?x=1")
        assert r.json()["path"] == "/base/a/b"
        assert r.json()["query"] == "x=1"

    def test_realtime_route_always_introspects(self, stack: Stack):
        """realtime = true: every request asks the AS, even with the token cached."""
        token = stack.token("read")
        assert stack.get("/api/x", token=token).status_code == 200  # now cached
        before = stack.gateway.metric(
            "keystile_gateway_introspection_duration_seconds_count", kind="realtime"
        )
        for _ in range(3):
            assert stack.get("/realtime", token=token).status_code == 200
        after = stack.gateway.metric(
            "keystile_gateway_introspection_duration_seconds_count", kind="realtime"
        )
        assert after - before == 3


class TestRevocation:
    def test_revoked_token_refused_on_next_request(self, stack: Stack):
        """With the cache on, a revoked token is refused on the very next request: the event
        stream evicts it within milliseconds, while it was a cache hit before."""
        token = stack.token("read")
        assert stack.get("/api/x", token=token).status_code == 200
        hits = stack.gateway.metric("keystile_gateway_cache_lookups_total", result="hit")
        assert stack.get("/api/x", token=token).status_code == 200
        assert (
            stack.gateway.metric("keystile_gateway_cache_lookups_total", result="hit") == hits + 1
        )
        applied = stack.gateway.metric("keystile_gateway_events_applied_total")
        assert stack.server.revoke(stack.demo.app, token).status_code == 200
        took = wait_until(
            lambda: stack.gateway.metric("keystile_gateway_events_applied_total") > applied,
            limit=2.0,
            step=0.002,
        )
        assert took < 1.0
        r = stack.get("/api/x", token=token)
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["www-authenticate"]


class TestForwarding:
    def test_spoofed_identity_headers_are_stripped(self, stack: Stack):
        """Identity headers a caller sends never reach upstream, on public and protected
        routes alike; upstream sees only what the gateway set from the token."""
        spoof = {
            "X-Auth-Subject": "admin",
            "x-auth-client-id": "root",
            "X-AUTH-USERNAME": "alice",
            "X-Auth-Scope": "admin write",
        }
        public = echoed(stack.get("/public/x", headers=spoof))
        for name in spoof:
            assert name.lower() not in public
        protected = echoed(stack.get("/api/x", token=stack.token("read"), headers=spoof))
        assert protected["x-auth-subject"] == "demo-app"
        assert protected["x-auth-client-id"] == "demo-app"
        assert protected["x-auth-scope"] == "read"
        assert "x-auth-username" not in protected  # client_credentials: no username
        values = [
            v for k, v in stack.get("/api/x", token=stack.token(), headers=spoof).json()["headers"]
        ]
        assert "admin" not in values
        assert "alice" not in values

    def test_forwarded_headers_are_set(self, stack: Stack):
        """X-Forwarded-For/-Proto/-Host describe what the gateway saw; a caller's own
        X-Forwarded-For is dropped (it is not a trusted proxy)."""
        seen = echoed(
            stack.get(
                "/public/x",
                headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "evil.test"},
            )
        )
        assert seen["x-forwarded-for"] == "127.0.0.1"
        assert seen["x-forwarded-proto"] == "http"
        assert seen["x-forwarded-host"] == f"127.0.0.1:{stack.gateway.port}"
        assert seen["host"] == f"127.0.0.1:{stack.upstream.port}"

    def test_hop_by_hop_headers_are_removed(self, stack: Stack):
        """Hop-by-hop headers, and headers the Connection header names, are not forwarded in
        either direction (RFC 9110 §7.6.1)."""
        r = stack.get(
            "/public/x",
            headers={
                "Connection": "keep-alive, X-Private-Hop",
                "X-Private-Hop": "secret",
                "Keep-Alive": "timeout=5",
                "TE": "trailers",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "X-Kept": "yes",
            },
        )
        seen = echoed(r)
        for name in ("connection", "x-private-hop", "keep-alive", "te", "proxy-authorization"):
            assert name not in seen
        assert seen["x-kept"] == "yes"
        # The upstream answered with "Connection: keep-alive, x-upstream-hop" and Keep-Alive.
        assert "x-upstream-hop" not in r.headers
        assert "keep-alive" not in r.headers

    def test_upstream_cookies_are_not_shared_between_callers(self, stack: Stack):
        """A Set-Cookie from upstream goes to that caller only; the gateway's pooled client
        never replays it on another caller's request."""
        with httpx.Client(base_url=stack.gateway.url, trust_env=False) as first:
            r = first.get("/public/set-cookie")
            assert "session=" in r.headers["set-cookie"]
        with httpx.Client(base_url=stack.gateway.url, trust_env=False) as second:
            seen = echoed(second.get("/public/x"))
        assert "cookie" not in seen

    def test_large_upload_is_streamed(self, stack: Stack):
        """A 20 MB request body streams through: the upstream has received data while the
        client is still sending (it pauses half-way until upstream reports progress)."""
        size = 20 * MB
        chunk = b"u" * (256 * 1024)
        digest = hashlib.sha256()
        progress_seen: list[int] = []

        def body() -> Iterator[bytes]:
            sent = 0
            with httpx.Client(trust_env=False, timeout=5) as side:
                while sent < size:
                    if sent == size // 2:
                        # Buffering the whole body would leave upstream at 0 forever here.
                        deadline = time.monotonic() + 10
                        while True:
                            got = side.get(f"{stack.upstream.url}/_progress").json()["received"]
                            if got > 0:
                                progress_seen.append(got)
                                break
                            assert time.monotonic() < deadline, "upstream received nothing"
                            time.sleep(0.01)
                    digest.update(chunk)
                    sent += len(chunk)
                    yield chunk

        r = stack.gateway.http.post(
            "/public/upload",
            content=body(),
            headers={"Content-Length": str(size)},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"length": size, "sha256": digest.hexdigest()}
        assert progress_seen
        assert 0 < progress_seen[0] < size

    def test_chunked_upload_is_streamed(self, stack: Stack):
        """A body without Content-Length (chunked) arrives whole and intact upstream."""
        parts = [b"a" * 100_000, b"b" * 3, b"c" * 65_537]
        r = stack.gateway.http.post("/public/upload", content=iter(parts))
        assert r.json() == {
            "length": sum(map(len, parts)),
            "sha256": hashlib.sha256(b"".join(parts)).hexdigest(),
        }

    def test_large_download_is_streamed(self, stack: Stack):
        """A 20 MB response streams through: the first half reaches the client while the
        upstream is still holding back the second half (released only afterwards)."""
        size = 20 * MB
        received = 0
        with stack.gateway.http.stream(
            "GET", f"/public/download?size={size}", timeout=httpx.Timeout(10.0)
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(size)
            parts = r.iter_raw()
            while received < 4 * MB:
                received += len(next(parts))  # would time out if the gateway buffered
            httpx.post(f"{stack.upstream.url}/_release", trust_env=False)
            for part in parts:
                received += len(part)
        assert received == size

    def test_upstream_down_is_502(self, stack: Stack):
        """An upstream nobody listens on: 502, fast."""
        started = time.monotonic()
        r = stack.get("/down/x")
        assert r.status_code == 502
        assert r.json()["error"] == "bad_gateway"
        assert time.monotonic() - started < 2

    def test_upstream_timeout_is_504(self, stack: Stack):
        """An upstream slower than the route's timeout (0.5 s): 504."""
        started = time.monotonic()
        r = stack.get("/slow?seconds=3")
        assert r.status_code == 504
        assert r.json()["error"] == "gateway_timeout"
        assert time.monotonic() - started < 2.5

    def test_forward_auth_only_route_is_not_proxied(self, stack: Stack):
        """A route without upstream answers forward-auth checks but proxies nothing (404)."""
        assert stack.get("/check", token=stack.token("read")).status_code == 404


class TestForwardAuth:
    def test_traefik_style_allowed(self, stack: Stack):
        """Traefik forwardAuth (X-Forwarded-Method/-Host/-Uri): 200 with identity headers."""
        r = stack.gateway.http.get(
            "/_keystile/auth",
            headers={
                "Authorization": f"Bearer {stack.token('read')}",
                "X-Forwarded-Method": "POST",
                "X-Forwarded-Host": "api.example.test",
                "X-Forwarded-Uri": "/api/orders?x=1",
            },
        )
        assert r.status_code == 200
        assert r.headers["x-auth-subject"] == "demo-app"
        assert r.headers["x-auth-scope"] == "read"
        assert r.headers["x-envoy-auth-headers-to-remove"] == "x-auth-username"

    def test_traefik_style_method_and_scope(self, stack: Stack):
        """The original method and path are judged, not the check request's own."""
        headers = {"Authorization": f"Bearer {stack.token('read')}", "X-Forwarded-Method": "DELETE"}
        r = stack.gateway.http.get(
            "/_keystile/auth", headers={**headers, "X-Forwarded-Uri": "/api/x"}
        )
        assert r.status_code == 405
        headers["X-Forwarded-Method"] = "GET"
        r = stack.gateway.http.get(
            "/_keystile/auth", headers={**headers, "X-Forwarded-Uri": "/api/admin"}
        )
        assert r.status_code == 403
        assert 'scope="admin"' in r.headers["www-authenticate"]

    def test_envoy_style_path_prefix(self, stack: Stack):
        """Envoy ext_authz (HTTP): the original path follows the endpoint's path; the
        original method is kept. No credentials (or another scheme): the bare challenge and an
        empty body; an unknown token: invalid_token (RFC 6750 §3.1)."""
        token = stack.token("read")
        ok = stack.gateway.http.post(
            "/_keystile/auth/check/items?x=1", headers={"Authorization": f"Bearer {token}"}
        )
        assert ok.status_code == 200
        assert ok.headers["x-auth-client-id"] == "demo-app"
        bare = stack.gateway.http.get("/_keystile/auth/check/items")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"] == 'Bearer realm="gateway-test"'
        assert bare.content == b""  # no error information (RFC 6750 §3.1)
        basic = stack.gateway.http.get(
            "/_keystile/auth/check/items", headers={"Authorization": "Basic Zm9vOmJhcg=="}
        )
        assert basic.status_code == 401
        assert basic.headers["www-authenticate"] == 'Bearer realm="gateway-test"'
        assert basic.content == b""
        bad = stack.gateway.http.get(
            "/_keystile/auth/check/items", headers={"Authorization": "Bearer ks_at_unknown"}
        )
        assert bad.status_code == 401
        assert 'error="invalid_token"' in bad.headers["www-authenticate"]
        assert bad.json()["error"] == "invalid_token"

    def test_public_route_allowed_and_clears_identity(self, stack: Stack):
        """A public route is allowed without a token, and every identity header is listed
        for removal, so a caller's copies cannot pass through Envoy."""
        r = stack.gateway.http.get("/_keystile/auth", headers={"X-Original-URI": "/public/x"})
        assert r.status_code == 200
        removed = r.headers["x-envoy-auth-headers-to-remove"].split(", ")
        assert sorted(removed) == sorted(
            ["x-auth-subject", "x-auth-client-id", "x-auth-username", "x-auth-scope"]
        )

    def test_no_route_is_denied(self, stack: Stack):
        """A request no route covers is denied (403): no policy, no pass."""
        r = stack.gateway.http.get(
            "/_keystile/auth",
            headers={"Authorization": f"Bearer {stack.token()}", "X-Original-URI": "/nowhere"},
        )
        assert r.status_code == 403


class TestOperations:
    def test_healthz(self, stack: Stack):
        """/healthz answers 200 and tells whether the event stream is live."""
        r = stack.gateway.http.get("/healthz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "event_stream": "connected"}

    def test_metrics(self, stack: Stack):
        """/metrics counts requests by route and outcome, cache lookups and upstream time."""
        stack.get("/public/x")
        stack.get("/api/admin", token=stack.token("read"))
        g = stack.gateway
        assert (
            g.metric(
                "keystile_gateway_requests_total", route="*/public", mode="proxy", outcome="public"
            )
            >= 1
        )
        assert (
            g.metric(
                "keystile_gateway_requests_total",
                route="*/api/admin",
                mode="proxy",
                outcome="forbidden",
            )
            >= 1
        )
        assert g.metric("keystile_gateway_cache_lookups_total", result="miss") >= 1
        assert g.metric("keystile_gateway_upstream_duration_seconds_count", route="*/public") >= 1
        assert g.metric("keystile_gateway_event_stream_connected") == 1
