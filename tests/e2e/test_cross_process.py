"""Changes the CLI makes in another process reach a running server at once."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Creds
from tests.e2e.conftest import DEMO_AUDIENCE, DemoServer, RunKeystile

pytestmark = pytest.mark.process

INVALID_CLIENT = {"error": "invalid_client", "error_description": "client authentication failed"}


class TestCrossProcess:
    def test_disable_client(self, demo_server: DemoServer, run_keystile: RunKeystile) -> None:
        """`client disable` in another process: the client's next token request is 401
        invalid_client and its earlier token introspects inactive, with no restart."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)

        done = run_keystile("client", "disable", "demo-app", "--json", "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "client_id": "demo-app",
            "enabled": False,
            "tokens_revoked": 1,
        }

        r = server.token(demo.app)
        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT
        assert server.introspect(demo.rs, token).json() == {"active": False}

    def test_enable_client_again(self, demo_server: DemoServer, run_keystile: RunKeystile) -> None:
        """`client enable` lets a disabled client get tokens again; revoked ones stay revoked."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)
        db = str(server.db)
        assert run_keystile("client", "disable", "demo-app", "--db", db).returncode == 0
        assert server.token(demo.app).status_code == 401

        done = run_keystile("client", "enable", "demo-app", "--json", "--db", db)
        assert json.loads(done.stdout) == {"client_id": "demo-app", "enabled": True}
        fresh = server.issue(demo.app)
        assert server.introspect(demo.rs, fresh).json()["active"] is True
        assert server.introspect(demo.rs, token).json() == {"active": False}

    def test_rotate_secret(self, demo_server: DemoServer, run_keystile: RunKeystile) -> None:
        """`client rotate-secret`: the old secret fails at once, the printed new one works."""
        server, demo = demo_server.server, demo_server.demo
        assert server.token(demo.app).status_code == 200

        done = run_keystile("client", "rotate-secret", "demo-app", "--json", "--db", str(server.db))
        assert done.returncode == 0, done.stderr
        rotated = json.loads(done.stdout)
        assert set(rotated) == {"client_id", "client_secret"}
        assert rotated["client_id"] == "demo-app"
        new_secret = rotated["client_secret"]
        assert new_secret.startswith("ks_cs_")
        assert new_secret != demo.app.secret

        r = server.token(demo.app)
        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT
        assert server.token(Creds("demo-app", new_secret)).status_code == 200

    def test_resource_claims_update(
        self, demo_server: DemoServer, run_keystile: RunKeystile
    ) -> None:
        """`resource update --claims "scope exp"`: the next introspection by that resource
        server shows only active, scope and exp (RFC 7662 §2.2 lets the AS limit claims)."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app, scope="read")
        before = server.introspect(demo.rs, token).json()
        assert {"client_id", "aud", "iss", "jti"} <= set(before)

        done = run_keystile(
            "resource",
            "update",
            DEMO_AUDIENCE,
            "--claims",
            "scope exp",
            "--json",
            "--db",
            str(server.db),
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["claims"] == ["exp", "scope"]

        after = server.introspect(demo.rs, token).json()
        assert after == {"active": True, "scope": "read", "exp": before["exp"]}

    def test_delete_client(self, demo_server: DemoServer, run_keystile: RunKeystile) -> None:
        """`client delete` revokes the client's live tokens and its secret stops working."""
        server, demo = demo_server.server, demo_server.demo
        token = server.issue(demo.app)

        done = run_keystile(
            "client", "delete", "demo-app", "--yes", "--json", "--db", str(server.db)
        )
        assert json.loads(done.stdout) == {
            "client_id": "demo-app",
            "deleted": True,
            "tokens_revoked": 1,
        }
        assert server.introspect(demo.rs, token).json() == {"active": False}
        r = server.token(demo.app)
        assert r.status_code == 401
        assert r.json() == INVALID_CLIENT
