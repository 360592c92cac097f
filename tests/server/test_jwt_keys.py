"""Signing keys: the JWKS endpoint (RFC 7517 §5), metadata, the key-encryption key and the CLI."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from keystile.cli import app as cli_app
from keystile.server.app import create_app
from keystile.settings import ServerSettings
from tests.conftest import ISSUER
from tests.server.jwt_support import JWKS_PATH, METADATA, ClientKey, jwks_text

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k"}


class TestJwksEndpoint:
    async def test_public_keys_only_and_cacheable(self, http):
        """The JWKS holds the active key's public JWK, kid = RFC 7638 thumbprint (RFC 7517 §5)."""
        r = await http.get(JWKS_PATH)

        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "public, max-age=300"
        [jwk] = r.json()["keys"]
        assert not PRIVATE_MEMBERS & set(jwk)
        assert jwk["use"] == "sig"
        assert jwk["alg"] == "ES256"
        assert jwk["kid"] == ECKey.import_key(jwk).thumbprint()

    async def test_max_age_follows_settings(self, settings, store, clock):
        """Cache-Control max-age is the jwks_max_age setting (RFC 9111 §5.2.2.1)."""
        app = create_app(settings.model_copy(update={"jwks_max_age": 60}), store=store, clock=clock)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as h:
            r = await h.get(JWKS_PATH)

        assert r.headers["cache-control"] == "public, max-age=60"

    async def test_first_key_is_made_once(self, http, store):
        """The first start makes exactly one active ES256 key, however often the keys are read."""
        for _ in range(3):
            await http.get(JWKS_PATH)

        [key] = await store.list_signing_keys()
        assert (key.state, key.alg) == ("active", "ES256")

    async def test_metadata_names_the_jwks(self, http):
        """Metadata's jwks_uri points at the JWKS, under the issuer (RFC 8414 §2)."""
        body = (await http.get(METADATA)).json()

        assert body["jwks_uri"] == ISSUER + JWKS_PATH
        assert body["introspection_signing_alg_values_supported"] == ["ES256"]


class TestPostgresWithoutKek:
    async def test_jwt_features_off_and_opaque_unaffected(self, pg_url, clock):
        """PostgreSQL without a KEK: no key, an empty JWKS, JWT issuance 500, opaque tokens fine."""
        from keystile import admin
        from keystile.server.app import open_store

        settings = ServerSettings(db=pg_url, issuer=ISSUER, purge_interval=0)
        store = open_store(settings)
        await store.open()
        try:
            _, jwt_secret = await admin.create_client(
                store, clock, client_id="j", default_audience=[ISSUER], token_format="jwt"
            )
            _, secret = await admin.create_client(store, clock, client_id="o")
            app = create_app(settings, store=store, clock=clock)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as h:
                assert (await h.get(JWKS_PATH)).json() == {"keys": []}
                cc = {"grant_type": "client_credentials"}
                r = await h.post("/oauth2/token", data=cc, auth=("j", jwt_secret))
                assert r.status_code == 500
                assert r.json()["error"] == "server_error"
                r = await h.post("/oauth2/token", data=cc, auth=("o", secret))
                assert r.status_code == 200
            assert await store.list_signing_keys() == []
        finally:
            await store.close()


# -- the command line ---------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run `keystile …` in this process on a database in tmp_path, without KEYSTILE_* vars."""
    for key in list(os.environ):
        if key.startswith("KEYSTILE_"):
            monkeypatch.delenv(key)
    db = str(tmp_path / "cli.db")
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
        # --db right after the command: the arguments may end with "--" and a kid.
        return runner.invoke(cli_app, [*args[:2], "--db", db, *args[2:]], env=env)

    return invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, (result.output, result.stderr, repr(result.exception))
    return json.loads(result.output)


class TestKeyCommands:
    def test_create_rotate_retire(self, cli):
        """create makes a next key, rotate activates it, retire unpublishes an unused key."""
        ok_json(cli("db", "upgrade", "--json"))
        assert ok_json(cli("key", "list", "--json")) == []
        [first] = ok_json(cli("key", "create", "--json"))
        assert (first["state"], first["alg"], first["published"]) == ("next", "ES256", True)

        active, *_ = ok_json(cli("key", "rotate", "--json"))
        assert (active["kid"], active["state"]) == (first["kid"], "active")

        [upcoming] = ok_json(cli("key", "create", "--alg", "RS256", "--json"))
        active, retired = ok_json(cli("key", "rotate", "--json"))
        assert (active["kid"], active["alg"]) == (upcoming["kid"], "RS256")
        assert (retired["kid"], retired["state"]) == (first["kid"], "retired")
        assert retired["published"] is True  # answers it signed may still be checked

        [spare] = ok_json(cli("key", "create", "--alg", "EdDSA", "--json"))
        # A kid (an RFC 7638 thumbprint, base64url) may start with "-": "--" keeps it an argument.
        [gone] = ok_json(cli("key", "retire", "--json", "--", spare["kid"]))
        assert (gone["state"], gone["published"]) == ("retired", False)
        states = {k["kid"]: k["state"] for k in ok_json(cli("key", "list", "--json"))}
        assert states == {
            first["kid"]: "retired",
            upcoming["kid"]: "active",
            spare["kid"]: "retired",
        }

    def test_refusals(self, cli):
        """Retiring the active key exits 4, an unknown kid 3, an unknown algorithm 2."""
        [key] = ok_json(cli("key", "create", "--json"))
        ok_json(cli("key", "rotate", "--json"))

        assert cli("key", "retire", "--", key["kid"]).exit_code == 4
        assert cli("key", "retire", "no-such-kid").exit_code == 3
        assert cli("key", "create", "--alg", "HS256").exit_code == 2

    def test_configured_kek(self, cli, tmp_path):
        """A KEK from the environment is used as given: no key file appears (docs/tokens.md)."""
        kek = base64.b64encode(os.urandom(32)).decode()

        ok_json(cli("key", "create", "--json", env={"KEYSTILE_KEY_ENCRYPTION_KEY": kek}))

        assert not (tmp_path / "cli.db.kek").exists()

    @pytest.mark.parametrize(
        "env",
        [
            {"KEYSTILE_KEY_ENCRYPTION_KEY": "not base64!"},
            {"KEYSTILE_KEY_ENCRYPTION_KEY": base64.b64encode(b"short").decode()},
            {"KEYSTILE_KEY_ENCRYPTION_KEY_FILE": "/nonexistent/kek"},
        ],
        ids=["not base64", "too short", "missing file"],
    )
    def test_bad_kek_is_a_settings_error(self, cli, env):
        """A KEK that is not 32 base64-encoded bytes stops the command with exit 2."""
        result = cli("key", "create", env=env)

        assert result.exit_code == 2
        assert "key" in result.output


class TestClientAndResourceOptions:
    def test_token_format_and_private_key_jwt(self, cli, tmp_path):
        """--token-format and --auth-method private_key_jwt --jwks FILE are stored and shown."""
        jwks = tmp_path / "client.jwks"
        jwks.write_text(jwks_text(ClientKey()))
        created = ok_json(cli("client", "create", "svc", "--token-format", "jwt", "--json"))
        assert created["token_format"] == "jwt"

        pkj = ["--auth-method", "private_key_jwt", "--jwks", str(jwks), "--json"]
        updated = ok_json(cli("client", "update", "svc", *pkj))

        assert updated["token_endpoint_auth_method"] == "private_key_jwt"
        assert updated["jwks"] == json.loads(jwks.read_text())
        made = ok_json(cli("client", "create", "svc2", *pkj))
        assert "client_secret" not in made

    @pytest.mark.parametrize(
        ("jwks", "message"),
        [
            (None, "needs the client's public keys"),
            ({"keys": []}, "non-empty"),
            ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "private key material"),
            ("not json", "not JSON"),
        ],
        ids=["missing", "empty", "secret key", "garbage"],
    )
    def test_bad_jwks_is_refused(self, cli, tmp_path, jwks, message):
        """private_key_jwt needs a JWKS of public keys only (RFC 7523 §2.2, RFC 7517 §5)."""
        args = ["client", "create", "svc", "--auth-method", "private_key_jwt"]
        if jwks is not None:
            path = tmp_path / "bad.jwks"
            path.write_text(jwks if isinstance(jwks, str) else json.dumps(jwks))
            args += ["--jwks", str(path)]

        result = cli(*args)

        assert result.exit_code == 2
        assert message in result.output

    def test_introspection_response_setting(self, cli):
        """--introspection-response json|jwt|jwt-required is stored, others exit 2 (RFC 9701)."""
        uri = "https://api.example.test"
        made = ok_json(cli("resource", "create", uri, "--introspection-response", "jwt", "--json"))
        assert made["introspection_response"] == "jwt"

        updated = ok_json(
            cli("resource", "update", uri, "--introspection-response", "jwt-required", "--json")
        )

        assert updated["introspection_response"] == "jwt-required"
        assert cli("resource", "update", uri, "--introspection-response", "xml").exit_code == 2
