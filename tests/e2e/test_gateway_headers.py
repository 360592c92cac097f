"""Every spelling of an identity or forwarding header, sent through real gateway processes.

CGI and WSGI upstreams (RFC 3875 §4.1.18, PEP 3333) read ``X-Auth-Subject``, ``x_auth_subject``
and ``X_AUTH-SUBJECT`` all as ``HTTP_X_AUTH_SUBJECT``, so the gateway must drop the caller's
copies under any spelling. The toy upstream echoes the headers it received; each test sends
every spelling of every such header, with a value of its own, and checks that none of them
arrives, only the gateway's own headers.
"""

from __future__ import annotations

import functools
import itertools
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.conftest import Demo, Server, ServerStarter, parse_demo
from tests.e2e.gateway_procs import Gateway, Upstream, start_gateway, start_upstream

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}
realm = "headers-test"
TRUSTED

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret_file = "rs.secret"

[[routes]]
path = "/public"
upstream = "UPSTREAM"
public = true

[[routes]]
path = "/api"
upstream = "UPSTREAM"
scopes = ["read"]
"""

IDENTITY = ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Username", "X-Auth-Scope")
FORWARDING = (
    "Forwarded",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
)
# Kept as they come from a trusted proxy, dropped from anyone else.
PASSED_ON = (
    "Forwarded",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
)


def spellings(name: str) -> list[str]:
    """Every '-'/'_' mix of ``name``, each in lower, upper, title, given and alternating case."""
    parts = name.split("-")
    found: set[str] = set()
    for seps in itertools.product("-_", repeat=len(parts) - 1):
        joined = parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=True))
        alternating = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(joined))
        found.update({joined, joined.lower(), joined.upper(), joined.title(), alternating})
    return sorted(found)


def wsgi_name(name: str) -> str:
    """The CGI/WSGI environ key of a header (RFC 3875 §4.1.18)."""
    return "HTTP_" + name.upper().replace("-", "_")


@dataclass
class Stack:
    server: Server
    demo: Demo
    upstream: Upstream
    gateway: Gateway  # its peer (127.0.0.1) is not a trusted proxy
    trusting: Gateway  # trusted_proxies = ["127.0.0.1"]

    @functools.cached_property
    def bearer(self) -> str:
        """``Bearer <token>`` with scope read, issued once for the module."""
        return "Bearer " + self.server.issue(self.demo.app, scope="read")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One AS, one echoing upstream, and two gateways: one trusting its peer, one not."""
    folder = tmp_path_factory.mktemp("gateway-headers")
    starter = ServerStarter(folder)
    server = starter("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(folder)
    (folder / "rs.secret").write_text(demo.rs.secret + "\n")
    config = CONFIG.replace("AS_URL", server.url).replace("UPSTREAM", upstream.url)
    gateway = start_gateway(folder, config.replace("TRUSTED", ""), name="untrusting")
    trusting = start_gateway(
        folder, config.replace("TRUSTED", 'trusted_proxies = ["127.0.0.1"]'), name="trusting"
    )
    try:
        yield Stack(server, demo, upstream, gateway, trusting)
    finally:
        trusting.stop()
        gateway.stop()
        upstream.stop()
        starter.stop_all()


def spoofs(names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every spelling of every name, each with a value no gateway would send."""
    return [
        (spelled, f"caller{i}x{n}z")
        for i, name in enumerate(names)
        for n, spelled in enumerate(spellings(name))
    ]


def received(r: httpx.Response) -> dict[str, list[tuple[str, str]]]:
    """The headers upstream got, grouped by their WSGI name (what a WSGI app would read)."""
    assert r.status_code == 200, r.text
    groups: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, value in r.json()["headers"]:
        groups[wsgi_name(name)].append((name, value))
    return groups


def assert_no_caller_value(r: httpx.Response, sent: list[tuple[str, str]]) -> None:
    values = [v for _, v in r.json()["headers"]]
    for _, spoofed in sent:
        assert not any(spoofed in v for v in values), spoofed


class TestProxy:
    def test_spellings_cover_the_mixes(self):
        """The spellings include the ones from the issue, in every '-'/'_' mix."""
        found = spellings("X-Auth-Subject")
        for name in ("X_Auth-Subject", "x_auth_subject", "X-AUTH_SUBJECT", "X-Auth-Subject"):
            assert name in found
        assert len({s.lower() for s in found}) == 4
        assert "X_Forwarded_For" in spellings("X-Forwarded-For")
        assert "forwarded" in spellings("Forwarded")

    @pytest.mark.parametrize("path", ["/public/x", "/api/x"])
    def test_no_spelling_of_an_identity_header_reaches_upstream(self, stack: Stack, path: str):
        """On public and protected routes, upstream sees only the identity the gateway set
        from the token, whatever spellings of identity headers the caller sent."""
        sent = spoofs(IDENTITY)
        headers = [*sent]
        if path.startswith("/api"):
            headers.append(("Authorization", stack.bearer))
        for gateway in (stack.gateway, stack.trusting):
            r = gateway.http.get(path, headers=headers)
            got = received(r)
            assert_no_caller_value(r, sent)
            if path == "/public/x":
                for name in IDENTITY:
                    assert wsgi_name(name) not in got
            else:
                assert got["HTTP_X_AUTH_SUBJECT"] == [("x-auth-subject", "demo-app")]
                assert got["HTTP_X_AUTH_CLIENT_ID"] == [("x-auth-client-id", "demo-app")]
                assert got["HTTP_X_AUTH_SCOPE"] == [("x-auth-scope", "read")]
                assert "HTTP_X_AUTH_USERNAME" not in got  # client_credentials: no user

    @pytest.mark.parametrize("path", ["/public/x", "/api/x"])
    def test_no_spelling_of_a_forwarding_header_from_an_untrusted_peer(
        self, stack: Stack, path: str
    ):
        """From a peer that is not a trusted proxy, no Forwarded/X-Forwarded-* header under
        any spelling reaches upstream: only the gateway's own X-Forwarded-For/-Proto/-Host."""
        sent = spoofs(FORWARDING)
        headers = [*sent]
        if path.startswith("/api"):
            headers.append(("Authorization", stack.bearer))
        r = stack.gateway.http.get(path, headers=headers)
        got = received(r)
        assert_no_caller_value(r, sent)
        assert got["HTTP_X_FORWARDED_FOR"] == [("x-forwarded-for", "127.0.0.1")]
        assert got["HTTP_X_FORWARDED_PROTO"] == [("x-forwarded-proto", "http")]
        host = f"127.0.0.1:{stack.gateway.port}"
        assert got["HTTP_X_FORWARDED_HOST"] == [("x-forwarded-host", host)]
        for name in PASSED_ON:
            assert wsgi_name(name) not in got

    def test_trusted_proxy_passes_only_the_dash_spelling(self, stack: Stack):
        """A trusted proxy's X-Forwarded-* (any case: HTTP names are case-insensitive) are
        kept or extended; their underscore spellings never pass, since a proxy writes the dash
        spelling and one with '_' can only be its caller's, passed along."""
        sent = spoofs(FORWARDING)
        r = stack.trusting.http.get("/public/x", headers=sent)
        got = received(r)
        dashed: dict[str, list[str]] = {n.lower(): [] for n in FORWARDING}
        for name, value in sent:
            if "_" not in name:
                dashed[name.lower()].append(value)
            else:
                assert not any(value in v for _, v in r.json()["headers"]), name
        assert got["HTTP_X_FORWARDED_FOR"] == [
            ("x-forwarded-for", ", ".join([*dashed["x-forwarded-for"], "127.0.0.1"]))
        ]
        assert got["HTTP_X_FORWARDED_PROTO"] == [
            ("x-forwarded-proto", dashed["x-forwarded-proto"][-1])
        ]
        assert got["HTTP_X_FORWARDED_HOST"] == [
            ("x-forwarded-host", dashed["x-forwarded-host"][-1])
        ]
        for name in (n.lower() for n in PASSED_ON):
            assert got[wsgi_name(name)] == [(name, v) for v in dashed[name]]


class TestForwardAuth:
    def test_other_spellings_are_refused(self, stack: Stack):
        """The proxy in front passes the caller's headers on beside the answer's, replacing
        only the dash spelling: a check request carrying another spelling of an identity or
        forwarding header is refused (400), on public routes too; the dash spelling (in any
        case) is left for the proxy to replace."""
        names = [s for n in IDENTITY + FORWARDING for s in spellings(n)]
        assert len(names) > 150
        for name in names:
            for path in ("/public/x", "/api/x"):
                r = stack.gateway.http.get(
                    "/_keystile/auth",
                    headers={"Authorization": stack.bearer, "X-Original-URI": path, name: "x"},
                )
                if "_" in name:
                    assert r.status_code == 400, (name, path)
                    assert r.json()["error"] == "invalid_request"
                    assert "x-auth-subject" not in r.headers
                else:
                    assert r.status_code == 200, (name, path, r.text)
