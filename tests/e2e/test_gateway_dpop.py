"""DPoP through real processes (RFC 9449 §7): `keystile serve` binds the token, `keystile
gateway --config` checks every proof against the introspected cnf, and the toy upstream
sees what passed. Each refusal the issue lists is sent once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.dpop_support import DpopKey
from tests.e2e.conftest import Demo, Server, ServerStarter, parse_demo
from tests.e2e.gateway_procs import Gateway, Upstream, start_gateway, start_upstream

pytestmark = pytest.mark.process

CONFIG = """
[gateway]
port = {port}

[authorization_server]
issuer = "AS_URL"
client_id = "demo-rs"
client_secret_file = "rs.secret"

[[routes]]
path = "/api"
upstream = "UPSTREAM"
scopes = ["read"]
sender_constrained = "required"
"""


@dataclass
class Stack:
    server: Server
    demo: Demo
    upstream: Upstream
    gateway: Gateway
    key: DpopKey

    def bound_token(self) -> str:
        proof = self.key.proof("POST", self.server.url + "/oauth2/token", int(time.time()))
        r = self.server.http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials", "scope": "read"},
            auth=self.demo.app.auth,
            headers={"DPoP": proof},
        )
        assert r.status_code == 200, r.text
        assert r.json()["token_type"] == "DPoP"
        return str(r.json()["access_token"])

    @property
    def api(self) -> str:
        return self.gateway.url + "/api/orders"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("gateway-dpop")
    starter = ServerStarter(folder)
    server = starter("--log-level", "warning")
    demo = parse_demo(server.stdout)
    upstream = start_upstream(folder)
    (folder / "rs.secret").write_text(demo.rs.secret + "\n")
    gateway = start_gateway(
        folder, CONFIG.replace("AS_URL", server.url).replace("UPSTREAM", upstream.url)
    )
    try:
        gateway.wait_events()
        yield Stack(server, demo, upstream, gateway, DpopKey("ES256"))
    finally:
        gateway.stop()
        upstream.stop()
        starter.stop_all()


def send(stack: Stack, token: str, proof: str | None, scheme: str = "DPoP") -> httpx.Response:
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return stack.gateway.http.get("/api/orders?page=2", headers=headers)


def test_right_proof_reaches_upstream(stack: Stack) -> None:
    """The bound token with its proof is forwarded, DPoP scheme and proof included."""
    token = stack.bound_token()
    proof = stack.key.proof("GET", stack.api, int(time.time()), access_token=token)
    r = send(stack, token, proof)
    assert r.status_code == 200, r.text
    seen = dict(r.json()["headers"])  # [name, value] pairs
    assert seen["authorization"] == f"DPoP {token}"
    assert seen["x-auth-subject"] == "demo-app"


Make = Callable[[DpopKey, str, str, int], str]
REFUSALS: list[tuple[str, Make, str]] = [
    (
        "wrong key",
        lambda k, api, t, now: DpopKey("ES256").proof("GET", api, now, access_token=t),
        "another key",
    ),
    ("wrong htm", lambda k, api, t, now: k.proof("POST", api, now, access_token=t), "htm"),
    ("wrong htu", lambda k, api, t, now: k.proof("GET", api + "/x", now, access_token=t), "htu"),
    ("stale iat", lambda k, api, t, now: k.proof("GET", api, now - 300, access_token=t), "old"),
    ("wrong ath", lambda k, api, t, now: k.proof("GET", api, now, access_token=t + "x"), "ath"),
]


@pytest.mark.parametrize(("case", "make", "why"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_bad_proof_refused(stack: Stack, case: str, make: Make, why: str) -> None:
    """A proof by another key, for another method or URL, too old, or for another token:
    401 invalid_dpop_proof with a DPoP challenge."""
    token = stack.bound_token()
    r = send(stack, token, make(stack.key, stack.api, token, int(time.time())))
    assert r.status_code == 401, case
    assert r.json()["error"] == "invalid_dpop_proof"
    assert why in r.json()["error_description"]
    assert r.headers["www-authenticate"].startswith('DPoP algs="')


def test_copied_token_and_replay_refused(stack: Stack) -> None:
    """No proof, the Bearer scheme, and a replayed proof are refused; a bearer token on this
    required route too."""
    token = stack.bound_token()
    assert send(stack, token, None).json()["error"] == "invalid_dpop_proof"
    r = send(stack, token, None, "Bearer")
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"
    proof = stack.key.proof("GET", stack.api, int(time.time()), access_token=token)
    assert send(stack, token, proof).status_code == 200
    r = send(stack, token, proof)
    assert r.status_code == 401
    assert "used before" in r.json()["error_description"]
    bearer = stack.server.issue(stack.demo.app, scope="read")
    assert send(stack, bearer, None, "Bearer").status_code == 401


def test_missing_nonce_refused_when_the_gateway_asks_for_nonces(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With `dpop_nonce = true` (RFC 9449 §9): a right proof without a nonce gets 401
    use_dpop_nonce with a DPoP-Nonce header; the same request with that nonce passes; a
    made-up nonce is refused."""
    folder = tmp_path_factory.mktemp("gateway-dpop-nonce")
    (folder / "rs.secret").write_text(stack.demo.rs.secret + "\n")
    config = (
        CONFIG.replace("AS_URL", stack.server.url)
        .replace("UPSTREAM", stack.upstream.url)
        .replace("port = {port}\n", "port = {port}\ndpop_nonce = true\n")
    )
    gateway = start_gateway(folder, config, name="nonce-gateway")
    try:
        api = gateway.url + "/api/orders"
        token = stack.bound_token()

        def call(nonce: str | None) -> httpx.Response:
            proof = stack.key.proof("GET", api, int(time.time()), access_token=token, nonce=nonce)
            return gateway.http.get(
                "/api/orders", headers={"Authorization": f"DPoP {token}", "DPoP": proof}
            )

        r = call(None)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "use_dpop_nonce"
        nonce = r.headers["dpop-nonce"]
        assert r.headers["www-authenticate"].startswith("DPoP ")
        assert call("not-a-nonce-we-gave").json()["error"] in (
            "use_dpop_nonce",
            "invalid_dpop_proof",
        )
        r = call(nonce)
        assert r.status_code == 200, r.text
    finally:
        gateway.stop()
