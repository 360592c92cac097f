"""The admin console at /admin/ (docs/admin.md): server-rendered pages over the admin
operations, for people who hold the ``admin`` role. Signing in, the session, cookies, CSRF
and rendering: admin_console_base.py."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keystile import admin, key_admin, token_admin
from keystile.core.signing_keys import SIGNING_ALGS
from keystile.errors import ConfigurationError
from keystile.server.admin_console_base import (
    AUTH_METHODS,
    CALLBACK_PATH,
    CONSOLE,
    DASHBOARD_REFRESH,
)
from keystile.server.admin_console_edit import ConsoleEditPages
from keystile.server.admin_http import AdminCaller
from keystile.store.base import Conflict, NotFound

__all__ = ["AdminConsole"]


class AdminConsole(ConsoleEditPages):
    """The console's routes and pages (one item's pages: admin_console_edit.py)."""

    def routes(self) -> list[Route]:
        if not self.settings.admin_api:
            return []
        return [
            Route("/admin", self._to_console, methods=["GET"]),
            Route(CONSOLE, self._page_route(self.dashboard_page), methods=["GET"]),
            Route(CALLBACK_PATH, self._guard(self.callback_page), methods=["GET"]),
            Route("/admin/clients", self._page_route(self.clients_page), methods=["GET", "POST"]),
            Route(
                "/admin/resource-servers",
                self._page_route(self.resources_page),
                methods=["GET", "POST"],
            ),
            Route(
                "/admin/clients/{client_id}",
                self._page_route(self.client_page),
                methods=["GET", "POST"],
            ),
            # A resource identifier is a URI: it may hold slashes even when encoded.
            Route(
                "/admin/resource-servers/{identifier:path}",
                self._page_route(self.resource_page),
                methods=["GET", "POST"],
            ),
            Route("/admin/users", self._page_route(self.users_page), methods=["GET", "POST"]),
            Route("/admin/users/{user}", self._page_route(self.user_page), methods=["GET", "POST"]),
            Route("/admin/signing-keys", self._page_route(self.keys_page), methods=["GET", "POST"]),
            Route("/admin/tokens", self._page_route(self.tokens_page), methods=["GET", "POST"]),
            Route("/admin/logout", self._page_route(self.logout), methods=["POST"]),
        ]

    # -- pages ------------------------------------------------------------------------------

    async def dashboard_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        return await self._page(
            request,
            token,
            caller,
            "admin_dashboard.html",
            dashboard=await self.dashboard.view(),
            refresh=DASHBOARD_REFRESH,
        )

    async def clients_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        form: dict[str, str] = dict.fromkeys(
            ("client_id", "name", "scope", "audience", "redirect_uri"), ""
        )
        form["auth_method"] = "client_secret_basic"
        error, status = None, 200
        if request.method == "POST":
            posted = await self._form(request, token)
            form = {k: posted.get(k) or "" for k in form} | {
                "auth_method": posted.get("auth_method") or "client_secret_basic"
            }
            try:
                client, secret = await admin.create_client(
                    self.store,
                    self.clock,
                    client_id=form["client_id"].strip(),
                    name=form["name"].strip() or None,
                    auth_method=form["auth_method"],
                    scopes=form["scope"].split(),
                    default_audience=form["audience"].split(),
                    redirect_uris=form["redirect_uri"].split(),
                    access_token_ttl=self.settings.access_token_ttl,
                )
            except (ConfigurationError, Conflict) as exc:
                error, status = str(exc), 409 if isinstance(exc, Conflict) else 400
            else:
                await self._audit(request, caller, "client.create", client.client_id, 201)
                shown = secret if client.auth_method not in ("none", "private_key_jwt") else None
                return await self._page(
                    request,
                    token,
                    caller,
                    "admin_created.html",
                    status=201,
                    heading=f"Client {client.client_id} created",
                    secret=shown,
                    back="/admin/clients",
                )
        return await self._page(
            request,
            token,
            caller,
            "admin_clients.html",
            status=status,
            clients=await admin.list_clients(self.store),
            form=form,
            error=error,
            auth_methods=AUTH_METHODS,
        )

    async def resources_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        form = dict.fromkeys(("identifier", "name", "clients"), "")
        error, status = None, 200
        if request.method == "POST":
            posted = await self._form(request, token)
            form = {k: posted.get(k) or "" for k in form}
            try:
                rs = await admin.create_resource_server(
                    self.store,
                    self.clock,
                    identifier=form["identifier"].strip(),
                    name=form["name"].strip() or None,
                    introspection_clients=form["clients"].split(),
                )
            except (ConfigurationError, Conflict, NotFound) as exc:
                error, status = str(exc), 409 if isinstance(exc, Conflict) else 400
            else:
                await self._audit(request, caller, "resource_server.create", rs.identifier, 201)
                return self._redirect("/admin/resource-servers")
        servers = [
            admin.resource_server_view(rs) for rs in await self.store.list_resource_servers()
        ]
        return await self._page(
            request,
            token,
            caller,
            "admin_resources.html",
            status=status,
            servers=servers,
            form=form,
            error=error,
        )

    async def users_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        form = {"username": "", "admin": ""}
        error, status = None, 200
        if request.method == "POST":
            posted = await self._form(request, token)
            form = {"username": posted.get("username") or "", "admin": posted.get("admin") or ""}
            try:
                user = await admin.create_user(
                    self.store,
                    self.clock,
                    username=form["username"].strip(),
                    password=posted.get("password") or "",
                    roles=[admin.ADMIN_ROLE] if form["admin"] else [],
                )
            except (ConfigurationError, Conflict) as exc:
                error, status = str(exc), 409 if isinstance(exc, Conflict) else 400
            else:
                await self._audit(request, caller, "user.create", user.user_id, 201)
                return self._redirect("/admin/users")
        users = [admin.user_view(u) for u in await self.store.list_users()]
        return await self._page(
            request, token, caller, "admin_users.html", status=status, users=users, form=form,
            error=error,
        )  # fmt: skip

    async def keys_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        error, status = None, 200
        if request.method == "POST":
            posted = await self._form(request, token)
            try:
                kek = key_admin.require_kek(self.settings)
                if posted.get("action") == "rotate":
                    active, _ = await key_admin.rotate(self.store, self.clock, kek)
                    await self._audit(request, caller, "signing_key.rotate", active.kid, 200)
                else:
                    alg = posted.get("alg") or "ES256"
                    key = await key_admin.create_key(self.store, self.clock, kek, alg=alg)
                    await self._audit(request, caller, "signing_key.create", key.kid, 201)
            except (ConfigurationError, Conflict, NotFound) as exc:
                error, status = str(exc), 409 if isinstance(exc, Conflict) else 400
            else:
                return self._redirect("/admin/signing-keys")
        now = self.clock.now()
        keys = [key_admin.key_view(k, now) for k in await self.store.list_signing_keys()]
        return await self._page(
            request, token, caller, "admin_keys.html", status=status, keys=keys, error=error,
            algs=SIGNING_ALGS,
        )  # fmt: skip

    async def tokens_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        """Find a token by jti or digest; revoke it, or every token of a client."""
        query = {"jti": request.query_params.get("jti", ""), "digest": ""}
        query["digest"] = request.query_params.get("digest", "")
        error, status, notice, found = None, 200, None, None
        try:
            if request.method == "POST":
                posted = await self._form(request, token)
                if posted.get("action") == "revoke-client":
                    client_id = (posted.get("client_id") or "").strip()
                    n = await token_admin.revoke_client_tokens(self.store, self.clock, client_id)
                    await self._audit(request, caller, "client.revoke_tokens", client_id, 200)
                    notice = f"{n} live token(s) of client {client_id} revoked."
                else:
                    record = await token_admin.revoke_token(
                        self.store, self.clock, jti=posted.get("jti") or ""
                    )
                    await self._audit(request, caller, "token.revoke", record.jti, 200)
                    query = {"jti": record.jti, "digest": ""}
                    notice = "Token revoked."
            if query["jti"] or query["digest"]:
                record = await token_admin.find_token(
                    self.store, jti=query["jti"] or None, digest=query["digest"] or None
                )
                found = token_admin.token_view(record, self.clock.now())
        except (ConfigurationError, NotFound) as exc:
            error, status = str(exc), 404 if isinstance(exc, NotFound) else 400
        return await self._page(
            request, token, caller, "admin_tokens.html", status=status, query=query,
            found=found, error=error, notice=notice,
        )  # fmt: skip
