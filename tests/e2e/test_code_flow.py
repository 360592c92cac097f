"""The authorization code flow as real clients run it, against a real `keystile serve`:

- a real browser (Debian's headless Chromium driven by Playwright) follows the link the demo
  setup prints, signs in, consents and lands on the demo callback page; the code is then
  exchanged with PKCE and introspection names the user;
- Authlib's OAuth 2.0 client (code flow with PKCE, refresh, revocation), a client no one
  here wrote, with introspection changing as it goes.
"""

from __future__ import annotations

import json
import re
import warnings
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.conftest import TOKEN
from tests.e2e.conftest import DemoServer, RunKeystile, Server
from tests.e2e.test_readme_flow import printed_curl_commands, run_curl

pytestmark = pytest.mark.process

_USER = re.compile(r"^\s+user\s+(\S+)\s+password\s+(\S+)$", re.MULTILINE)
_OPEN = re.compile(r"^\s+open\s+(\S+)$", re.MULTILINE)
_VERIFIER = re.compile(r'code_verifier=([A-Za-z0-9_\-.~]+)"')
_HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


class TestBrowser:
    def test_newcomer_signs_in_consents_and_gets_a_user_token(
        self, demo_server: DemoServer, chromium: Any, curl: str
    ) -> None:
        """The path docs/users.md promises a newcomer: the printed link, the demo user, the
        consent page, the code on the callback page (with state and RFC 9207 iss), the PKCE
        exchange, and introspection that names the user (RFC 7662 §2.2)."""
        server, demo = demo_server.server, demo_server.demo
        out = server.stdout
        user, password = _USER.search(out).groups()  # type: ignore[union-attr]
        authorize = _OPEN.search(out).group(1)  # type: ignore[union-attr]
        verifier = _VERIFIER.search(out).group(1)  # type: ignore[union-attr]
        context = chromium.new_context()
        page = context.new_page()

        page.goto(authorize)
        # Accessible: the username field has the focus, then Tab goes to the password and
        # then to the button (labels, focus order).
        assert page.evaluate("document.activeElement.id") == "username"
        page.keyboard.type(user)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "password"
        page.keyboard.type(password)
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Sign in"
        page.keyboard.press("Enter")

        # The login page was served at the authorize URL; the consent page follows there too.
        allow = page.get_by_role("button", name="Allow")
        allow.wait_for()
        assert "Demo single-page app" in page.locator("h1").inner_text()
        page.get_by_label("Remember this decision").check()
        allow.click()
        page.wait_for_url(re.compile(r"/demo/callback"))

        landed = _query(page.url)
        assert landed["state"] == "demo"
        assert landed["iss"] == server.url  # RFC 9207 §2
        code = landed["code"]
        assert code in unescape(page.locator("pre").inner_text())  # the ready command
        cookies = {c["name"]: c for c in context.cookies()}
        session = next(c for name, c in cookies.items() if "session" in name)
        assert session["httpOnly"] is True
        assert session["sameSite"] == "Lax"

        # The command the callback page prints runs verbatim with the real curl.
        (command,) = printed_curl_commands(page.locator("pre").inner_text())
        status, body = run_curl(curl, *command[1:])
        assert status == 200, body
        tokens = json.loads(body)
        assert verifier in command[-1]
        info = server.introspect(demo.rs, tokens["access_token"]).json()
        assert info["active"] is True
        assert info["username"] == user
        assert info["sub"].startswith("usr_")
        assert info["client_id"] == "demo-spa"

        # Consent was remembered: the same request goes straight back with a new code.
        page.goto(authorize)
        page.wait_for_url(re.compile(r"/demo/callback"))
        assert _query(page.url)["code"] != code
        context.close()


def sign_in_and_allow(http: httpx.Client, url: str, user: str, password: str) -> str:
    """What a user's browser does between the client's redirect and its callback: the
    login form, then the consent form. Returns the callback URL keystile redirects to."""
    page = http.get(url)
    assert page.status_code == 200, page.text
    form = {k: unescape(v) for k, v in _HIDDEN.findall(page.text)}
    r = http.post("/login", data={**form, "username": user, "password": password})
    assert r.status_code == 303, r.text
    page = http.get(r.headers["location"])
    assert page.status_code == 200, page.text
    form = {k: unescape(v) for k, v in _HIDDEN.findall(page.text)}
    r = http.post("/oauth2/consent", data={**form, "decision": "allow"})
    assert r.status_code in (302, 303), r.text
    return r.headers["location"]


def demo_user_token(server: Server, user: str, password: str) -> str:
    """An access token for ``user``, through the code flow the demo setup prints: its link
    (the public demo client, PKCE S256), sign-in and consent, then the exchange."""
    out = server.stdout
    authorize = _OPEN.search(out).group(1)  # type: ignore[union-attr]
    verifier = _VERIFIER.search(out).group(1)  # type: ignore[union-attr]
    asked = _query(authorize)
    with httpx.Client(base_url=server.url, trust_env=False, follow_redirects=False) as browser:
        callback = sign_in_and_allow(browser, authorize, user, password)
        form = {
            "grant_type": "authorization_code",
            "code": _query(callback)["code"],
            "redirect_uri": asked["redirect_uri"],
            "client_id": asked["client_id"],
            "code_verifier": verifier,
        }
        r = browser.post(TOKEN, data=form)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


class TestAuthlibClient:
    def test_code_flow_refresh_and_revocation(
        self, demo_server: DemoServer, run_keystile: RunKeystile
    ) -> None:
        """Authlib's OAuth2Client runs the code flow with PKCE S256 (RFC 7636), refreshes
        (RFC 6749 §6, rotation per RFC 9700 §4.14.2) and revokes (RFC 7009 §2.1), and
        introspection follows each step."""
        from authlib.common.security import generate_token
        from authlib.deprecate import AuthlibDeprecationWarning  # adds its own "always" filter

        with warnings.catch_warnings():
            # Authlib 1.9.10+ prefers the httpx2 fork and warns when it falls back to httpx,
            # which is what it runs on here (and what keystile's SDK uses).
            warnings.simplefilter("ignore", AuthlibDeprecationWarning)
            from authlib.integrations.httpx_client import OAuth2Client

        server, demo = demo_server.server, demo_server.demo
        redirect_uri = "http://127.0.0.1:9/callback"  # never followed: we read Location

        def keystile(*args: str, stdin: str | None = None) -> str:
            done = run_keystile(*args, "--db", str(server.db), stdin=stdin)
            assert done.returncode == 0, done.stderr
            return done.stdout

        created = keystile(
            "client",
            "create",
            "webapp",
            "--grant",
            "authorization_code",
            "--grant",
            "refresh_token",
            "--redirect-uri",
            redirect_uri,
            "--scope",
            "read write",
            "--audience",
            "https://api.example.test",
            "--json",
        )
        secret = re.search(r'"client_secret":\s*"(ks_cs_[^"]+)"', created).group(1)  # type: ignore[union-attr]
        keystile("user", "create", "alice", "--password-stdin", stdin="wonderland-42\n")

        client = OAuth2Client(
            "webapp",
            secret,
            scope="read write",
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic",
            trust_env=False,
        )
        verifier = generate_token(64)
        url, state = client.create_authorization_url(
            server.url + "/oauth2/authorize", code_verifier=verifier
        )
        browser = httpx.Client(base_url=server.url, trust_env=False, follow_redirects=False)
        callback = sign_in_and_allow(browser, url, "alice", "wonderland-42")
        assert callback.startswith(redirect_uri + "?")
        assert _query(callback)["iss"] == server.url  # RFC 9207: the mix-up defence

        token = client.fetch_token(
            server.url + TOKEN, authorization_response=callback, state=state, code_verifier=verifier
        )
        rs = demo.rs
        info = server.introspect(rs, token["access_token"]).json()
        assert info["active"] is True
        assert info["username"] == "alice"
        assert info["client_id"] == "webapp"
        first_refresh = token["refresh_token"]

        renewed = client.refresh_token(server.url + TOKEN)
        assert renewed["refresh_token"] != first_refresh
        assert server.introspect(rs, renewed["access_token"]).json()["active"] is True
        assert server.introspect(rs, first_refresh).json() == {"active": False}

        r = client.revoke_token(
            server.url + "/oauth2/revoke",
            token=renewed["refresh_token"],
            token_type_hint="refresh_token",
        )
        assert r.status_code == 200
        # The refresh token took its grant with it: every access token of the grant too.
        for value in (renewed["access_token"], token["access_token"]):
            assert server.introspect(rs, value).json() == {"active": False}
        browser.close()
        client.close()


class TestBrowserOpenIdConnect:
    def test_openid_profile_sign_in_and_logout(
        self, demo_server: DemoServer, chromium: Any, run_keystile: RunKeystile
    ) -> None:
        """In a real browser: an OpenID Connect request (scope openid profile email, nonce)
        signs in, the consent page names the identity claims, the ID token names the user
        (nonce, at_hash: OIDC Core §3.1.3.6), UserInfo answers the claims set with the CLI,
        and RP-initiated logout returns to the app with state and ends the session."""
        import base64
        import hashlib
        import secrets

        import jwt as pyjwt

        from keystile.core.pkce import s256

        server = demo_server.server
        user, password = _USER.search(server.stdout).groups()  # type: ignore[union-attr]
        callback = server.url + "/demo/callback"
        signed_out = server.url + "/healthz"  # any page of ours: the app's "signed out" page

        def keystile(*args: str) -> dict[str, Any]:
            done = run_keystile(*args, "--db", str(server.db), "--json")
            assert done.returncode == 0, done.stderr
            return dict(json.loads(done.stdout))

        secret = keystile(
            "client",
            "create",
            "oidc-web",
            "--name",
            "OIDC web app",
            "--redirect-uri",
            callback,
            "--post-logout-redirect-uri",
            signed_out,
            "--scope",
            "openid profile email",
        )["client_secret"]
        keystile("user", "update", user, "--name", "Demo Person", "--email", "demo@example.test")

        verifier, nonce = secrets.token_urlsafe(48), secrets.token_urlsafe(16)
        authorize = str(
            httpx.URL(
                server.url + "/oauth2/authorize",
                params={
                    "response_type": "code",
                    "client_id": "oidc-web",
                    "redirect_uri": callback,
                    "scope": "openid profile email",
                    "state": "s-1",
                    "nonce": nonce,
                    "code_challenge": s256(verifier),
                    "code_challenge_method": "S256",
                },
            )
        )
        context = chromium.new_context()
        page = context.new_page()
        page.goto(authorize)
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        allow = page.get_by_role("button", name="Allow")
        allow.wait_for()
        learns = page.locator("#claims-intro + ul").inner_text()
        assert "Your name" in learns
        assert "Your email address" in learns
        allow.click()
        page.wait_for_url(re.compile(r"/demo/callback"))
        code = _query(page.url)["code"]

        with httpx.Client(base_url=server.url, trust_env=False) as http:
            r = http.post(
                TOKEN,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": callback,
                    "code_verifier": verifier,
                },
                auth=("oidc-web", secret),
            )
            assert r.status_code == 200, r.text
            tokens = r.json()
            jwks = http.get("/oauth2/jwks").json()
            header = pyjwt.get_unverified_header(tokens["id_token"])
            key = pyjwt.PyJWKSet.from_dict(jwks)[header["kid"]]
            claims = pyjwt.decode(
                tokens["id_token"],
                key.key,
                algorithms=[header["alg"]],
                audience="oidc-web",
                issuer=server.url,
            )
            digest = hashlib.sha256(tokens["access_token"].encode()).digest()[:16]
            assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            assert claims["nonce"] == nonce
            assert claims["sub"].startswith("usr_")
            info = http.get(
                "/oauth2/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
            ).json()
            assert info == {
                "sub": claims["sub"],
                "name": "Demo Person",
                "preferred_username": user,
                "email": "demo@example.test",
                "email_verified": False,
            }

        logout = httpx.URL(
            server.url + "/oauth2/logout",
            params={
                "id_token_hint": tokens["id_token"],
                "post_logout_redirect_uri": signed_out,
                "state": "bye",
            },
        )
        page.goto(str(logout))
        page.wait_for_url(re.compile(r"/healthz\?state=bye$"))
        # Signed out: the same request asks to sign in again.
        page.goto(authorize)
        page.get_by_label("Password").wait_for()
        context.close()
