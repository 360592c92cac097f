"""The README flow against a real server, with the real curl binary."""

from __future__ import annotations

import json
import shlex
import subprocess

import pytest

from tests.e2e.conftest import DEMO_AUDIENCE, DemoServer

pytestmark = pytest.mark.process

FORM = "application/x-www-form-urlencoded"


def run_curl(curl: str, *args: str) -> tuple[int, str]:
    """Run curl (never through a proxy); its HTTP status and body."""
    done = subprocess.run(
        [curl, "-sS", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def printed_curl_commands(stdout: str) -> list[list[str]]:
    """The curl commands in the demo block, backslash continuations joined, as argv lists."""
    lines: list[str] = []
    for raw in stdout.splitlines():
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + raw.strip()
        else:
            lines.append(raw.strip())
    return [shlex.split(line) for line in lines if line.startswith("curl ")]


class TestReadmeCurlFlow:
    def test_token_introspect_revoke_with_curl(self, demo_server: DemoServer, curl: str) -> None:
        """The README's curl calls: a token introspects active for its audience, then
        revoked (RFC 7009 §2.2: 200) it introspects as exactly {"active": false}."""
        url, demo = demo_server.server.url, demo_server.demo
        app_auth = f"{demo.app.client_id}:{demo.app.secret}"
        rs_auth = f"{demo.rs.client_id}:{demo.rs.secret}"

        status, body = run_curl(
            curl,
            "-X",
            "POST",
            f"{url}/oauth2/token",
            "-H",
            f"Content-Type: {FORM}",
            "-d",
            "grant_type=client_credentials&scope=read",
            "-u",
            app_auth,
        )
        assert status == 200, body
        issued = json.loads(body)
        token = issued.pop("access_token")
        assert issued == {"token_type": "Bearer", "expires_in": 3600, "scope": "read"}
        assert token.startswith("ks_at_")
        assert len(token) == 55

        introspect = ["-X", "POST", f"{url}/oauth2/introspect", "-H", f"Content-Type: {FORM}"]
        status, body = run_curl(curl, *introspect, "-d", f"token={token}", "-u", rs_auth)
        assert status == 200, body
        claims = json.loads(body)
        assert claims["active"] is True
        assert claims["aud"] == DEMO_AUDIENCE
        assert claims["client_id"] == "demo-app"
        assert claims["scope"] == "read"
        assert claims["token_type"] == "Bearer"
        assert claims["iss"] == url
        assert claims["exp"] - claims["iat"] == 3600

        status, body = run_curl(
            curl,
            "-X",
            "POST",
            f"{url}/oauth2/revoke",
            "-H",
            f"Content-Type: {FORM}",
            "-d",
            f"token={token}",
            "-u",
            app_auth,
        )
        assert (status, body) == (200, "")

        status, body = run_curl(curl, *introspect, "-d", f"token={token}", "-u", rs_auth)
        assert status == 200
        assert json.loads(body) == {"active": False}

    def test_printed_commands_run_as_printed(self, demo_server: DemoServer, curl: str) -> None:
        """The three curl commands the first start prints work verbatim, ACCESS_TOKEN filled in."""
        commands = printed_curl_commands(demo_server.server.stdout)
        assert [c[4].rsplit("/", 1)[-1] for c in commands] == [
            "token",
            "introspect",
            "revoke",
            "token",  # the code exchange of the browser flow (tests/e2e/test_code_flow.py)
        ]
        token_cmd, introspect_cmd, revoke_cmd, _ = commands

        status, body = run_curl(curl, *token_cmd[1:])
        assert status == 200, body
        token = json.loads(body)["access_token"]

        def fill(cmd: list[str]) -> list[str]:
            return [arg.replace("ACCESS_TOKEN", token) for arg in cmd[1:]]

        status, body = run_curl(curl, *fill(introspect_cmd))
        assert status == 200
        assert json.loads(body)["active"] is True
        assert run_curl(curl, *fill(revoke_cmd)) == (200, "")
        status, body = run_curl(curl, *fill(introspect_cmd))
        assert json.loads(body) == {"active": False}

    def test_wrong_secret_is_invalid_client(self, demo_server: DemoServer, curl: str) -> None:
        """A token request with a wrong secret gets 401 invalid_client (RFC 6749 §5.2)."""
        status, body = run_curl(
            curl,
            "-X",
            "POST",
            f"{demo_server.server.url}/oauth2/token",
            "-d",
            "grant_type=client_credentials",
            "-u",
            "demo-app:ks_cs_wrong",
        )
        assert status == 401
        assert json.loads(body) == {
            "error": "invalid_client",
            "error_description": "client authentication failed",
        }
