"""An MCP server protected by keystile, used by the `mcp` SDK's own OAuth client, all in real
processes: `keystile serve` (open dynamic registration), the example MCP server under
uvicorn, and in the test process the SDK's client, which discovers the AS (RFC 9728, then
RFC 8414), registers itself (RFC 7591), runs the code flow with PKCE and ``resource``
(RFC 7636, RFC 8707) through keystile's login and consent pages, and calls a tool. The
token revoked (RFC 7009), the MCP server refuses it within moments: the event stream, not
the 60-second cache ceiling."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider, TokenStorage
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

from tests.conftest import Creds
from tests.e2e.conftest import (
    LOOPBACK,
    RunKeystile,
    Server,
    ServerStarter,
    clean_env,
    free_port,
    stop_process,
    wait_port,
)
from tests.e2e.doc_blocks import EXAMPLES, doc_block
from tests.server.document_server import DocumentServer, make_pki

pytestmark = pytest.mark.process

REDIRECT = "http://127.0.0.1:8765/callback"  # never listened on: the handler reads Location
PASSWORD = "wonderland-42"
_HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


@dataclass
class McpStack:
    """The AS and the MCP server, both real processes, and what was set up on them."""

    server: Server
    mcp_url: str
    mcp_proc: subprocess.Popen[bytes]
    mcp_log: Path
    rs: Creds  # the MCP server's introspection credentials

    @property
    def metadata_url(self) -> str:
        parts = urlsplit(self.mcp_url)
        return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path}"


StackFactory = Callable[..., McpStack]


@pytest.fixture
def make_stack(
    start_server: ServerStarter, run_keystile: RunKeystile, tmp_path: Path
) -> Iterator[StackFactory]:
    """keystile serve with docs/mcp.md's configuration (open registration) plus ``extra``
    TOML, a user and the MCP server's resource server made with the CLI, and
    examples/mcp_server.py under uvicorn; the MCP server is stopped at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def make(extra: str = "") -> McpStack:
        config = tmp_path / "keystile.toml"
        # docs/mcp.md's settings, as printed
        config.write_text(doc_block("mcp-as-config").text + extra)
        server = start_server("--config", str(config), "--log-level", "warning")
        port = free_port()
        mcp_url = f"http://{LOOPBACK}:{port}/mcp"

        def keystile(*args: str, stdin: str | None = None) -> str:
            done = run_keystile(*args, "--db", str(server.db), stdin=stdin)
            assert done.returncode == 0, done.stderr
            return done.stdout

        made = keystile("client", "create", "mcp-rs", "--grant-type", "none", "--json")
        secret = json.loads(made)["client_secret"]
        keystile("resource", "create", mcp_url, "--client", "mcp-rs")
        keystile("user", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")

        log = tmp_path / "mcp-server.log"
        env = clean_env(ISSUER=server.url, MCP_URL=mcp_url, MCP_RS_SECRET=secret)
        argv = [sys.executable, "-m", "uvicorn", "--factory", "mcp_server:main"]
        argv += ["--host", LOOPBACK, "--port", str(port), "--log-level", "warning"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=EXAMPLES,
            )
        procs.append(proc)
        wait_port(proc, port, log)
        return McpStack(server, mcp_url, proc, log, Creds("mcp-rs", secret))

    yield make
    for proc in procs:
        stop_process(proc)


@dataclass
class MemoryStorage(TokenStorage):
    """The SDK's TokenStorage protocol, in memory."""

    tokens: OAuthToken | None = None
    client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class Person:
    """Alice at her browser: signs in and allows, once; a second sign-in is refused, so a
    call after revocation cannot quietly get a new token."""

    as_url: str
    authorize_urls: list[str] = field(default_factory=list)
    callback: str | None = None

    async def redirect_handler(self, url: str) -> None:
        self.authorize_urls.append(url)
        if len(self.authorize_urls) > 1:
            raise RuntimeError("the client asked Alice to sign in again")
        async with httpx.AsyncClient(base_url=self.as_url, trust_env=False) as browser:
            page = await browser.get(url)
            assert page.status_code == 200, page.text
            form = {k: unescape(v) for k, v in _HIDDEN.findall(page.text)}
            r = await browser.post(
                "/login", data={**form, "username": "alice", "password": PASSWORD}
            )
            assert r.status_code == 303, r.text
            page = await browser.get(r.headers["location"])
            assert page.status_code == 200, page.text
            form = {k: unescape(v) for k, v in _HIDDEN.findall(page.text)}
            r = await browser.post("/oauth2/consent", data={**form, "decision": "allow"})
            assert r.status_code in (302, 303), r.text
            self.callback = r.headers["location"]

    async def callback_handler(self) -> tuple[str, str | None]:
        assert self.callback is not None
        assert self.callback.startswith(REDIRECT + "?")
        query = {k: v[0] for k, v in parse_qs(urlsplit(self.callback).query).items()}
        return query["code"], query.get("state")


@dataclass
class McpClient:
    """The SDK's OAuth client for one MCP server, keeping its registration and tokens in
    memory, with Alice at the browser."""

    stack: McpStack
    client_metadata_url: str | None = None
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    person: Person = field(init=False)

    def __post_init__(self) -> None:
        self.person = Person(self.stack.server.url)

    def provider(self) -> OAuthClientProvider:
        return OAuthClientProvider(
            server_url=self.stack.mcp_url,
            client_metadata=OAuthClientMetadata(
                client_name="notes agent",
                redirect_uris=[REDIRECT],  # type: ignore[list-item]
                grant_types=["authorization_code", "refresh_token"],
                response_types=["code"],
                token_endpoint_auth_method="none",
                scope="notes:read",
            ),
            storage=self.storage,
            redirect_handler=self.person.redirect_handler,
            callback_handler=self.person.callback_handler,
            client_metadata_url=self.client_metadata_url,
        )

    async def call_tool(self, text: str, provider: OAuthClientProvider | None = None) -> str:
        """One MCP session over streamable HTTP: initialize, then call add_note (with a new
        provider, loading what the storage holds, unless one is given)."""
        auth = provider if provider is not None else self.provider()
        with anyio.fail_after(30):
            async with (
                httpx.AsyncClient(auth=auth, timeout=30, trust_env=False) as http,
                streamable_http_client(self.stack.mcp_url, http_client=http) as (read, write, _),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                result = await session.call_tool("add_note", {"text": text})
        assert not result.isError, result
        return result.content[0].text  # type: ignore[union-attr,no-any-return]

    def check_token(self) -> tuple[str, str]:
        """The flow's traces at the AS: resource and PKCE in the authorization request, a
        token for the MCP server naming Alice. Returns (client_id, access token)."""
        assert self.storage.client_info is not None
        assert self.storage.tokens is not None
        (authorize,) = self.person.authorize_urls
        params = parse_qs(urlsplit(authorize).query)
        assert params["resource"] == [self.stack.mcp_url]
        assert params["code_challenge_method"] == ["S256"]
        access_token = self.storage.tokens.access_token
        info = self.stack.server.introspect(self.stack.rs, access_token).json()
        assert info["active"] is True
        assert info["aud"] == self.stack.mcp_url  # RFC 8707: the resource the client asked for
        assert info["username"] == "alice"
        return self.storage.client_info.client_id, access_token

    async def revoke_and_see_refused(self) -> None:
        """Revoke the access token as the client it was issued to (RFC 7009 §2.1); the MCP
        server refuses it within moments with the resource_metadata challenge, and the
        client's next call goes back to the AS, where Alice does not sign in again."""
        client_id, access_token = self.check_token()
        stack = self.stack
        r = stack.server.http.post(
            "/oauth2/revoke", data={"token": access_token, "client_id": client_id}
        )
        assert r.status_code == 200, r.text
        revoked_at = time.monotonic()
        async with httpx.AsyncClient(trust_env=False, timeout=5) as raw:
            while True:
                r = await raw.post(
                    stack.mcp_url,
                    headers={
                        "authorization": f"Bearer {access_token}",
                        "accept": "application/json, text/event-stream",
                        "content-type": "application/json",
                    },
                    json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                )
                if r.status_code == 401 or time.monotonic() - revoked_at > 5:
                    break
                await anyio.sleep(0.005)
        elapsed = time.monotonic() - revoked_at
        assert r.status_code == 401, r.text
        # Well under the cache's 60 s ceiling: the revocation event evicted the token.
        assert elapsed < 2.0, elapsed
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert f'resource_metadata="{stack.metadata_url}"' in challenge

        with pytest.raises(BaseExceptionGroup) as caught:
            await self.call_tool("again")
        assert caught.group_contains(RuntimeError, match="sign in again", depth=None)
        assert len(self.person.authorize_urls) == 2


class TestMcpClient:
    async def test_discover_register_authorize_call_and_revoke(
        self, make_stack: StackFactory
    ) -> None:
        """The SDK's OAuth client finds the AS through the MCP server's 401 and its RFC 9728
        document, registers (RFC 7591), signs Alice in with PKCE and resource (RFC 8707),
        and calls a tool; once the token is revoked (RFC 7009) the MCP server answers 401
        with the resource_metadata challenge (RFC 9728 §5.1) and the client's next call
        fails."""
        client = McpClient(make_stack())
        assert await client.call_tool("buy milk") == "noted for alice: buy milk"
        client_id, _ = client.check_token()
        assert client_id.startswith("dcr_")  # registered at the open registration endpoint
        await client.revoke_and_see_refused()

    async def test_refreshes_an_expired_access_token_without_a_new_sign_in(
        self, make_stack: StackFactory
    ) -> None:
        """With 2 s access tokens, the SDK's client (one provider across two sessions) sees
        its token expired and uses its refresh token (RFC 6749 §6): keystile rotates the
        refresh token, the new access token still names Alice and the MCP server (RFC 8707),
        the tool call succeeds, and Alice is not sent to the sign-in page again."""
        client = McpClient(make_stack("access_token_ttl = 2\n"))
        provider = client.provider()
        assert await client.call_tool("one", provider) == "noted for alice: one"
        first = client.storage.tokens
        assert first is not None
        assert first.refresh_token
        assert first.expires_in == 2
        await anyio.sleep(2.5)
        assert await client.call_tool("two", provider) == "noted for alice: two"
        second = client.storage.tokens
        assert second is not None
        assert second.access_token != first.access_token
        assert second.refresh_token
        assert second.refresh_token != first.refresh_token
        assert len(client.person.authorize_urls) == 1  # no second sign-in
        info = client.stack.server.introspect(client.stack.rs, second.access_token).json()
        assert info["active"] is True
        assert info["aud"] == client.stack.mcp_url
        assert info["username"] == "alice"
        # The rotated refresh token is spent (RFC 9700 §4.14.2: rotation); its successor is live.
        server, rs = client.stack.server, client.stack.rs
        assert server.introspect(rs, second.refresh_token).json()["active"] is True
        assert server.introspect(rs, first.refresh_token).json() == {"active": False}

    async def test_client_id_metadata_document(
        self, make_stack: StackFactory, tmp_path: Path
    ) -> None:
        """With client ID metadata documents on, the SDK's client names itself by its
        document's https URL instead of registering; keystile fetches the document, and the
        rest of the flow, the tool call and the revocation go as with a registration."""
        (tmp_path / "pki").mkdir()
        pki = make_pki(tmp_path / "pki")
        docs = DocumentServer(pki)
        await docs.start()
        try:
            stack = make_stack(
                "client_metadata_documents = true\n"
                "client_metadata_documents_allow_private = true  # a loopback document server\n"
                f'client_metadata_documents_ca_file = "{pki.ca}"\n'
            )
            url = docs.document(
                "/notes-agent.json",
                client_name="notes agent",
                redirect_uris=[REDIRECT],
                scope="notes:read",
            )
            client = McpClient(stack, client_metadata_url=url)
            assert await client.call_tool("buy milk") == "noted for alice: buy milk"
            client_id, _ = client.check_token()
            assert client_id == url
            assert docs.hits["/notes-agent.json"] >= 1
            await client.revoke_and_see_refused()
        finally:
            await docs.stop()
