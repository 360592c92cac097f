"""The demo setup created on the first start of an empty database (loopback by default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from keystile import admin
from keystile.clock import Clock
from keystile.store.base import Store

DEMO_AUDIENCE = "https://api.example.test"
INITIALIZED_KEY = "initialized"


@dataclass(frozen=True)
class DemoSetup:
    app_id: str
    app_secret: str = field(repr=False)
    rs_id: str = "demo-rs"
    rs_secret: str = field(default="", repr=False)
    audience: str = DEMO_AUDIENCE


async def first_start(store: Store, clock: Clock, *, demo: bool, ttl: int) -> DemoSetup | None:
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
        setup = DemoSetup("demo-app", app_secret, "demo-rs", rs_secret)
    await store.set_meta(INITIALIZED_KEY, str(clock.now()))
    return setup


def demo_text(setup: DemoSetup, issuer: str) -> str:
    token_url = f"{issuer}/oauth2/token"
    introspect_url = f"{issuer}/oauth2/introspect"
    revoke_url = f"{issuer}/oauth2/revoke"
    form = "application/x-www-form-urlencoded"
    return f"""
keystile: created a demo setup on this new database. The secrets below are shown once
and stored only as SHA-256 digests; keep them if you want to follow along.

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
"""
