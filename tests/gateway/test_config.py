"""Gateway configuration: validation, messages and where the client secret comes from."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystile.errors import ConfigurationError
from keystile.gateway.config import SECRET_ENV, load_config, parse_config

BASE = {
    "authorization_server": {"issuer": "http://127.0.0.1:9", "client_id": "gw"},
    "routes": [{"path": "/", "public": True}],
}


def problems(data: dict[str, object]) -> str:
    with pytest.raises(ConfigurationError) as info:
        parse_config(data)
    return str(info.value)


def test_bad_urls():
    """Only absolute http(s) URLs without credentials, query or fragment are accepted."""
    for url in ("127.0.0.1:9000", "ftp://x", "http://u:p@x", "http://x/?q=1", "http://x:99999"):
        data = {**BASE, "routes": [{"path": "/", "upstream": url}]}
        assert "routes[0].upstream" in problems(data)


def test_paths_are_normalized_and_checked():
    """A trailing slash is dropped; dot segments and '%' are refused."""
    config = parse_config({**BASE, "routes": [{"path": "/api/", "public": True}]})
    assert config.routes[0].path == "/api"
    for path in ("api", "/a/../b", "/a%2fb", "/a//b"):
        assert "routes[0].path" in problems({**BASE, "routes": [{"path": path}]})


def test_identity_header_names():
    """Identity header names must be valid, distinct and not ones the gateway manages."""
    assert "not a valid header name" in problems({**BASE, "identity_headers": {"subject": "a b"}})
    assert "manages" in problems({**BASE, "identity_headers": {"subject": "Authorization"}})
    msg = problems({**BASE, "identity_headers": {"subject": "X-Id", "scope": "x-id"}})
    assert "must all differ" in msg


def test_identity_header_names_compare_as_wsgi_sees_them():
    """X-Id and x_id are one header to a CGI/WSGI upstream (HTTP_X_ID): they must differ
    after folding, and X_Forwarded_For is as reserved as X-Forwarded-For."""
    msg = problems({**BASE, "identity_headers": {"subject": "X-Id", "scope": "x_ID"}})
    assert "must all differ" in msg
    assert "manages" in problems({**BASE, "identity_headers": {"subject": "X_Forwarded_For"}})


def secret_file(tmp_path: Path, **section: object) -> Path:
    lines = ["[authorization_server]", 'issuer = "http://127.0.0.1:9"', 'client_id = "gw"']
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in section.items()]
    lines += ["[[routes]]", "public = true"]
    path = tmp_path / "gw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_secret_sources(tmp_path: Path):
    """The secret comes from the file, a file it names (relative to it), or the environment,
    which wins; it never shows in the config's repr."""
    inline = load_config(secret_file(tmp_path, client_secret="inline"), environ={})
    assert inline.client_secret == "inline"
    assert "inline" not in repr(inline)
    (tmp_path / "rs.secret").write_text("from-file\n")
    named = load_config(secret_file(tmp_path, client_secret_file="rs.secret"), environ={})
    assert named.client_secret == "from-file"
    env = load_config(secret_file(tmp_path, client_secret="inline"), environ={SECRET_ENV: "env"})
    assert env.client_secret == "env"
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(secret_file(tmp_path, client_secret_file="missing"), environ={})
