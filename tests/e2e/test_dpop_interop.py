"""A DPoP client not written here, oauth4webapi (npm), against real processes: a
`keystile serve`, and an API behind the SDK middleware served by uvicorn. It discovers the
AS, gets a DPoP-bound token, calls the API with its own proofs; the token copied without its
key is refused. The npm package comes from tests/interop/package-lock.json (`npm ci`, run by
`make install` or here when missing); without node or npm the test skips, and fails under
KEYSTILE_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from keystile.resource import TokenValidator
from keystile.resource.middleware import BearerAuthMiddleware
from keystile.resource.sender import SenderCheck
from tests.conftest import service_unavailable
from tests.e2e.conftest import DemoServer
from tests.e2e.sdk_support import ServedApp

pytestmark = pytest.mark.process

INTEROP = Path(__file__).resolve().parents[1] / "interop"


@pytest.fixture(scope="session")
def node() -> str:
    """node, with oauth4webapi installed from the committed lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        service_unavailable(
            "node and npm are needed for the DPoP interop test (apt-get install nodejs npm)"
        )
    assert node is not None
    assert npm is not None
    if not (INTEROP / "node_modules" / "oauth4webapi").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=INTEROP,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            service_unavailable(f"npm ci failed in {INTEROP}: {done.stderr[-500:]}")
    return node


def protected_api(validator: TokenValidator) -> Any:
    async def orders(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await validator.start()
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await validator.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"orders": []}'})

    return BearerAuthMiddleware(orders, validator, sender=SenderCheck(mode="required"))


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256"])
def test_oauth4webapi_client(node: str, demo_server: DemoServer, alg: str) -> None:
    """oauth4webapi gets a DPoP token (token_type DPoP, RFC 9449 §5) and reads the API with
    its proofs (§7); the same token as Bearer or without a proof gets 401 and a DPoP
    challenge."""
    server, demo = demo_server.server, demo_server.demo
    validator = TokenValidator(
        issuer=server.url, client_id=demo.rs.client_id, client_secret=demo.rs.secret
    )
    with ServedApp(protected_api(validator)) as api:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "ISSUER": server.url,
            "CLIENT_ID": demo.app.client_id,
            "CLIENT_SECRET": demo.app.secret,
            "API_URL": api.url + "/orders",
            "ALG": alg,
        }
        done = subprocess.run(
            [node, "dpop_client.mjs"],
            cwd=INTEROP,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert "ES256" in out["dpop_algs"]
    assert out["token_type"] == "dpop"  # oauth4webapi lower-cases token_type
    assert out["api_status"] == 200, out
    assert json.loads(out["api_body"]) == {"orders": []}
    for scheme in ("bearer", "dpop"):
        assert out[f"copied_{scheme}_status"] == 401
        assert out[f"copied_{scheme}_challenge"].startswith("DPoP ")
