"""Server processes over their life: first start, restarts, SIGTERM and SIGKILL."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import LOOPBACK, DemoServer, RunKeystile, ServerStarter

pytestmark = pytest.mark.process


def listening_line(port: int, scheme: str = "http", host: str = LOOPBACK) -> str:
    return f"keystile listening on {scheme}://{host}:{port}\n"


class TestFirstStart:
    def test_demo_block_then_listening_line(self, demo_server: DemoServer) -> None:
        """The first start on a new database prints the demo setup with two fresh secrets,
        then the listening line last."""
        server, demo = demo_server.server, demo_server.demo
        out = server.stdout
        assert out.endswith("\n\n" + listening_line(server.port))
        assert "created a demo setup on this new database" in out
        for secret in (demo.app.secret, demo.rs.secret):
            assert secret.startswith("ks_cs_")
            assert len(secret) == 55
        assert demo.app.secret != demo.rs.secret
        assert f"{server.url}/oauth2/token" in out
        assert "ks_cs_" not in server.stderr

    def test_second_start_prints_only_listening_line(
        self, start_server: ServerStarter, demo_server: DemoServer
    ) -> None:
        """A later start on the same database prints the listening address and nothing else,
        and the demo secrets printed the first time still work."""
        first, demo = demo_server.server, demo_server.demo
        assert first.stop() in (0, -signal.SIGTERM)

        second = start_server()
        assert second.stdout == listening_line(second.port)
        assert "ks_cs_" not in second.stderr
        assert second.token(demo.app).status_code == 200

    def test_no_demo_creates_no_clients(
        self, start_server: ServerStarter, run_keystile: RunKeystile
    ) -> None:
        """--no-demo on a new database prints no secrets and registers no client at all."""
        server = start_server("--no-demo")
        assert server.stdout == listening_line(server.port)

        listed = run_keystile("client", "list", "--json", "--db", str(server.db))
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        listed = run_keystile("resource", "list", "--json", "--db", str(server.db))
        assert json.loads(listed.stdout) == []


class TestShutdown:
    def test_sigterm_stops_cleanly(self, demo_server: DemoServer) -> None:
        """SIGTERM stops a server that has served requests within seconds, without a traceback."""
        server = demo_server.server
        server.issue(demo_server.demo.app)
        code = server.stop()
        assert code in (0, -signal.SIGTERM), server.stderr
        assert "Traceback" not in server.stderr

    def test_busy_port_is_refused(self, run_keystile: RunKeystile, tmp_path: Path) -> None:
        """Starting on a port another socket listens on exits 1 and names the address."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
            busy.bind((LOOPBACK, 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            done = run_keystile(
                "serve", "--no-demo", "--port", str(port), "--db", str(tmp_path / "busy.db")
            )
        assert done.returncode == 1
        assert done.stderr.startswith(f"keystile: cannot bind {LOOPBACK}:{port}: ")
        assert "Traceback" not in done.stderr

    def test_busy_port_keeps_the_demo_for_the_next_start(
        self, run_keystile: RunKeystile, start_server: ServerStarter, tmp_path: Path
    ) -> None:
        """A start that cannot bind prints no secrets and leaves the database new, so the
        next, successful start still prints the demo setup."""
        db = tmp_path / "later.db"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
            busy.bind((LOOPBACK, 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            done = run_keystile("serve", "--port", str(port), "--db", str(db))
        assert done.returncode == 1
        assert "ks_cs_" not in done.stdout + done.stderr
        server = start_server(db=db)
        assert "demo-app" in server.stdout
        assert "ks_cs_" in server.stdout


class TestDurability:
    def test_revocation_survives_sigkill(
        self, start_server: ServerStarter, demo_server: DemoServer
    ) -> None:
        """Once revocation answered 200 it survives a SIGKILL right after: the restarted
        server on the same database introspects the token as inactive."""
        first, demo = demo_server.server, demo_server.demo
        token = first.issue(demo.app, scope="read")
        assert first.introspect(demo.rs, token).json()["active"] is True
        r = first.revoke(demo.app, token)
        assert r.status_code == 200
        first.kill()

        second = start_server()
        r = second.introspect(demo.rs, token)
        assert r.status_code == 200
        assert r.json() == {"active": False}

    def test_issued_token_survives_sigkill(
        self, start_server: ServerStarter, demo_server: DemoServer
    ) -> None:
        """A token whose issuance answered 200 is still active after a SIGKILL and restart."""
        first, demo = demo_server.server, demo_server.demo
        r = first.token(demo.app, scope="write")
        assert r.status_code == 200
        token = r.json()["access_token"]
        first.kill()

        second = start_server()
        r = second.introspect(demo.rs, token)
        assert r.status_code == 200
        claims = r.json()
        assert claims["active"] is True
        assert claims["scope"] == "write"
        assert claims["client_id"] == "demo-app"
        # The issuer is the new process's address: iss is derived, not stored.
        assert claims["iss"] == second.url
