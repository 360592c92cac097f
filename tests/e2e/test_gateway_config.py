"""`keystile gateway --config`: a bad file stops the start with exit code 2 and clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Cli, RunKeystile

pytestmark = pytest.mark.process

GOOD_AS = """
[authorization_server]
issuer = "http://127.0.0.1:9"
client_id = "gw"
client_secret = "s3cret"
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_all_problems_reported_at_once(tmp_path: Path, run_keystile: RunKeystile):
    """An unknown key, a bad URL and a duplicate route are each named, with exit code 2."""
    config = write(
        tmp_path,
        GOOD_AS
        + """
[[routes]]
path = "/api"
upstream = "ftp://files.example.test"

[[routes]]
path = "/orders/"
upstream = "http://127.0.0.1:9001"
upstrem_timeout = 3

[[routes]]
path = "/orders"
upstream = "http://127.0.0.1:9002"
""",
    )
    done = run_keystile("gateway", "--config", config)
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert "routes[0].upstream: upstream must be an absolute http:// or https:// URL" in err
    assert "routes[1].upstrem_timeout: unknown key (known keys here:" in err
    assert "routes[2] duplicates routes[1]" in err
    assert "Traceback" not in err


def test_unknown_section_key(tmp_path: Path, cli: Cli):
    """A misspelt key in a section is refused, naming the keys that section knows."""
    result = cli(
        "gateway",
        "--config",
        write(tmp_path, GOOD_AS + "\n[cache]\nmax_tll = 5\n\n[[routes]]\npublic = true\n"),
    )
    assert result.exit_code == 2
    assert "cache.max_tll: unknown key (known keys here: degraded_ttl, max_entries" in result.output


def test_phantom_token_needs_a_token(tmp_path: Path, cli: Cli):
    """phantom_token (RFC 9701) cannot apply to a public route or with forward_token = false."""
    text = (
        GOOD_AS
        + '\n[[routes]]\npath = "/a"\npublic = true\nphantom_token = true\n'
        + '\n[[routes]]\npath = "/b"\nphantom_token = true\nforward_token = false\n'
    )
    result = cli("gateway", "--config", write(tmp_path, text))
    assert result.exit_code == 2
    assert "a public route checks no token, so phantom_token cannot apply" in result.output
    assert "phantom_token forwards a token" in result.output


def test_inconsistent_route_options(tmp_path: Path, cli: Cli):
    """A public route with scopes, and stale without a maximum age, are refused."""
    text = (
        GOOD_AS
        + '\n[[routes]]\npath = "/a"\npublic = true\nscopes = ["read"]\n'
        + '\n[[routes]]\npath = "/b"\non_unavailable = "stale"\n'
        + '\n[[routes]]\npath = "/metrics"\n'
    )
    result = cli("gateway", "--config", write(tmp_path, text))
    assert result.exit_code == 2
    assert "routes[0]: Value error" not in result.output
    assert "a public route checks no token, so scopes cannot apply" in result.output
    assert "on_unavailable = 'stale' needs stale_max_age" in result.output
    assert "is shadowed by the gateway's own endpoint gateway.metrics_path" in result.output


def test_missing_secret_and_bad_toml(tmp_path: Path, cli: Cli):
    """No client secret anywhere, or a file that is not TOML: exit 2 with the reason."""
    no_secret = GOOD_AS.replace('client_secret = "s3cret"\n', "") + "\n[[routes]]\npublic = true\n"
    result = cli("gateway", "--config", write(tmp_path, no_secret))
    assert result.exit_code == 2
    assert "KEYSTILE_GATEWAY_CLIENT_SECRET" in result.output
    result = cli("gateway", "--config", write(tmp_path, "[[routes]\n"))
    assert result.exit_code == 2
    assert "is not valid TOML" in result.output
