"""JWT features against a real `keystile serve`: PyJWT fetches the JWKS over HTTP, the CLI
rotates keys and registers client keys from another process."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest

from tests.e2e.conftest import DEMO_AUDIENCE, DemoServer, RunKeystile
from tests.server.jwt_support import INTROSPECTION_JWT, ClientKey, assertion_form, jwks_text

pytestmark = pytest.mark.process

CC = {"grant_type": "client_credentials"}
JWT_TYP = "token-introspection+jwt"  # RFC 9701 §5


def verify_over_http(url: str, token: str, *, audience: str, typ: str = "at+jwt") -> Any:
    """PyJWT's own JWKS client fetches the server's keys over HTTP and verifies ``token``."""
    header = pyjwt.get_unverified_header(token)
    assert header["typ"] == typ
    key = pyjwt.PyJWKClient(f"{url}/oauth2/jwks", cache_keys=False).get_signing_key_from_jwt(token)
    return pyjwt.decode(token, key.key, algorithms=[header["alg"]], audience=audience, issuer=url)


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class TestJwtEndToEnd:
    def test_jwks_over_http_and_rotation_from_the_cli(
        self, demo_server: DemoServer, run_keystile: RunKeystile
    ) -> None:
        """PyJWT verifies our JWTs with the JWKS fetched over HTTP, before and after a CLI key
        rotation, and the old token stays active until revoked (RFC 9068 §4, RFC 7517 §5)."""
        server, demo = demo_server.server, demo_server.demo
        db = ["--json", "--db", str(server.db)]
        args = ["--token-format", "jwt", "--scope", "read", "--audience", DEMO_AUDIENCE]
        created = ok(run_keystile("client", "create", "jwt-svc", *args, *db))
        auth = ("jwt-svc", created["client_secret"])
        old = server.http.post("/oauth2/token", data=CC, auth=auth).json()["access_token"]
        assert verify_over_http(server.url, old, audience=DEMO_AUDIENCE)["client_id"] == "jwt-svc"
        [first] = ok(run_keystile("key", "list", *db))

        active, retired = ok(run_keystile("key", "rotate", *db))

        assert retired["kid"] == first["kid"]
        new = server.http.post("/oauth2/token", data=CC, auth=auth).json()["access_token"]
        assert pyjwt.get_unverified_header(new)["kid"] == active["kid"] != first["kid"]
        for token in (old, new):
            assert verify_over_http(server.url, token, audience=DEMO_AUDIENCE)["sub"] == "jwt-svc"
            assert server.introspect(demo.rs, token).json()["active"] is True
        r = server.http.post("/oauth2/revoke", data={"token": old}, auth=auth)
        assert r.status_code == 200
        assert server.introspect(demo.rs, old).json() == {"active": False}
        assert server.introspect(demo.rs, new).json()["active"] is True

    def test_private_key_jwt_and_signed_answers(
        self, demo_server: DemoServer, run_keystile: RunKeystile, tmp_path: Path
    ) -> None:
        """The resource server authenticates with private_key_jwt and must get signed answers,
        which PyJWT verifies over HTTP (RFC 7523 §2.2, RFC 9701 §5)."""
        server, demo = demo_server.server, demo_server.demo
        db = ["--json", "--db", str(server.db)]
        key = ClientKey("ES256")
        (tmp_path / "rs.jwks").write_text(jwks_text(key))
        pkj = ["--auth-method", "private_key_jwt", "--jwks", str(tmp_path / "rs.jwks")]
        ok(run_keystile("client", "update", "demo-rs", *pkj, *db))
        mode = ["--introspection-response", "jwt-required"]
        ok(run_keystile("resource", "update", DEMO_AUDIENCE, *mode, *db))
        token = server.issue(demo.app)

        def introspect(accept: str | None) -> httpx.Response:
            assertion = key.assertion("demo-rs", aud=server.url, now=int(time.time()))
            headers = {"Accept": accept} if accept else {}
            form = {"token": token, **assertion_form(assertion)}
            return server.http.post("/oauth2/introspect", data=form, headers=headers)

        r = introspect(INTROSPECTION_JWT)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == INTROSPECTION_JWT
        claims = verify_over_http(server.url, r.text, audience="demo-rs", typ=JWT_TYP)
        assert claims["token_introspection"]["active"] is True
        assert claims["token_introspection"]["client_id"] == "demo-app"
        assert introspect(None).status_code == 406
        assert server.introspect(demo.rs, token).status_code == 401  # its secret is no use now
