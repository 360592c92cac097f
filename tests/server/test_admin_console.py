"""The admin console at /admin/ (docs/admin.md), in process: sign-in through the code flow
as a user with the admin role, the pages' security headers, CSRF, forms and their audit
events, and the dashboard fed by the process's own counters."""

from __future__ import annotations

import hashlib
import html
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from keystile import admin
from keystile.clock import FixedClock
from keystile.core.models import AuthorizationCode, Grant, TokenRecord, User
from keystile.core.tokens import new_access_token, new_refresh_token, token_hash
from keystile.settings import ServerSettings
from keystile.store.base import NewToken
from keystile.store.sqlite import SQLiteStore
from tests.conftest import API, INTROSPECT, ISSUER, TOKEN, IssueToken, Setup
from tests.server.admin_support import ADMIN, bearer

PASSWORD = "correct horse battery staple"
_HIDDEN = re.compile(r'<input type="hidden" name="([a-z]+)" value="([^"]*)">')


@pytest.fixture
def settings(db_path: Path) -> ServerSettings:
    return ServerSettings(
        db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=False, admin_api=True
    )


@pytest.fixture
async def people(store: SQLiteStore, clock: FixedClock) -> None:
    await admin.create_user(store, clock, username="alice", password=PASSWORD, roles=["admin"])
    await admin.create_user(store, clock, username="bob", password=PASSWORD)


def hidden(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


async def sign_in(http: httpx.AsyncClient, username: str) -> httpx.Response:
    """/admin/ → authorize → login → consent (Allow) → callback; the callback's answer."""
    r = await http.get("/admin/")
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("/oauth2/authorize?")
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["client_id"] == ["keystile-console"]
    assert query["code_challenge_method"] == ["S256"]
    page = await http.get(r.headers["location"])
    r = await http.post(
        "/login", data={**hidden(page.text), "username": username, "password": PASSWORD}
    )
    assert r.status_code == 303, r.text
    consent = await http.get(r.headers["location"])
    assert "Administer this keystile server" in consent.text
    r = await http.post("/oauth2/consent", data={**hidden(consent.text), "decision": "allow"})
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith(f"{ISSUER}/admin/callback?")
    return await http.get(r.headers["location"])


async def test_admin_signs_in_and_sees_the_dashboard(http: httpx.AsyncClient, people: None) -> None:
    """An admin goes through the code flow and lands on the dashboard, served no-store,
    unframable, under a CSP that allows no script."""
    r = await sign_in(http, "alice")
    assert r.status_code == 303
    assert r.headers["location"] == "/admin/"
    r = await http.get("/admin/")
    assert r.status_code == 200, r.text
    assert "Dashboard" in r.text
    assert "Signed in as alice" in r.text
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in csp
    assert "default-src 'none'" in csp
    assert "http" not in r.text.split("<body>")[0].replace('http-equiv="refresh"', "")


async def test_user_without_admin_role_is_refused(
    http: httpx.AsyncClient, people: None, store: SQLiteStore
) -> None:
    """A user without the admin role gets 403 at the callback and no console session;
    the token they were issued is revoked at once."""
    r = await sign_in(http, "bob")
    assert r.status_code == 403
    assert 'role="alert"' in r.text
    assert "admin role" in r.text
    r = await http.get("/admin/")
    assert r.status_code == 303  # still not signed in


async def test_console_token_needs_the_role_on_the_api_too(
    http: httpx.AsyncClient, people: None, store: SQLiteStore, clock: FixedClock
) -> None:
    """The console's token works on /admin/v1 while its user is an admin; taking the role
    away refuses it there and on the console's pages (403)."""
    await sign_in(http, "alice")
    token = http.cookies["__Host-ks_admin"]
    r = await http.get(f"{ADMIN}/clients", headers=bearer(token))
    assert r.status_code == 200
    await admin.set_user_roles(store, clock, "alice", [])
    r = await http.get(f"{ADMIN}/clients", headers=bearer(token))
    assert r.status_code == 403
    assert r.json()["type"] == "urn:keystile:problem:not-an-admin"
    assert (await http.get("/admin/clients")).status_code == 403


async def test_create_client_with_csrf_and_audit(http: httpx.AsyncClient, people: None) -> None:
    """The clients form creates a client (secret shown once), lists it, and writes an
    audit event naming the console, its user and the address; without the CSRF token the
    form is refused and nothing is made."""
    await sign_in(http, "alice")
    page = await http.get("/admin/clients")
    assert page.status_code == 200
    assert '<label for="client_id">' in page.text
    fields = hidden(page.text)
    r = await http.post(
        "/admin/clients", data={"client_id": "nocsrf", "auth_method": "client_secret_basic"}
    )
    assert r.status_code == 403
    r = await http.post(
        "/admin/clients",
        data={**fields, "client_id": "reports", "scope": "reports:read", "name": "Reports"},
    )
    assert r.status_code == 201, r.text
    assert "ks_cs_" in r.text
    listed = await http.get("/admin/clients")
    assert "<code>reports</code>" in listed.text
    assert "nocsrf" not in listed.text
    assert "ks_cs_" not in listed.text
    r = await http.post("/admin/clients", data={**fields, "client_id": "bad id"})
    assert r.status_code == 400
    assert 'role="alert"' in r.text
    assert "client id must be" in r.text
    token = http.cookies["__Host-ks_admin"]
    events = (await http.get(f"{ADMIN}/events", headers=bearer(token))).json()["items"]
    audits = [e for e in events if e["type"] == "admin_action"]
    assert [(e["action"], e["target"], e["actor"], e["actor_user"]) for e in audits] == [
        ("client.create", "reports", "keystile-console", "alice")
    ]
    assert audits[0]["address"] == "203.0.113.7"


async def test_create_resource_server(http: httpx.AsyncClient, people: None) -> None:
    """The resource-servers form registers one, listed afterwards."""
    await sign_in(http, "alice")
    fields = hidden((await http.get("/admin/resource-servers")).text)
    r = await http.post(
        "/admin/resource-servers",
        data={**fields, "identifier": "https://reports.example.test", "name": "Reports"},
    )
    assert r.status_code == 303
    listed = await http.get("/admin/resource-servers")
    assert "https://reports.example.test" in listed.text


async def test_dashboard_counts_introspections(
    http: httpx.AsyncClient, people: None, setup: Setup, issue_token: IssueToken
) -> None:
    """After introspections, the dashboard's totals and charts show them."""
    await sign_in(http, "alice")
    await http.get("/admin/")
    token = await issue_token(setup.app, scope="read")
    for _ in range(3):
        await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    await http.post(INTROSPECT, data={"token": "ks_at_unknown"}, auth=setup.rs.auth)
    r = await http.get("/admin/")
    active = re.search(r'id="chart-active">.*?class="total">(\d+)<', r.text, re.S)
    inactive = re.search(r'id="chart-inactive">.*?class="total">(\d+)<', r.text, re.S)
    assert active is not None
    assert inactive is not None
    assert (int(active[1]), int(inactive[1])) == (3, 1)
    assert "<rect" in r.text
    assert '<td id="subscribers">0</td>' in r.text
    assert '<td id="lag">0</td>' in r.text


async def test_logout_revokes_the_console_token(http: httpx.AsyncClient, people: None) -> None:
    """Signing out revokes the console's token: a copy of the cookie is of no more use."""
    await sign_in(http, "alice")
    token = http.cookies["__Host-ks_admin"]
    fields = hidden((await http.get("/admin/")).text)
    r = await http.post("/admin/logout", data=fields)
    assert r.status_code == 200
    assert (await http.get(f"{ADMIN}/clients", headers=bearer(token))).status_code == 401


async def test_console_off_unless_configured(
    db_path: Path, store: SQLiteStore, clock: FixedClock
) -> None:
    """Without admin_api there is no console (404)."""
    from keystile.server.app import create_app

    app = create_app(ServerSettings(db=str(db_path), issuer=ISSUER), store=store, clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER) as c:
        assert (await c.get("/admin/")).status_code == 404


async def test_revoke_by_user_ends_the_console_session(
    http: httpx.AsyncClient, people: None, register_client: Any
) -> None:
    """POST /admin/v1/users/alice/revoke-sessions revokes her grants and tokens (the
    console's among them, a real code-flow token): the console asks her to sign in again."""
    await sign_in(http, "alice")
    console_token = http.cookies["__Host-ks_admin"]
    ops = await register_client("ops", scopes=["keystile:admin"])
    r = await http.post(
        "/oauth2/token",
        data={"grant_type": "client_credentials", "scope": "keystile:admin"},
        auth=ops.auth,
    )
    ops_token = r.json()["access_token"]
    r = await http.post(f"{ADMIN}/users/alice/revoke-sessions", headers=bearer(ops_token))
    assert r.status_code == 200, r.text
    assert r.json()["tokens_revoked"] == 1
    assert (await http.get(f"{ADMIN}/clients", headers=bearer(console_token))).status_code == 401
    r = await http.get("/admin/")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/oauth2/authorize?")


async def test_console_needs_a_usable_redirect_uri(
    db_path: Path, store: SQLiteStore, clock: FixedClock
) -> None:
    """With a plain-http issuer off loopback the console cannot register its redirect URI
    (RFC 8252 rules): it says so (500 page), and nothing is created."""
    from keystile.server.app import create_app

    settings = ServerSettings(
        db=str(db_path), issuer="http://auth.example.test", admin_api=True, purge_interval=0
    )
    app = create_app(settings, store=store, clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://auth.example.test") as c:
        r = await c.get("/admin/")
    assert r.status_code == 500
    assert "redirect URI" in r.text
    assert await store.get_client("keystile-console") is None


async def test_users_keys_and_tokens_pages(
    http: httpx.AsyncClient, people: None, setup: Setup, issue_token: IssueToken
) -> None:
    """The users form makes an admin; the keys page rotates; the tokens page finds a token
    by digest and revokes it, then all of a client's tokens; each change is audited."""
    await sign_in(http, "alice")
    csrf = hidden((await http.get("/admin/users")).text)["csrf"]
    r = await http.post(
        "/admin/users",
        data={"csrf": csrf, "username": "carol", "password": PASSWORD, "admin": "yes"},
    )
    assert r.status_code == 303, r.text
    listed = (await http.get("/admin/users")).text
    assert re.search(r">carol</a></td>.*?<td>admin</td>", listed, re.S)
    r = await http.post("/admin/users", data={"csrf": csrf, "username": "dan", "password": "short"})
    assert r.status_code == 400
    assert 'role="alert"' in r.text

    r = await http.post("/admin/signing-keys", data={"csrf": csrf, "action": "rotate"})
    assert r.status_code == 303, r.text
    assert "active" in (await http.get("/admin/signing-keys")).text

    token = await issue_token(setup.app, scope="read")
    other = await issue_token(setup.app, scope="read")
    digest = hashlib.sha256(token.encode()).hexdigest()
    page = await http.get("/admin/tokens", params={"digest": digest})
    assert page.status_code == 200
    assert '<td id="token-state">active</td>' in page.text
    assert token not in page.text
    jti = re.search(r'name="jti" value="([^"]+)"', page.text.split("<h2>Token")[1])
    assert jti is not None
    r = await http.post("/admin/tokens", data={"csrf": csrf, "action": "revoke", "jti": jti[1]})
    assert r.status_code == 200
    assert '<td id="token-state">revoked</td>' in r.text
    r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
    assert r.json() == {"active": False}
    r = await http.post(
        "/admin/tokens", data={"csrf": csrf, "action": "revoke-client", "client_id": "app-1"}
    )
    assert "1 live token(s) of client app-1 revoked" in r.text
    r = await http.post(INTROSPECT, data={"token": other}, auth=setup.rs.auth)
    assert r.json() == {"active": False}
    r = await http.get("/admin/tokens", params={"jti": "nope"})
    assert r.status_code == 404
    assert 'role="alert"' in r.text

    console_token = http.cookies["__Host-ks_admin"]
    events = (await http.get(f"{ADMIN}/events", headers=bearer(console_token))).json()["items"]
    actions = [e["action"] for e in events if e["type"] == "admin_action"]
    assert actions == ["user.create", "signing_key.rotate", "token.revoke", "client.revoke_tokens"]


async def test_forged_callbacks_are_refused(http: httpx.AsyncClient, people: None) -> None:
    """A callback without the sign-in's cookie, with another state (even a non-ASCII one),
    or naming another issuer (RFC 9207) signs nobody in."""
    r = await http.get("/admin/callback", params={"code": "x", "state": "y", "iss": ISSUER})
    assert r.status_code == 400
    r = await http.get("/admin/")  # sets the sign-in cookie
    state = parse_qs(urlsplit(r.headers["location"]).query)["state"][0]
    for params in (
        {"code": "x", "state": "ünïcode", "iss": ISSUER},
        {"code": "x", "state": state, "iss": "https://evil.example"},
        {"code": "x", "state": state, "iss": ISSUER},  # right state, a code never issued
    ):
        r = await http.get("/admin/callback", params=params)
        assert r.status_code == 400, params
        assert 'role="alert"' in r.text
    assert "__Host-ks_admin" not in http.cookies or not http.cookies["__Host-ks_admin"]


async def console_audits(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    token = http.cookies["__Host-ks_admin"]
    events = (await http.get(f"{ADMIN}/events", headers=bearer(token))).json()["items"]
    return [e for e in events if e["type"] == "admin_action"]


class TestItemPages:
    """One client's, resource server's or user's page: edit, disable and enable, delete
    after a confirmation; each change through the shared operations, audited."""

    async def test_client_edit_disable_enable_delete(
        self,
        http: httpx.AsyncClient,
        people: None,
        setup: Setup,
        issue_token: IssueToken,
        store: SQLiteStore,
    ) -> None:
        """The client's page saves its settings, disables it (its tokens revoked) and
        enables it, and deletes it only after the confirmation; no CSRF token, no change."""
        await sign_in(http, "alice")
        listed = await http.get("/admin/clients")
        assert '<a href="/admin/clients/app-1">' in listed.text
        page = await http.get("/admin/clients/app-1")
        assert page.status_code == 200
        for field in ("name", "scope", "audience", "redirect_uri", "access_token_ttl"):
            assert f'<label for="{field}">' in page.text
        csrf = hidden(page.text)["csrf"]
        form = {"csrf": csrf, "action": "update", "name": "App One", "scope": "read",
                "audience": "https://api.example.test", "redirect_uri": "",
                "access_token_ttl": "600"}  # fmt: skip
        r = await http.post("/admin/clients/app-1", data={**form, "csrf": "forged"})
        assert r.status_code == 403
        r = await http.post("/admin/clients/app-1", data=form)
        assert r.status_code == 200, r.text
        assert "Client saved." in r.text
        client = await store.get_client("app-1")
        assert client is not None
        assert (client.name, client.scopes, client.access_token_ttl) == (
            "App One", frozenset({"read"}), 600,
        )  # fmt: skip
        r = await http.post("/admin/clients/app-1", data={**form, "access_token_ttl": "0"})
        assert r.status_code == 400
        assert 'role="alert"' in r.text
        assert "access-token lifetime must be 1..2592000 seconds" in r.text

        token = await issue_token(setup.app, scope="read")
        r = await http.post("/admin/clients/app-1", data={"csrf": csrf, "action": "disable"})
        assert '<strong id="state">disabled</strong>' in r.text
        assert "1 live token(s) revoked" in r.text
        r = await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
        assert r.json() == {"active": False}
        r = await http.post("/admin/clients/app-1", data={"csrf": csrf, "action": "enable"})
        assert '<strong id="state">enabled</strong>' in r.text

        r = await http.post("/admin/clients/app-1", data={"csrf": csrf, "action": "delete"})
        assert r.status_code == 200
        assert "Delete client app-1?" in r.text
        assert await store.get_client("app-1") is not None  # only asked
        confirm = hidden(r.text)
        assert confirm["confirm"] == "yes"
        r = await http.post("/admin/clients/app-1", data=confirm)
        assert r.status_code == 303
        assert r.headers["location"] == "/admin/clients"
        assert await store.get_client("app-1") is None
        r = await http.get("/admin/clients/app-1")
        assert r.status_code == 404
        assert 'role="alert"' in r.text

        audits = [(e["action"], e["target"], e.get("fields"), e.get("tokens_revoked"))
                  for e in await console_audits(http)]  # fmt: skip
        assert audits == [
            ("client.update", "app-1", ["access_token_ttl", "name", "scope"], None),
            ("client.disable", "app-1", None, 1),
            ("client.enable", "app-1", None, None),
            ("client.delete", "app-1", None, 0),
        ]
        assert all(e["via"] == "console" and e["actor_user"] == "alice"
                   for e in await console_audits(http))  # fmt: skip

    async def test_console_and_api_refuse_alike(
        self, http: httpx.AsyncClient, people: None, setup: Setup, register_client: Any
    ) -> None:
        """One implementation: the console's edit and PATCH /admin/v1/clients refuse the
        same lifetime with the same message."""
        await sign_in(http, "alice")
        csrf = hidden((await http.get("/admin/clients/app-1")).text)["csrf"]
        r = await http.post(
            "/admin/clients/app-1",
            data={
                "csrf": csrf,
                "action": "update",
                "scope": "read",
                "access_token_ttl": "99999999",
            },
        )
        console_error = re.search(r'role="alert">([^<]+)<', r.text)
        assert console_error is not None
        token = http.cookies["__Host-ks_admin"]
        r = await http.patch(
            f"{ADMIN}/clients/app-1", json={"access_token_ttl": 99999999}, headers=bearer(token)
        )
        assert r.status_code == 400
        assert html.unescape(console_error[1]) == r.json()["detail"]

    async def test_resource_server_edit_and_delete(
        self,
        http: httpx.AsyncClient,
        people: None,
        setup: Setup,
        store: SQLiteStore,
        register_client: Any,
    ) -> None:
        """The resource server's page (its URI percent-encoded in the path) changes its
        introspecting clients and claims, refuses an unknown client, and deletes it after
        the confirmation."""
        await register_client("rs-3", grant_types=[], scopes=[])
        await sign_in(http, "alice")
        listed = await http.get("/admin/resource-servers")
        path = "/admin/resource-servers/https%3A%2F%2Fapi.example.test"
        assert f'<a href="{path}">' in listed.text
        page = await http.get(path)
        assert page.status_code == 200, page.text
        assert '<label for="clients">' in page.text
        csrf = hidden(page.text)["csrf"]
        before = await store.get_resource_server("https://api.example.test")
        assert before is not None
        claims, rules = " ".join(sorted(before.claims)), " ".join(sorted(before.rules))
        assert f'id="claims" name="claims" type="text" value="{claims}"' in page.text
        form = {"csrf": csrf, "action": "update", "name": "The API", "clients": "rs-1 rs-3",
                "claims": claims, "rules": rules, "introspection_response": "json"}  # fmt: skip
        r = await http.post(path, data=form)
        assert r.status_code == 200, r.text
        rs = await store.get_resource_server("https://api.example.test")
        assert rs is not None
        assert (rs.name, rs.introspection_clients) == ("The API", frozenset({"rs-1", "rs-3"}))
        r = await http.post(path, data={**form, "clients": "rs-2"})  # taken by OTHER_API
        assert r.status_code == 409
        assert 'role="alert"' in r.text
        r = await http.post(path, data={"csrf": csrf, "action": "delete"})
        assert "Delete resource server https://api.example.test?" in r.text
        r = await http.post(path, data=hidden(r.text))
        assert r.status_code == 303
        assert await store.get_resource_server("https://api.example.test") is None
        audits = [(e["action"], e.get("fields")) for e in await console_audits(http)]
        assert audits == [
            ("resource_server.update", ["introspection_clients", "name"]),
            ("resource_server.delete", None),
        ]

    async def test_user_edit_disable_enable_delete(
        self, http: httpx.AsyncClient, people: None, store: SQLiteStore
    ) -> None:
        """The user's page sets claims, the admin role and a password (a short one is
        refused before anything changes), disables and enables the user, and deletes them
        after the confirmation."""
        await sign_in(http, "alice")
        bob = await store.get_user_by_name("bob")
        assert bob is not None
        path = f"/admin/users/{bob.user_id}"
        assert f'<a href="{path}">bob</a>' in (await http.get("/admin/users")).text
        page = await http.get(path)
        for field in ("name", "email", "email_verified", "admin", "password"):
            assert f'for="{field}"' in page.text
        csrf = hidden(page.text)["csrf"]
        form = {"csrf": csrf, "action": "update", "name": "Bob B", "preferred_username": "",
                "email": "bob@example.test", "admin": "yes"}  # fmt: skip
        r = await http.post(path, data={**form, "password": "short"})
        assert r.status_code == 400
        assert 'role="alert"' in r.text
        unchanged = await store.get_user(bob.user_id)
        assert unchanged is not None
        assert unchanged.name is None
        r = await http.post(path, data={**form, "password": "a much longer password"})
        assert r.status_code == 200, r.text
        changed = await store.get_user(bob.user_id)
        assert changed is not None
        assert (changed.name, changed.email, changed.email_verified, changed.roles) == (
            "Bob B", "bob@example.test", False, frozenset({"admin"}),
        )  # fmt: skip
        assert changed.password_hash != bob.password_hash
        r = await http.post(path, data={"csrf": csrf, "action": "disable"})
        assert '<strong id="state">disabled</strong>' in r.text
        r = await http.post(path, data={"csrf": csrf, "action": "enable"})
        assert '<strong id="state">enabled</strong>' in r.text
        r = await http.post(path, data={"csrf": csrf, "action": "delete"})
        assert "Delete user bob?" in r.text
        r = await http.post(path, data=hidden(r.text))
        assert r.status_code == 303
        assert await store.get_user(bob.user_id) is None
        assert (await http.get(path)).status_code == 404
        audits = [(e["action"], e.get("fields")) for e in await console_audits(http)]
        assert audits == [
            ("user.update", ["email", "name"]),
            ("user.roles", None),
            ("user.password", None),
            ("user.disable", None),
            ("user.enable", None),
            ("user.delete", None),
        ]

    async def test_an_admin_cannot_lock_themselves_out(
        self, http: httpx.AsyncClient, people: None, store: SQLiteStore, clock: FixedClock
    ) -> None:
        """Disabling, deleting or taking the admin role from one's own account is refused
        (409, nothing changed, nothing audited) on the console and on the API with the
        console's token; another admin's account can be, and so can one's own from the CLI's
        functions (no acting user)."""
        await sign_in(http, "alice")
        alice = await store.get_user_by_name("alice")
        assert alice is not None
        path = f"/admin/users/{alice.user_id}"
        csrf = hidden((await http.get(path)).text)["csrf"]
        for form in (
            {"action": "disable"},
            {"action": "delete", "confirm": "yes"},
            {"action": "update", "name": "Alice", "preferred_username": "", "email": ""},
        ):
            r = await http.post(path, data={"csrf": csrf, **form})
            assert r.status_code == 409, (form, r.text)
            assert "your own account" in r.text
            assert 'role="alert"' in r.text
        token = http.cookies["__Host-ks_admin"]
        for method, url, body in (
            ("POST", f"{ADMIN}/users/alice/disable", None),
            ("DELETE", f"{ADMIN}/users/alice", None),
            ("PUT", f"{ADMIN}/users/alice/roles", {"roles": []}),
        ):
            r = await http.request(method, url, headers=bearer(token), json=body)
            assert r.status_code == 409, (url, r.text)
            assert "your own account" in r.json()["detail"]
        same = await store.get_user(alice.user_id)
        assert same is not None
        assert (same.enabled, same.roles, same.name) == (True, frozenset({"admin"}), None)
        assert not [e for e in await console_audits(http) if e["action"].startswith("user.")]
        # Another admin's account: allowed (and alice's own, outside an admin request).
        await admin.set_user_roles(store, clock, "bob", ["admin"])
        r = await http.put(f"{ADMIN}/users/bob/roles", headers=bearer(token), json={"roles": []})
        assert r.status_code == 200, r.text
        await admin.set_user_roles(store, clock, "alice", [])
        refreshed = await store.get_user(alice.user_id)
        assert refreshed is not None
        assert refreshed.roles == frozenset()


async def user_tokens(store: SQLiteStore, user: User, now: int, client_id: str) -> list[str]:
    """A live grant of ``user`` to ``client_id`` with an access and a refresh token for
    API, as a sign-in and consent would leave; the tokens' values."""
    grant = Grant(
        grant_id="grt_" + secrets.token_urlsafe(8), client_id=client_id, user_id=user.user_id,
        username=user.username, scope=frozenset({"read"}), aud=(API,), created_at=now,
        auth_time=now, expires_at=now + 86400,
    )  # fmt: skip
    code = AuthorizationCode(
        code_hash=token_hash(secrets.token_urlsafe(16)), grant_id=grant.grant_id,
        client_id=client_id, redirect_uri="https://app.example.test/cb",
        code_challenge="x" * 43, created_at=now, expires_at=now + 60,
    )  # fmt: skip
    await store.create_authorization_code(grant, code)
    values = [new_access_token(), new_refresh_token()]
    tokens = [
        NewToken(
            TokenRecord(
                token_hash=token_hash(value),
                kind=kind,
                client_id=client_id,
                scope=grant.scope,
                aud=grant.aud,
                iat=now,
                nbf=now,
                exp=now + 3600,
                jti=secrets.token_urlsafe(8),
                sub=user.user_id,
                username=user.username,
                grant_id=grant.grant_id,
            )
        )
        for kind, value in zip(("access_token", "refresh_token"), values, strict=True)
    ]
    assert await store.issue_grant_tokens(grant.grant_id, tokens, now)
    return values


class TestItemActions:
    """The item pages' actions beyond editing: a client's secret rotated (confirmed, shown
    once), a user signed out everywhere; each the API's operation, audited alike."""

    async def test_rotate_client_secret(
        self,
        http: httpx.AsyncClient,
        people: None,
        setup: Setup,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Rotate secret asks first, then shows the new secret once on a no-store answer
        page: the old secret stops working at the token endpoint, the new one works, and
        the audit event names the client but never the secret (nor does the log)."""
        await sign_in(http, "alice")
        page = await http.get("/admin/clients/app-1")
        assert 'id="rotate-secret"' in page.text
        csrf = hidden(page.text)["csrf"]
        grant = {"grant_type": "client_credentials"}
        r = await http.post("/admin/clients/app-1", data={"csrf": "forged",
                                                          "action": "rotate-secret"})  # fmt: skip
        assert r.status_code == 403
        r = await http.post("/admin/clients/app-1", data={"csrf": csrf, "action": "rotate-secret"})
        assert r.status_code == 200, r.text
        assert "Rotate the secret of client app-1?" in r.text
        confirm = hidden(r.text)
        assert (confirm["action"], confirm["confirm"]) == ("rotate-secret", "yes")
        assert (await http.post(TOKEN, data=grant, auth=setup.app.auth)).status_code == 200

        r = await http.post("/admin/clients/app-1", data=confirm)
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        found = re.search(r'<p id="secret" class="secret">(ks_cs_[^<]+)</p>', r.text)
        assert found is not None
        secret = found[1]
        assert "The old secret no longer works." in r.text
        assert (await http.post(TOKEN, data=grant, auth=setup.app.auth)).status_code == 401
        r = await http.post(TOKEN, data=grant, auth=("app-1", secret))
        assert r.status_code == 200, r.text

        for path in ("/admin/clients/app-1", "/admin/clients", "/admin/"):
            assert secret not in (await http.get(path)).text
        token = http.cookies["__Host-ks_admin"]
        events = (await http.get(f"{ADMIN}/events", headers=bearer(token))).text
        assert secret not in events
        assert secret not in caplog.text
        audits = [(e["action"], e["target"], e["via"], e["actor_user"])
                  for e in await console_audits(http)]  # fmt: skip
        assert audits == [("client.rotate_secret", "app-1", "console", "alice")]

    async def test_no_rotation_without_a_secret(
        self, http: httpx.AsyncClient, people: None, register_client: Any
    ) -> None:
        """A public client has no secret: no Rotate button, and a forged POST is refused
        with an alert; nothing is audited."""
        await register_client(
            "spa", auth_method="none", redirect_uris=["https://app.example.test/cb"]
        )
        await sign_in(http, "alice")
        page = await http.get("/admin/clients/spa")
        assert 'id="rotate-secret"' not in page.text
        r = await http.post(
            "/admin/clients/spa",
            data={"csrf": hidden(page.text)["csrf"], "action": "rotate-secret", "confirm": "yes"},
        )
        assert r.status_code == 400
        assert 'role="alert"' in r.text
        assert "has no secret" in r.text
        assert await console_audits(http) == []

    async def test_sign_user_out_everywhere(
        self,
        http: httpx.AsyncClient,
        people: None,
        setup: Setup,
        store: SQLiteStore,
        clock: FixedClock,
    ) -> None:
        """Sign out everywhere revokes the user's grants and tokens (inactive at
        introspection, RFC 7662 §2.2), says how many, and is audited with that count."""
        bob = await store.get_user_by_name("bob")
        assert bob is not None
        values = await user_tokens(store, bob, clock.now(), "app-1")
        for value in values:
            r = await http.post(INTROSPECT, data={"token": value}, auth=setup.rs.auth)
            assert r.json()["active"] is True
        await sign_in(http, "alice")
        path = f"/admin/users/{bob.user_id}"
        page = await http.get(path)
        assert 'id="revoke-sessions"' in page.text
        csrf = hidden(page.text)["csrf"]
        r = await http.post(path, data={"csrf": "forged", "action": "revoke-sessions"})
        assert r.status_code == 403
        r = await http.post(path, data={"csrf": csrf, "action": "revoke-sessions"})
        assert r.status_code == 200, r.text
        assert "Signed out everywhere: 2 live token(s) revoked." in r.text
        assert 'role="status"' in r.text
        for value in values:
            r = await http.post(INTROSPECT, data={"token": value}, auth=setup.rs.auth)
            assert r.json() == {"active": False}
        still = await store.get_user(bob.user_id)
        assert still is not None
        assert still.enabled  # signed out, not disabled
        audits = [(e["action"], e["target"], e["username"], e["tokens_revoked"], e["via"])
                  for e in await console_audits(http)]  # fmt: skip
        assert audits == [("user.revoke_sessions", bob.user_id, "bob", 2, "console")]
