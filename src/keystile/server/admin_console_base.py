"""The admin console's shell (docs/admin.md): signing in, the console session, cookies,
CSRF tokens and rendering. The pages themselves are in admin_console.py.

The console is an OAuth client of its own server, like any other app: a public client
(``keystile-console``, PKCE S256) that sends the browser through /oauth2/authorize (sign-in
and consent pages), redeems the code at the token endpoint (in process, through the same
handler) and keeps the access token in an HttpOnly cookie. Every page checks that token as
the admin API does (admin_http.AdminAuthenticator): active, scope ``keystile:admin``, its
user enabled and an admin, the address allowed. Forms carry CSRF tokens bound to it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keystile import admin
from keystile.admin_audit import change
from keystile.clock import Clock
from keystile.core.forms import Form, parse_form
from keystile.core.metadata import AUTHORIZATION_PATH, TOKEN_PATH
from keystile.core.pkce import s256
from keystile.core.tokens import token_hash
from keystile.errors import ConfigurationError, InvalidRequest, StoreUnavailable
from keystile.server.admin_api import write_audit
from keystile.server.admin_dashboard import Dashboard
from keystile.server.admin_http import ADMIN_SCOPE, AdminAuthenticator, AdminCaller, Problem
from keystile.server.http import Receive, Scope, Send, read_body
from keystile.server.ui_pages import _CSS_MARKUP, SECURITY_HEADERS
from keystile.server.ui_sessions import (
    _TEMPLATES,
    CSRF_COOKIE,
    CSRF_KEY_META,
    PageCookies,
    _mac,
)
from keystile.settings import ServerSettings
from keystile.store.base import Conflict, NotFound, Store

log = logging.getLogger("keystile.admin")

CONSOLE_CLIENT_ID = "keystile-console"
CONSOLE = "/admin/"
CALLBACK_PATH = "/admin/callback"
SESSION_COOKIE = "ks_admin"  # the console's access token: HttpOnly, never seen by script
FLOW_COOKIE = "ks_admin_flow"  # state and PKCE verifier of a sign-in in progress
FLOW_TTL = 600
CONSOLE_TOKEN_TTL = 900  # a console sign-in lasts 15 minutes
DASHBOARD_REFRESH = 2
AUTH_METHODS = (
    ("client_secret_basic", "client secret (HTTP Basic)"),
    ("client_secret_post", "client secret (form)"),
    ("none", "none: a public app (PKCE)"),
)

TokenEndpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConsoleBase(PageCookies):
    """What the console's pages share: the sign-in flow, the session, rendering."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        clock: Clock,
        *,
        auth: AdminAuthenticator,
        token_endpoint: TokenEndpoint,
        dashboard: Dashboard,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.auth = auth
        self.token_endpoint = token_endpoint
        self.dashboard = dashboard
        self.callback = settings.effective_issuer + CALLBACK_PATH
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._client_ready = False
        self._client_lock = asyncio.Lock()
        self._csrf_key: bytes | None = None

    # -- the request cycle ---------------------------------------------------------------

    async def _to_console(self, request: Request) -> Response:
        return self._redirect(CONSOLE)

    def _guard(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as problem:
                return self._message(problem.title, problem.detail, status=problem.status)
            except NotFound as exc:  # a page for a client, resource server or user
                return self._message("Not found", str(exc), status=404, link=True)
            except StoreUnavailable:
                return self._message(
                    "Unavailable", "The store cannot answer; try again.", status=503
                )
            except ConfigurationError as exc:
                # The console's own client cannot be made, e.g. an http issuer off loopback
                # is no redirect URI a client may have (docs/admin.md).
                log.error("admin console unavailable", extra={"error": str(exc)})
                return self._message("Console unavailable", str(exc), status=500)

        return endpoint

    def _page_route(
        self, handler: Callable[[Request, AdminCaller, str], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A page for a signed-in admin: without a live console session, sign in first."""

        async def page(request: Request) -> Response:
            address = request.client.host if request.client else "unknown"
            self.auth.check_address(address)
            token = request.cookies.get(self._name(request, SESSION_COOKIE))
            if not token:
                return await self._start_sign_in(request)
            try:
                caller = await self.auth.check_token(token, address, request.method)
            except Problem as problem:
                if problem.status == 401:  # expired or revoked: sign in again
                    return await self._start_sign_in(request)
                raise
            return await handler(request, caller, token)

        return self._guard(page)

    # -- signing in: the authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636) -------

    async def _ensure_client(self) -> None:
        """The console's own client: public, PKCE, the callback as its one redirect URI,
        scope keystile:admin. Made (or its redirect URI updated) on first use."""
        if self._client_ready:
            return
        async with self._client_lock:
            found = await self.store.get_client(CONSOLE_CLIENT_ID)
            try:
                if found is None:
                    await admin.create_client(
                        self.store,
                        self.clock,
                        client_id=CONSOLE_CLIENT_ID,
                        name="keystile admin console",
                        auth_method="none",
                        grant_types=["authorization_code"],
                        scopes=[ADMIN_SCOPE],
                        redirect_uris=[self.callback],
                        access_token_ttl=CONSOLE_TOKEN_TTL,
                    )
                elif found.redirect_uris != (self.callback,):
                    await admin.update_client(
                        self.store, self.clock, CONSOLE_CLIENT_ID, redirect_uris=[self.callback]
                    )
            except Conflict:
                pass  # another process made it at the same moment
            self._client_ready = True

    async def _start_sign_in(self, request: Request) -> Response:
        await self._ensure_client()
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": CONSOLE_CLIENT_ID,
                "redirect_uri": self.callback,
                "scope": ADMIN_SCOPE,
                "state": state,
                "code_challenge": s256(verifier),
                "code_challenge_method": "S256",
            }
        )
        response = self._redirect(f"{AUTHORIZATION_PATH}?{query}")
        self._set_cookie(response, request, FLOW_COOKIE, f"{state}.{verifier}", FLOW_TTL)
        self._clear_cookie(response, request, SESSION_COOKIE)
        return response

    async def callback_page(self, request: Request) -> Response:
        self.auth.check_address(request.client.host if request.client else "unknown")
        params = request.query_params
        flow = request.cookies.get(self._name(request, FLOW_COOKIE), "")
        state, _, verifier = flow.partition(".")
        given = params.get("state", "").encode("utf-8", "surrogateescape")
        # Compare in constant time; a missing cookie or another state is a forged callback.
        if not state or not verifier or not hmac.compare_digest(state.encode(), given):
            return self._message(
                "Sign-in expired", "Start again from the console.", status=400, link=True
            )
        if params.get("iss") != self.settings.effective_issuer:  # RFC 9207 §2.4
            return self._message("Sign-in failed", "The answer came from another issuer.", 400)
        if "error" in params:
            return self._message(
                "Not signed in", f"The sign-in ended: {params['error']}.", 403, link=True
            )
        status, body = await self._redeem(request, params.get("code", ""), verifier)
        if status != 200 or "access_token" not in body:
            return self._message("Sign-in failed", "The code could not be redeemed.", 400)
        token = str(body["access_token"])
        address = request.client.host if request.client else "unknown"
        try:
            caller = await self.auth.check_token(token, address, "GET")
        except Problem as problem:
            # Not an admin (or no longer): the token is of no use to anyone, revoke it.
            await self.store.revoke_token(token_hash(token), CONSOLE_CLIENT_ID, self.clock.now())
            return self._message("Not allowed", problem.detail, status=problem.status)
        log.info("admin console sign-in", extra={"user": caller.user, "address": address})
        response = self._redirect(CONSOLE)
        max_age = int(body.get("expires_in", CONSOLE_TOKEN_TTL))
        self._set_cookie(response, request, SESSION_COOKIE, token, max_age)
        self._clear_cookie(response, request, FLOW_COOKIE)
        return response

    async def _redeem(self, request: Request, code: str, verifier: str) -> tuple[int, Any]:
        """POST the code to the token endpoint's own handler, in process (RFC 6749 §4.1.3)."""
        form = urlencode(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.callback,
                "client_id": CONSOLE_CLIENT_ID,
                "code_verifier": verifier,
            }
        ).encode("ascii")
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": request.url.scheme,
            "path": TOKEN_PATH,
            "raw_path": TOKEN_PATH.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", str(len(form)).encode()),
            ],
            "client": request.scope.get("client"),
            "server": request.scope.get("server"),
        }
        sent = False
        status = 500
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": form, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.token_endpoint(scope, receive, send)
        try:
            return status, json.loads(b"".join(chunks))
        except ValueError:
            return status, {}

    async def logout(self, request: Request, caller: AdminCaller, token: str) -> Response:
        await self._form(request, token)  # CSRF: a foreign page cannot sign you out
        # Revoke the console's token: a copy of the cookie is of no use afterwards.
        await self.store.revoke_token(token_hash(token), CONSOLE_CLIENT_ID, self.clock.now())
        response = self._message("Signed out", "You left the admin console.", link=True)
        self._clear_cookie(response, request, SESSION_COOKIE)
        return response

    async def _audit(
        self,
        request: Request,
        caller: AdminCaller,
        action: str,
        target: str,
        status: int,
        **details: Any,
    ) -> None:
        """The admin_action event the API writes for the same change (never a secret)."""
        await write_audit(
            self.store,
            self.clock,
            caller,
            change(action, target, **details, via="console"),
            method=request.method,
            path=request.url.path,
            status=status,
        )

    # -- rendering, cookies, CSRF ---------------------------------------------------------------

    async def _page(
        self,
        request: Request,
        token: str,
        caller: AdminCaller,
        template: str,
        *,
        status: int = 200,
        **context: Any,
    ) -> Response:
        cookie = request.cookies.get(self._name(request, CSRF_COOKIE)) or ""
        new_cookie = len(cookie) != 43  # secrets.token_urlsafe(32), as the login pages set
        if new_cookie:
            cookie = secrets.token_urlsafe(32)
        csrf = _mac(await self._key(), "admin-console", cookie, token_hash(token))
        html = self.env.get_template(template).render(
            css=_CSS_MARKUP, csrf=csrf, user=caller.user or caller.client_id, **context
        )
        response = HTMLResponse(html, status_code=status, headers=dict(SECURITY_HEADERS))
        if new_cookie:
            self._set_cookie(response, request, CSRF_COOKIE, cookie)
        return response

    async def _form(self, request: Request, token: str) -> Form:
        """The POSTed form, once its CSRF token is checked (else a 403 Problem)."""
        try:
            body = await read_body(
                request.receive,
                request.headers.get("content-length"),
                self.settings.max_body_bytes,
            )
            form = parse_form(body, request.headers.get("content-type"))
        except InvalidRequest:
            form = Form()
        cookie = request.cookies.get(self._name(request, CSRF_COOKIE), "")
        given = (form.get("csrf") or "").encode("utf-8", "surrogateescape")
        expected = _mac(await self._key(), "admin-console", cookie, token_hash(token))
        # Compare in constant time: the token is a MAC.
        if not cookie or not hmac.compare_digest(expected.encode(), given):
            log.warning("admin console form refused: CSRF token missing or wrong")
            raise Problem(403, "csrf", "Form expired", "Reload the page and try again.")
        return form

    async def _key(self) -> bytes:
        if self._csrf_key is None:
            value = await self.store.get_meta(CSRF_KEY_META)
            if value is None:
                value = await self.store.claim_meta(CSRF_KEY_META, secrets.token_hex(32))
            self._csrf_key = bytes.fromhex(value)
        return self._csrf_key

    def _message(
        self, heading: str, message: str, status: int = 200, *, link: bool = False
    ) -> Response:
        html = self.env.get_template("message.html").render(
            css=_CSS_MARKUP,
            heading=heading,
            message=message,
            alert=status >= 400,
            link={"text": "Admin console", "href": CONSOLE} if link else None,
        )
        return HTMLResponse(html, status_code=status, headers=dict(SECURITY_HEADERS))

    def _redirect(self, location: str, headers: Mapping[str, str] | None = None) -> Response:
        return RedirectResponse(
            location, status_code=303, headers={**SECURITY_HEADERS, **(headers or {})}
        )
