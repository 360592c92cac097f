"""OpenID Connect with relying-party libraries not written here, against a real `keystile serve`:

- Authlib's OpenID Connect client (its Starlette integration: discovery, PKCE, state and nonce
  kept in the RP's session, the ID token validated by Authlib: signature against the JWKS,
  iss, aud, exp, nonce, at_hash), then UserInfo, a refresh whose new ID token Authlib checks
  again, and RP-initiated logout with Authlib's logout_redirect and state check;
- openid-client 5 for Node (a certified RP library) driven step by step (tests/e2e/oidc_rp):
  the same flow, with its own ID token validation, UserInfo sub check and refresh checks.

The client and the user are made with the CLI flags docs/oidc.md shows.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import service_unavailable
from tests.e2e.conftest import RunKeystile, Server, ServerStarter

pytestmark = pytest.mark.process

RP_BASE = "http://127.0.0.1:9"  # the RP: never listened on, reached in-process or by reading
REDIRECT = RP_BASE + "/callback"
POST_LOGOUT = RP_BASE + "/signed-out"
PASSWORD = "wonderland-42"
RP_DIR = Path(__file__).parent / "oidc_rp"
_HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


@dataclass
class OidcSetup:
    server: Server
    client_id: str
    secret: str
    user_id: str


@pytest.fixture
def oidc(start_server: ServerStarter, run_keystile: RunKeystile) -> OidcSetup:
    """A server with an OpenID Connect client and a user with claims, made by the CLI."""
    server = start_server()

    def keystile(*args: str, stdin: str | None = None) -> dict[str, Any]:
        done = run_keystile(*args, "--db", str(server.db), "--json", stdin=stdin)
        assert done.returncode == 0, done.stderr
        return dict(json.loads(done.stdout))

    client = keystile(
        "client",
        "create",
        "rp",
        "--name",
        "Interop RP",
        "--grant",
        "authorization_code",
        "--grant",
        "refresh_token",
        "--redirect-uri",
        REDIRECT,
        "--post-logout-redirect-uri",
        POST_LOGOUT,
        "--scope",
        "openid profile email",
        "--id-token-alg",
        "ES256",
    )
    assert client["post_logout_redirect_uris"] == [POST_LOGOUT]
    user = keystile(
        "user",
        "create",
        "alice",
        "--password-stdin",
        "--name",
        "Alice Liddell",
        "--email",
        "alice@example.test",
        "--email-verified",
        stdin=PASSWORD + "\n",
    )
    assert user["email_verified"] is True
    return OidcSetup(server, "rp", client["client_secret"], user["user_id"])


def _fields(page: httpx.Response) -> dict[str, str]:
    assert page.status_code == 200, page.text
    return {k: unescape(v) for k, v in _HIDDEN.findall(page.text)}


async def sign_in_and_allow(browser: httpx.AsyncClient, url: str) -> str:
    """The user's browser between the RP's redirect and its callback: the login form, then
    the consent form. Returns the callback URL keystile redirects to."""
    page = await browser.get(url)
    r = await browser.post(
        "/login", data={**_fields(page), "username": "alice", "password": PASSWORD}
    )
    assert r.status_code == 303, r.text
    page = await browser.get(r.headers["location"])
    assert "Your email address" in page.text  # the consent page names the identity claims
    r = await browser.post("/oauth2/consent", data={**_fields(page), "decision": "allow"})
    assert r.status_code in (302, 303), r.text
    return str(r.headers["location"])


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def authlib_rp(oidc: OidcSetup) -> Any:
    """A Starlette app that signs people in with Authlib's OpenID Connect client."""
    from authlib.deprecate import AuthlibDeprecationWarning
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    with warnings.catch_warnings():
        # Authlib 1.9.10+ prefers the httpx2 fork and warns when it falls back to httpx.
        warnings.simplefilter("ignore", AuthlibDeprecationWarning)
        from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    oauth.register(
        "keystile",
        client_id=oidc.client_id,
        client_secret=oidc.secret,
        server_metadata_url=oidc.server.url + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": "openid profile email",
            "code_challenge_method": "S256",
            "trust_env": False,
        },
    )
    rp = oauth.create_client("keystile")

    async def login(request: Request) -> Response:
        return await rp.authorize_redirect(request, REDIRECT)  # type: ignore[no-any-return]

    async def callback(request: Request) -> Response:
        # Authlib checks state, redeems the code with the PKCE verifier, validates the ID
        # token (signature, iss, aud, exp, iat, nonce from the session, at_hash).
        token = await rp.authorize_access_token(request)
        info = await rp.userinfo(token=token)
        request.session["id_token"] = token["id_token"]
        refreshed = await rp.fetch_access_token(
            grant_type="refresh_token", refresh_token=token["refresh_token"]
        )
        # The refreshed ID token, validated by Authlib again (no nonce on refresh).
        again = await rp.parse_id_token(refreshed, nonce=None)
        return JSONResponse(
            {
                "claims": dict(token["userinfo"]),
                "userinfo": dict(info),
                "access_token": token["access_token"],
                "refreshed_claims": dict(again),
            }
        )

    async def logout(request: Request) -> Response:
        return await rp.logout_redirect(  # type: ignore[no-any-return]
            request,
            post_logout_redirect_uri=POST_LOGOUT,
            id_token_hint=request.session["id_token"],
        )

    async def signed_out(request: Request) -> Response:
        data = await rp.validate_logout_response(request)  # Authlib checks the state
        return JSONResponse({"signed_out": True, "back_to": data["post_logout_redirect_uri"]})

    return Starlette(
        routes=[
            Route("/login", login),
            Route("/callback", callback),
            Route("/logout", logout),
            Route("/signed-out", signed_out),
        ],
        middleware=[Middleware(SessionMiddleware, secret_key="rp-session-key", https_only=False)],
    )


class TestAuthlib:
    async def test_sign_in_userinfo_refresh_and_logout(self, oidc: OidcSetup) -> None:
        """Authlib's OIDC client completes the code flow and validates the ID token itself
        (OIDC Core §3.1.3.7, nonce and at_hash included), reads UserInfo (§5.3), refreshes
        (§12.2: same sub and auth_time) and logs out (RP-Initiated Logout §2, §3)."""
        server = oidc.server
        rp_app = authlib_rp(oidc)
        transport = httpx.ASGITransport(app=rp_app)
        async with (
            httpx.AsyncClient(transport=transport, base_url=RP_BASE) as rp,
            httpx.AsyncClient(base_url=server.url, trust_env=False) as browser,
        ):
            r = await rp.get("/login")
            assert r.status_code == 302
            authorize = r.headers["location"]
            sent = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
            assert sent["nonce"]
            assert sent["code_challenge_method"] == "S256"

            callback = await sign_in_and_allow(browser, authorize)
            assert callback.startswith(REDIRECT + "?")
            r = await rp.get(_path(callback))
            assert r.status_code == 200, r.text
            got = r.json()
            claims = got["claims"]
            assert claims["iss"] == server.url
            assert claims["sub"] == oidc.user_id
            assert claims["aud"] == oidc.client_id
            assert claims["nonce"] == sent["nonce"]
            assert "at_hash" in claims
            assert got["userinfo"] == {
                "sub": oidc.user_id,
                "name": "Alice Liddell",
                "preferred_username": "alice",
                "email": "alice@example.test",
                "email_verified": True,
            }
            again = got["refreshed_claims"]
            assert again["sub"] == claims["sub"]
            assert again["auth_time"] == claims["auth_time"]
            assert "nonce" not in again

            r = await rp.get("/logout")
            assert r.status_code == 302
            end_session = r.headers["location"]
            assert end_session.startswith(server.url + "/oauth2/logout?")
            r = await browser.get(end_session)
            assert r.status_code == 302, r.text
            assert r.headers["location"].startswith(POST_LOGOUT + "?state=")
            r = await rp.get(_path(r.headers["location"]))
            assert r.json() == {"signed_out": True, "back_to": POST_LOGOUT}
            # The keystile session ended: the next authorization asks to sign in again.
            page = await browser.get(authorize)
            assert 'action="/login"' in page.text


@pytest.fixture
def openid_client() -> Path:
    """tests/e2e/oidc_rp with its npm packages (installed by `make install`, or here)."""
    node = shutil.which("node")
    if node is None:
        service_unavailable("node is not installed (apt-get install nodejs npm)")
    if not (RP_DIR / "node_modules" / "openid-client").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            service_unavailable("npm is not installed (apt-get install npm)")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=RP_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            service_unavailable(f"npm ci in {RP_DIR} failed: {done.stderr[-2000:]}")
    return RP_DIR


def node_step(rp_dir: Path, **payload: Any) -> dict[str, Any]:
    done = subprocess.run(
        ["node", str(rp_dir / "rp.cjs")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


class TestOpenidClient:
    @pytest.mark.parametrize("alg", ["ES256", "RS256"])
    async def test_sign_in_userinfo_refresh_and_logout(
        self, oidc: OidcSetup, openid_client: Path, run_keystile: RunKeystile, alg: str
    ) -> None:
        """openid-client 5 (Node) discovers the provider, validates the authorization
        response (RFC 9207 iss), the ID token (signature, iss, aud, exp, nonce, at_hash:
        OIDC Core §3.1.3.7) and refuses a wrong nonce or a swapped access token; UserInfo
        answers for the same sub, a refresh brings a new ID token for the same sub, and
        its end-session URL signs the user out and returns to the RP with state. With
        id_token_signed_response_alg RS256 (OIDC Registration §2) the ID tokens come from
        an RS256 ID-token key, which the library finds in the JWKS."""
        server = oidc.server
        done = run_keystile(
            "client", "update", oidc.client_id, "--id-token-alg", alg, "--db", str(server.db)
        )
        assert done.returncode == 0, done.stderr
        common = {
            "id_token_alg": alg,
            "issuer": server.url,
            "client_id": oidc.client_id,
            "client_secret": oidc.secret,
            "redirect_uri": REDIRECT,
            "post_logout_redirect_uri": POST_LOGOUT,
            "scope": "openid profile email",
        }
        started = node_step(openid_client, step="start", **common)
        async with httpx.AsyncClient(base_url=server.url, trust_env=False) as browser:
            callback = await sign_in_and_allow(browser, started["url"])
            done = node_step(
                openid_client,
                step="finish",
                callback=callback,
                state=started["state"],
                nonce=started["nonce"],
                code_verifier=started["code_verifier"],
                **common,
            )
            claims = done["claims"]
            assert claims["sub"] == oidc.user_id
            assert claims["nonce"] == started["nonce"]
            assert claims["azp"] == oidc.client_id
            assert done["userinfo"]["email"] == "alice@example.test"
            assert done["userinfo"]["name"] == "Alice Liddell"
            assert "nonce mismatch" in done["wrong_nonce"]
            assert "at_hash mismatch" in done["wrong_at_hash"]
            refreshed = done["refreshed_claims"]
            assert refreshed["sub"] == claims["sub"]
            assert refreshed["auth_time"] == claims["auth_time"]
            assert done["refreshed_access_token"] != done["access_token"]

            r = await browser.get(done["end_session_url"])
            assert r.status_code == 302, r.text
            assert r.headers["location"] == POST_LOGOUT + "?state=bye"
            page = await browser.get(started["url"])
            assert 'action="/login"' in page.text
