"""Every code block in README.md and docs/ is marked, and the runnable ones run, as printed.

See tests/e2e/doc_blocks.py for the markers. Shell blocks run in bash with the installed
`keystile` on PATH, on a database of their own (SQLite in tmp_path) or against a real
`keystile serve`; Python blocks are executed; examples/ files are run by test_examples.py.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import DemoServer
from tests.e2e.doc_blocks import EXAMPLES, ROOT, Block, all_blocks, doc_block, doc_files
from tests.e2e.doc_shell import run_block, shell_env

pytestmark = pytest.mark.process

_NAME = re.compile(r"""["']([\w.-]+)["']""")  # a string literal that may name a block


def _names_used_by_tests() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("*.py"):
        if path.name != "doc_blocks.py":
            names.update(_NAME.findall(path.read_text()))
    return names


class TestMarkers:
    def test_every_block_is_marked(self) -> None:
        """No fenced block in README.md or docs/ goes without a doc-test, include or
        not-run marker on the line before it."""
        blocks = all_blocks()
        assert len(blocks) > 30  # the parser found the blocks at all
        unmarked = [f"{b.where} ({b.lang or 'no language'})" for b in blocks if b.kind is None]
        assert unmarked == [], "blocks without a marker:\n" + "\n".join(unmarked)

    def test_every_doc_test_name_is_run_by_a_test(self) -> None:
        """Each doc-test name is unique and some test names it (``doc_block(NAME)``, or in a
        parametrize list)."""
        names = [b.arg for b in all_blocks() if b.kind == "doc-test"]
        assert len(names) == len(set(names)), sorted(names)
        assert set(names) - _names_used_by_tests() == set()

    def test_includes_equal_their_files(self) -> None:
        """An include block is its examples/ file byte for byte, so the docs show what the
        tests run."""
        includes = [b for b in all_blocks() if b.kind == "include"]
        assert includes
        for block in includes:
            path = ROOT / block.arg
            assert path.parent == EXAMPLES, block.where
            assert path.is_file(), block.where
            assert block.text == path.read_text(), f"{block.where} differs from {block.arg}"

    def test_every_example_is_shown_or_named_in_the_docs(self) -> None:
        """Every file under examples/ is included or linked somewhere in the docs."""
        text = "".join(path.read_text() for path in doc_files())
        missing = [p.name for p in EXAMPLES.iterdir() if f"examples/{p.name}" not in text]
        assert missing == []

    def test_not_run_blocks_say_why_and_parse(self) -> None:
        """A not-run block gives a reason; JSON, TOML and YAML ones are still valid."""
        for block in all_blocks():
            if block.kind != "not-run":
                continue
            assert len(block.arg) > 10, block.where
            if block.lang == "json":
                json.loads(block.text)
            elif block.lang == "toml":
                tomllib.loads(block.text)
            elif block.lang == "yaml":
                assert yaml.safe_load(block.text), block.where


# -- shell blocks against a database of their own ------------------------------------------


def run_ok(block: Block, cwd: Path, **env: str) -> str:
    ran = run_block(block.text, cwd, env=shell_env(**env))
    assert ran.returncode == 0, f"{block.where} failed ({ran.returncode}):\n{ran.output}"
    return ran.output


def keystile_json(cwd: Path, *args: str) -> Any:
    ran = run_block(f"keystile {' '.join(args)} --json\n", cwd)
    assert ran.returncode == 0, ran.output
    return json.loads(ran.output)


def test_readme_clients(tmp_path: Path) -> None:
    """README's client and resource-server commands run as printed (``.venv/bin/keystile``
    from the checkout's root) and leave billing disabled, its resource server registered."""
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "keystile").symlink_to(shell_env()["PATH"].split(os.pathsep)[0] + "/keystile")
    output = run_ok(doc_block("readme-clients"), tmp_path)
    assert '"client_secret": "ks_cs_' in output
    clients = {c["client_id"]: c for c in keystile_json(tmp_path, "client", "list")}
    assert clients["billing"]["enabled"] is False
    assert clients["billing-api"]["enabled"] is True
    resources = keystile_json(tmp_path, "resource", "list")
    assert [r["identifier"] for r in resources] == ["https://billing-api.internal"]


def test_readme_people(tmp_path: Path) -> None:
    """README's user commands run as printed, the password typed at the prompt."""
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "keystile").symlink_to(shell_env()["PATH"].split(os.pathsep)[0] + "/keystile")
    run_ok(doc_block("readme-people"), tmp_path)
    users = keystile_json(tmp_path, "user", "list")
    assert [u["username"] for u in users] == ["alice"]
    assert {c["client_id"] for c in keystile_json(tmp_path, "client", "list")} == {"spa"}


@pytest.mark.parametrize(
    ("name", "setup"),
    [
        ("sdk-credentials", ""),
        ("introspection-resource", ""),
        ("users-clients", ""),
        ("users-admin", ""),
        ("admin-role", ""),
        ("tokens-jwt-clients", 'keystile client create billing --scope "invoices:read"\n'),
        (
            "tokens-signed-answers",
            "keystile client create reports-rs --grant-type none\n"
            "keystile resource create https://reports.internal --client reports-rs\n",
        ),
        ("tokens-private-key-jwt", 'keystile client create billing --scope "invoices:read"\n'),
        ("oidc-setup", ""),
        ("mcp-setup", ""),
        ("sender-cli", ""),  # docs/sender-constrained.md
    ],
)
def test_cli_block(tmp_path: Path, name: str, setup: str) -> None:
    """The docs' admin commands run as printed on a fresh database (after the setup the
    text before them assumes), each exiting 0."""
    if name == "tokens-private-key-jwt":
        for stem in ("reports-api", "billing"):
            (tmp_path / f"{stem}.jwks.json").write_text(json.dumps(public_jwks()))
    if setup:
        ran = run_block(setup, tmp_path)
        assert ran.returncode == 0, ran.output
    run_ok(doc_block(name), tmp_path, PASSWORD="a long enough password")


def public_jwks() -> dict[str, Any]:
    """A JWKS with one fresh public EC key, as a client using private_key_jwt publishes."""
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-256")
    return {"keys": [key.as_dict(private=False, kid="k1")]}


# -- the README flow against a real server -------------------------------------------------


def test_readme_try_it(demo_server: DemoServer, tmp_path: Path) -> None:
    """README's "Try it" blocks, as printed, against a real `keystile serve`: the secrets
    pasted into variables, a token, its introspection (active), its revocation, and then
    {"active":false}."""
    server, demo = demo_server.server, demo_server.demo

    def block(name: str) -> str:
        return doc_block(name).text.replace("http://127.0.0.1:8000", server.url)

    secrets = (
        block("readme-secrets")
        .replace("APP_SECRET=ks_cs_...", f"APP_SECRET={demo.app.secret}")
        .replace("RS_SECRET=ks_cs_...", f"RS_SECRET={demo.rs.secret}")
    )
    assert "ks_cs_..." not in secrets
    prefix = secrets + "export APP_SECRET RS_SECRET\n"

    ran = run_block(prefix + block("readme-token"), tmp_path, env=shell_env())
    assert ran.returncode == 0, ran.output
    issued = json.loads(ran.output.strip().splitlines()[0])
    assert issued["token_type"] == "Bearer"
    assert issued["scope"] == "read"
    token = issued["access_token"]

    env = shell_env(ACCESS_TOKEN=token)
    ran = run_block(prefix + block("readme-introspect"), tmp_path, env=env)
    assert ran.returncode == 0, ran.output
    claims = json.loads(ran.output)
    assert claims["active"] is True
    assert claims["client_id"] == "demo-app"
    assert claims["aud"] == "https://api.example.test"
    assert claims["iss"] == server.url

    ran = run_block(prefix + block("readme-revoke"), tmp_path, env=env)
    assert ran.returncode == 0, ran.output
    assert json.loads(ran.output) == {"active": False}


def test_events_curl(demo_server: DemoServer, tmp_path: Path) -> None:
    """docs/events.md's curl follows the real event stream and sees ``ready`` first
    (stopped after two seconds by curl's own --max-time)."""
    server, demo = demo_server.server, demo_server.demo
    text = doc_block("events-curl").text.replace("http://127.0.0.1:8000", server.url)
    text = text.replace("curl -N", "curl -sS --max-time 2 -N")
    ran = run_block(text, tmp_path, env=shell_env(RS_SECRET=demo.rs.secret))
    assert ran.returncode == 28, ran.output  # curl's "operation timed out": it was following
    assert "event: ready" in ran.output
    assert ran.output.lstrip().startswith("retry: ")


# -- Python blocks ---------------------------------------------------------------------------


async def test_sdk_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/sdk.md's tuning snippet builds a validator with exactly those bounds."""
    from keystile.resource import TokenValidator

    monkeypatch.setenv("ORDERS_API_SECRET", "ks_cs_example")
    namespace: dict[str, Any] = {"os": os, "TokenValidator": TokenValidator}
    exec(doc_block("sdk-tuning").text, namespace)  # noqa: S102 - the documented snippet
    validator = namespace["validator"]
    try:
        cache = validator.cache
        assert (cache.max_ttl, cache.negative_ttl, cache.degraded_ttl) == (30, 2, 0)
        assert cache.max_entries == 50_000
    finally:
        await validator.close()


async def test_sdk_shared_cache(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """docs/sdk.md's shared-cache snippet builds a validator sharing answers through a
    real Redis, which it can reach."""
    from keystile.resource import TokenValidator
    from keystile.resource.shared_cache import SharedCache

    monkeypatch.setenv("ORDERS_API_SECRET", "ks_cs_example")
    monkeypatch.setenv("REDIS_URL", redis_url)
    namespace: dict[str, Any] = {"os": os, "TokenValidator": TokenValidator}
    exec(doc_block("sdk-shared-cache").text, namespace)  # noqa: S102 - the documented snippet
    validator = namespace["validator"]
    try:
        assert isinstance(validator.shared, SharedCache)
        assert await validator.shared.redis.ping()
    finally:
        await validator.close()
        await validator.shared.redis.aclose()


async def test_sdk_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/sdk.md's middleware snippet, around a plain Starlette app and the FastAPI
    example's metadata: no token is 401 with the challenge, a token is let in, and the
    metadata document stays public."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from keystile.resource.metadata import metadata_route
    from keystile.testing import StaticValidator

    monkeypatch.syspath_prepend(str(EXAMPLES))
    import fastapi_app

    metadata = fastapi_app.metadata

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"sub": principal_of(request).sub})

    validator = StaticValidator(audience=fastapi_app.API)
    namespace: dict[str, Any] = {
        "app": Starlette(routes=[Route("/me", whoami), metadata_route(metadata)]),
        "validator": validator,
        "metadata": metadata,
    }
    exec(doc_block("sdk-middleware").text, namespace)  # noqa: S102 - the documented snippet
    principal_of = namespace["principal_of"]
    token = validator.add(sub="alice", scopes="orders:read", aud=fastapi_app.API)
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
        bare = await client.get("/me")
        assert bare.status_code == 401
        assert bare.headers["www-authenticate"].startswith('Bearer realm="orders"')
        ok = await client.get("/me", headers={"authorization": f"Bearer {token}"})
        assert ok.json() == {"sub": "alice"}
        assert (await client.get(metadata.path)).status_code == 200
