"""The admin console in a real headless Chromium (Debian's, driven by Playwright) against a
real `keystile serve --admin-api`: an admin signs in through the code flow, creates a
client and sees it listed, rotates its secret, revokes a token on the tokens page, reads the
audit trail through the API with the console's own token, and watches the dashboard's
introspection chart move after a burst. Screenshots are saved under the test's tmp_path
(screenshots/)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Creds
from tests.e2e.conftest import RunKeystile, ServerStarter

PASSWORD = "correct horse battery staple"
API = "https://api.example.test"


def _total(page: Any, key: str) -> int:
    return int(page.locator(f"#chart-{key} .total").inner_text())


def test_admin_console_in_a_browser(
    start_server: ServerStarter, run_keystile: RunKeystile, chromium: Any, tmp_path: Path
) -> None:
    """Sign in (login, consent), the dashboard, a new client listed, a token revoked, and
    the dashboard's charts after a burst of introspections; no console page needs script."""
    shots = tmp_path / "screenshots"
    shots.mkdir()
    server = start_server("--admin-api", "--no-demo")
    made = run_keystile("user", "create", "alice", "--password-stdin", "--role", "admin",
                        "--db", str(server.db), stdin=PASSWORD + "\n")  # fmt: skip
    assert made.returncode == 0, made.stderr
    for args in (
        ("client", "create", "rs", "--grant-type", "none", "--json"),
        ("resource", "create", API, "--client", "rs", "--json"),
    ):
        ran = run_keystile(*args, "--db", str(server.db))
        assert ran.returncode == 0, ran.stderr
    rs_secret = re.search(r'"client_secret": "(ks_cs_[^"]+)"', run_keystile(
        "client", "rotate-secret", "rs", "--json", "--db", str(server.db)).stdout)  # fmt: skip
    assert rs_secret is not None
    rs = Creds("rs", rs_secret[1])

    context = chromium.new_context(java_script_enabled=False)  # the console needs none
    page = context.new_page()
    page.goto(f"{server.url}/admin/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.screenshot(path=str(shots / "01-sign-in.png"))
    page.get_by_role("button", name="Sign in").click()
    allow = page.get_by_role("button", name="Allow")
    allow.wait_for()
    assert "Administer this keystile server" in page.content()
    allow.click()
    page.wait_for_url(f"{server.url}/admin/")
    assert page.locator("h1").inner_text() == "Dashboard"
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["ks_admin"]["httpOnly"] is True
    assert cookies["ks_admin"]["sameSite"] == "Lax"
    page.screenshot(path=str(shots / "02-dashboard.png"), full_page=True)

    page.get_by_role("link", name="Clients").click()
    page.get_by_label("Client id").fill("reports")
    page.get_by_label("Scopes (space-separated)").fill("reports:read")
    page.get_by_label("Default audience (resource URIs, space-separated)").fill(API)
    page.get_by_role("button", name="Create client").click()
    assert page.locator("h1").inner_text() == "Client reports created"
    secret = page.locator("#secret").inner_text().strip()
    assert secret.startswith("ks_cs_")
    page.screenshot(path=str(shots / "03-client-created.png"))
    page.get_by_role("link", name="Back to the list").click()
    listed = page.locator("#clients").inner_text()
    assert "reports" in listed
    assert secret not in page.content()
    page.screenshot(path=str(shots / "04-clients.png"), full_page=True)

    # The client's own page: edit, disable and enable; a delete asks first (cancelled).
    page.get_by_role("link", name="reports").click()
    page.get_by_label("Name").fill("Reports v2")
    page.get_by_role("button", name="Save client").click()
    assert page.locator("#notice").inner_text() == "Client saved."
    page.get_by_role("button", name="Disable client").click()
    assert page.locator("#state").inner_text() == "disabled"
    page.get_by_role("button", name="Enable client").click()
    assert page.locator("#state").inner_text() == "enabled"
    page.screenshot(path=str(shots / "04a-client-page.png"), full_page=True)
    page.get_by_role("button", name="Delete client…").click()
    assert page.locator("h1").inner_text() == "Delete client reports?"
    page.screenshot(path=str(shots / "04b-delete-confirmation.png"))
    page.get_by_role("link", name="Cancel").click()
    assert page.get_by_label("Name").input_value() == "Reports v2"
    # Rotate secret asks first too; the new secret is shown once and the old one is dead.
    page.get_by_role("button", name="Rotate secret…").click()
    page.get_by_role("button", name="Rotate the secret of client reports").click()
    assert page.locator("h1").inner_text() == "New secret for client reports"
    old_secret, secret = secret, page.locator("#secret").inner_text().strip()
    assert secret.startswith("ks_cs_")
    assert secret != old_secret
    page.get_by_role("link", name="Back to the client").click()
    assert secret not in page.content()

    # A burst of introspections, then the token revoked on the console's tokens page.
    reports = Creds("reports", secret)
    token = server.issue(reports, scope="reports:read")
    page.goto(f"{server.url}/admin/")
    before = _total(page, "active")
    for _ in range(50):
        assert server.introspect(rs, token).json()["active"] is True
    page.get_by_role("link", name="Tokens").click()
    page.get_by_label("Digest (SHA-256, hex)").fill(hashlib.sha256(token.encode()).hexdigest())
    page.get_by_role("button", name="Find").click()
    assert page.locator("#token-state").inner_text() == "active"
    page.get_by_role("button", name="Revoke this token").click()
    assert page.locator("#token-state").inner_text() == "revoked"
    assert token not in page.content()
    page.screenshot(path=str(shots / "05-token-revoked.png"), full_page=True)
    assert server.introspect(rs, token).json() == {"active": False}
    # The console's own token is a person's token: the API takes it while alice is admin.
    admin_token = cookies["ks_admin"]["value"]
    with httpx.Client(base_url=server.url, trust_env=False) as http:
        r = http.get("/admin/v1/events", headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200, r.text
    # The console's changes (the CLI's, above, are audited too, with "via": "cli").
    audits = [e for e in r.json()["items"]
              if e["type"] == "admin_action" and e["via"] == "console"]  # fmt: skip
    assert [(e["action"], e["actor_user"]) for e in audits] == [
        ("client.create", "alice"),
        ("client.update", "alice"),
        ("client.disable", "alice"),
        ("client.enable", "alice"),
        ("client.rotate_secret", "alice"),
        ("token.revoke", "alice"),
    ]
    page.goto(f"{server.url}/admin/")
    assert _total(page, "active") == before + 50
    assert _total(page, "inactive") >= 1
    assert float(page.locator("#chart-active .rate").inner_text()) > 0
    assert page.locator("#chart-active rect").count() >= 1
    assert page.locator("#instances tbody tr").count() == 1  # one process, this one
    page.screenshot(path=str(shots / "06-dashboard-after-burst.png"), full_page=True)

    page.get_by_role("button", name="Sign out").click()
    assert page.locator("h1").inner_text() == "Signed out"
    context.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        "01-sign-in.png",
        "02-dashboard.png",
        "03-client-created.png",
        "04-clients.png",
        "04a-client-page.png",
        "04b-delete-confirmation.png",
        "05-token-revoked.png",
        "06-dashboard-after-burst.png",
    ]
