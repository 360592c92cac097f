"""The demo setup created on the first start of an empty database (loopback by default)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from html import escape
from urllib.parse import urlencode

from keystile import admin
from keystile.clock import Clock
from keystile.core import pkce
from keystile.core.metadata import AUTHORIZATION_PATH
from keystile.core.tokens import token_kind
from keystile.errors import ConfigurationError
from keystile.store.base import Store

DEMO_AUDIENCE = "https://api.example.test"
INITIALIZED_KEY = "initialized"
DEMO_CALLBACK_PATH = "/demo/callback"
# The demo's PKCE verifier, kept so the callback page can print a complete exchange command.
# A demo convenience only: it protects nothing but the demo client's codes.
DEMO_VERIFIER_KEY = "demo_pkce_verifier"
DEMO_USER = "demo"
DEMO_SPA = "demo-spa"
_FALLBACK_REDIRECT = "http://127.0.0.1:8765/callback"


@dataclass(frozen=True)
class DemoSetup:
    app_id: str
    app_secret: str = field(repr=False)
    rs_id: str = "demo-rs"
    rs_secret: str = field(default="", repr=False)
    audience: str = DEMO_AUDIENCE
    # The code flow (issue 3): a user, a public client, and a PKCE pair to try it with.
    user: str = DEMO_USER
    user_password: str = field(default="", repr=False)
    spa_id: str = DEMO_SPA
    redirect_uri: str = _FALLBACK_REDIRECT
    verifier: str = field(default="", repr=False)


async def first_start(
    store: Store, clock: Clock, *, demo: bool, ttl: int, issuer: str = "http://127.0.0.1:8000"
) -> DemoSetup | None:
    """On an empty database: mark it initialized and, if asked, create the demo setup."""
    if await store.get_meta(INITIALIZED_KEY) is not None:
        return None
    setup = None
    if demo:
        _, app_secret = await admin.create_client(
            store,
            clock,
            client_id="demo-app",
            name="Demo application",
            scopes=["read", "write"],
            default_audience=[DEMO_AUDIENCE],
            access_token_ttl=ttl,
        )
        _, rs_secret = await admin.create_client(
            store,
            clock,
            client_id="demo-rs",
            name="Demo resource server (introspects)",
            grant_types=[],
        )
        await admin.create_resource_server(
            store,
            clock,
            identifier=DEMO_AUDIENCE,
            name="Demo API",
            introspection_clients=["demo-rs"],
        )
        password = secrets.token_urlsafe(12)
        await admin.create_user(store, clock, username=DEMO_USER, password=password)
        redirect_uri = await _demo_spa(store, clock, issuer, ttl)
        verifier = secrets.token_urlsafe(48)
        await store.set_meta(DEMO_VERIFIER_KEY, verifier)
        setup = DemoSetup(
            "demo-app",
            app_secret,
            "demo-rs",
            rs_secret,
            user_password=password,
            redirect_uri=redirect_uri,
            verifier=verifier,
        )
    await store.set_meta(INITIALIZED_KEY, str(clock.now()))
    return setup


async def _demo_spa(store: Store, clock: Clock, issuer: str, ttl: int) -> str:
    """A public client whose redirect URI is the AS's own demo callback page (or, where
    that URI is not acceptable as a redirect URI, a loopback one)."""
    for redirect_uri in (issuer.rstrip("/") + DEMO_CALLBACK_PATH, _FALLBACK_REDIRECT):
        try:
            await admin.create_client(
                store,
                clock,
                client_id=DEMO_SPA,
                name="Demo single-page app",
                auth_method="none",
                grant_types=["authorization_code", "refresh_token"],
                scopes=["read", "write"],
                default_audience=[DEMO_AUDIENCE],
                access_token_ttl=ttl,
                redirect_uris=[redirect_uri],
            )
        except ConfigurationError:
            continue
        return redirect_uri
    raise ConfigurationError("could not register the demo's redirect URI")


def authorize_url(setup: DemoSetup, issuer: str) -> str:
    query = urlencode(
        {
            "response_type": "code",
            "client_id": setup.spa_id,
            "redirect_uri": setup.redirect_uri,
            "scope": "read",
            "state": "demo",
            "code_challenge": pkce.s256(setup.verifier),
            "code_challenge_method": pkce.S256,
        }
    )
    return f"{issuer.rstrip('/')}{AUTHORIZATION_PATH}?{query}"


def exchange_command(issuer: str, *, code: str, redirect_uri: str, verifier: str) -> str:
    """The curl command that redeems a demo code (shown on the demo callback page)."""
    form = "application/x-www-form-urlencoded"
    return (
        f'curl -sS -X POST {issuer.rstrip("/")}/oauth2/token -H "Content-Type: {form}" \\\n'
        f'  -d grant_type=authorization_code -d client_id={DEMO_SPA} -d "code={code}" \\\n'
        f'  --data-urlencode "redirect_uri={redirect_uri}" -d "code_verifier={verifier}"'
    )


def demo_text(setup: DemoSetup, issuer: str) -> str:
    token_url = f"{issuer}/oauth2/token"
    introspect_url = f"{issuer}/oauth2/introspect"
    revoke_url = f"{issuer}/oauth2/revoke"
    form = "application/x-www-form-urlencoded"
    return f"""
keystile: created a demo setup on this new database. The secrets and the password below
are shown once (secrets are stored only as SHA-256 digests, the password as an argon2id
hash); keep them if you want to follow along.

  client   {setup.app_id:<10} secret {setup.app_secret}
           grant client_credentials, scope "read write", audience {setup.audience}
  resource {setup.audience}, introspects as
  client   {setup.rs_id:<10} secret {setup.rs_secret}

Get a token:
  curl -sS -X POST {token_url} -H "Content-Type: {form}" \\
    -d "grant_type=client_credentials&scope=read" -u "{setup.app_id}:{setup.app_secret}"

Introspect it (as the resource server):
  curl -sS -X POST {introspect_url} -H "Content-Type: {form}" \\
    -d "token=ACCESS_TOKEN" -u "{setup.rs_id}:{setup.rs_secret}"

Revoke it (as the client it was issued to):
  curl -sS -X POST {revoke_url} -H "Content-Type: {form}" \\
    -d "token=ACCESS_TOKEN" -u "{setup.app_id}:{setup.app_secret}"

Sign in as a person (authorization code flow with PKCE, docs/users.md):
  user     {setup.user:<10} password {setup.user_password}
  client   {setup.spa_id:<10} public, redirect URI {setup.redirect_uri}
  open     {authorize_url(setup, issuer)}
  then exchange the code (the page you land on prints this command ready to paste):
{
        _indent(
            exchange_command(
                issuer, code="CODE", redirect_uri=setup.redirect_uri, verifier=setup.verifier
            )
        )
    }
"""


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


async def demo_callback_page(store: Store, issuer: str, query: dict[str, str]) -> tuple[int, str]:
    """The demo client's landing page on the AS: the code and the command that redeems it.

    Everything echoed is escaped; the page is only served while the demo's verifier exists.
    """
    verifier = await store.get_meta(DEMO_VERIFIER_KEY)
    if verifier is None:
        return 404, _page("Not found", "<p>This keystile has no demo setup.</p>")
    redirect_uri = issuer.rstrip("/") + DEMO_CALLBACK_PATH
    if "error" in query:
        body = (
            f"<p>The authorization server answered <code>{escape(query['error'])}</code>: "
            f"{escape(query.get('error_description', ''))}</p>"
        )
        return 200, _page("Authorization refused", body)
    code = query.get("code", "")
    if token_kind(code) != "authorization_code":
        # The command below is for pasting into a shell: only a code of our own shape
        # (base64url characters, valid checksum) goes in, never whatever a link carried.
        return 400, _page("No authorization code", "<p>This link carries no valid code.</p>")
    command = exchange_command(issuer, code=code, redirect_uri=redirect_uri, verifier=verifier)
    body = (
        f"<p>keystile sent you back with a one-time code (state "
        f"<code>{escape(query.get('state', ''))}</code>, issuer "
        f"<code>{escape(query.get('iss', ''))}</code>). Within a minute, exchange it:</p>"
        f"<pre>{escape(command)}</pre>"
        "<p>Then introspect the access token as <code>demo-rs</code> and look for "
        "<code>username</code>.</p>"
    )
    return 200, _page("Demo: your authorization code", body)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title></head><body><main><h1>{escape(title)}</h1>"
        f"{body}</main></body></html>"
    )
