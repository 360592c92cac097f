"""The console's pages for one client, resource server or user (docs/admin.md): change
its settings, enable or disable it, delete it after a confirmation, rotate a client's secret
(likewise confirmed), sign a user out everywhere. Each runs the operation the CLI and the
admin API run (admin.py, user_admin.py) and writes the same audit event, with
``"via": "console"``. The lists and the creation forms are in admin_console.py."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response

from keystile import admin
from keystile.core.forms import Form
from keystile.errors import ConfigurationError
from keystile.server.admin_console_base import ConsoleBase
from keystile.server.admin_http import AdminCaller
from keystile.store.base import Conflict, NotFound

_OperationError = (ConfigurationError, Conflict, NotFound)
# The authentication methods whose clients hold a secret the console may rotate.
SECRET_METHODS = ("client_secret_basic", "client_secret_post")


def _status(exc: Exception) -> int:
    return 409 if isinstance(exc, Conflict) else 404 if isinstance(exc, NotFound) else 400


def _changed(before: dict[str, Any], after: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    """The fields an edit changed, named as the API names them (for the audit event)."""
    # None and "" (or False) are the same to a person: no name is an empty name.
    return sorted(name for name in names if (before.get(name) or None) != (after.get(name) or None))


def _ttl(form: Form, name: str, label: str) -> int:
    raw = (form.get(name) or "").strip()
    if not raw.isdigit():
        raise ConfigurationError(f"{label} must be a whole number of seconds")
    return int(raw)


class ConsoleEditPages(ConsoleBase):
    """One item's page: its settings form and its actions."""

    async def _confirm(
        self,
        request: Request,
        token: str,
        caller: AdminCaller,
        *,
        what: str,
        consequence: str,
        back: str,
        op: str = "delete",
        verb: str = "Delete",
    ) -> Response:
        """The confirmation asked before a delete (or a secret rotation): a second POST
        with confirm=yes."""
        return await self._page(
            request, token, caller, "admin_confirm.html", what=what, consequence=consequence,
            action=request.url.path, back=back, op=op, verb=verb,
        )  # fmt: skip

    # -- clients ------------------------------------------------------------------------------

    async def client_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        client_id = str(request.path_params["client_id"])
        back = f"/admin/clients/{quote(client_id, safe='')}"
        error, status, notice = None, 200, None
        client = await admin.get_client(self.store, client_id)  # NotFound: 404 page
        view = admin.client_view(client)
        form = {
            "name": view["name"] or "",
            "scope": view["scope"],
            "audience": " ".join(view["default_audience"]),
            "redirect_uri": " ".join(view["redirect_uris"]),
            "access_token_ttl": str(view["access_token_ttl"]),
        }
        if request.method == "POST":
            posted = await self._form(request, token)
            action = posted.get("action") or ""
            try:
                if action == "update":
                    form = {k: posted.get(k) or "" for k in form}
                    updated = await admin.update_client(
                        self.store,
                        self.clock,
                        client_id,
                        name=form["name"].strip(),
                        scopes=form["scope"].split(),
                        default_audience=form["audience"].split(),
                        redirect_uris=form["redirect_uri"].split(),
                        access_token_ttl=_ttl(posted, "access_token_ttl", "access-token lifetime"),
                    )
                    fields = _changed(
                        view,
                        admin.client_view(updated),
                        ("name", "scope", "default_audience", "redirect_uris", "access_token_ttl"),
                    )
                    await self._audit(
                        request, caller, "client.update", client_id, 200, fields=fields
                    )
                    notice = "Client saved."
                elif action in ("enable", "disable"):
                    n = await admin.set_client_enabled(
                        self.store, self.clock, client_id, action == "enable"
                    )
                    details = {"tokens_revoked": n} if action == "disable" else {}
                    await self._audit(
                        request, caller, f"client.{action}", client_id, 200, **details
                    )
                    notice = f"Client {action}d." + (
                        f" {n} live token(s) revoked." if action == "disable" else ""
                    )
                elif action == "delete":
                    if posted.get("confirm") != "yes":
                        return await self._confirm(
                            request, token, caller, what=f"client {client_id}",
                            consequence="Every live token of the client is revoked, and the "
                            "client is deleted: it can no longer get tokens or introspect.",
                            back=back,
                        )  # fmt: skip
                    n = await admin.delete_client(self.store, self.clock, client_id)
                    await self._audit(
                        request, caller, "client.delete", client_id, 200, tokens_revoked=n
                    )
                    return self._redirect("/admin/clients")
                elif action == "rotate-secret":
                    if posted.get("confirm") != "yes":
                        return await self._confirm(
                            request, token, caller, what=f"the secret of client {client_id}",
                            consequence="The client gets a new secret, shown once; the old "
                            "secret stops working at the token and introspection endpoints "
                            "at once (tokens already issued stay valid).",
                            back=back, op="rotate-secret", verb="Rotate",
                        )  # fmt: skip
                    return await self._rotate_secret(request, caller, token, client_id, back)
                else:
                    raise ConfigurationError(f"unknown action: {action!r}")
            except _OperationError as exc:
                error, status = str(exc), _status(exc)
            view = admin.client_view(await admin.get_client(self.store, client_id))
        return await self._page(
            request, token, caller, "admin_client.html", status=status, client=view, form=form,
            error=error, notice=notice, action=back,
        )  # fmt: skip

    async def _rotate_secret(
        self, request: Request, caller: AdminCaller, token: str, client_id: str, back: str
    ) -> Response:
        """A new secret, shown on this one answer page only (no-store, as every console
        page); the audit event and the log name the client, never the secret."""
        client = await admin.get_client(self.store, client_id)
        if client.auth_method not in SECRET_METHODS:
            raise ConfigurationError(
                f"client {client_id!r} authenticates with {client.auth_method}: it has no secret"
            )
        client, secret = await admin.rotate_secret(self.store, self.clock, client_id)
        await self._audit(request, caller, "client.rotate_secret", client_id, 200)
        return await self._page(
            request, token, caller, "admin_created.html",
            heading=f"New secret for client {client_id}", secret=secret,
            note="The old secret no longer works.", back=back, back_label="Back to the client",
        )  # fmt: skip

    # -- resource servers ---------------------------------------------------------------------

    async def resource_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        identifier = str(request.path_params["identifier"])
        back = f"/admin/resource-servers/{quote(identifier, safe='')}"
        error, status, notice = None, 200, None
        view = admin.resource_server_view(await admin.get_resource_server(self.store, identifier))
        form = {
            "name": view["name"] or "",
            "clients": " ".join(view["introspection_clients"]),
            "claims": " ".join(view["claims"]),
            "rules": " ".join(view["introspection_rules"]),
            "introspection_response": view["introspection_response"],
        }
        if request.method == "POST":
            posted = await self._form(request, token)
            action = posted.get("action") or ""
            try:
                if action == "update":
                    form = {k: posted.get(k) or "" for k in form}
                    rs = await admin.update_resource_server(
                        self.store,
                        self.clock,
                        identifier,
                        name=form["name"].strip(),
                        introspection_clients=form["clients"].split(),
                        claims=form["claims"].split(),
                        rules=form["rules"].split(),
                        introspection_response=form["introspection_response"],
                    )
                    fields = _changed(
                        view,
                        admin.resource_server_view(rs),
                        ("name", "introspection_clients", "claims", "introspection_rules",
                         "introspection_response"),
                    )  # fmt: skip
                    await self._audit(
                        request, caller, "resource_server.update", identifier, 200, fields=fields
                    )
                    notice = "Resource server saved."
                elif action == "delete":
                    if posted.get("confirm") != "yes":
                        return await self._confirm(
                            request, token, caller, what=f"resource server {identifier}",
                            consequence="Its introspecting clients stay; tokens for this "
                            "audience introspect as inactive to them from now on.",
                            back=back,
                        )  # fmt: skip
                    await admin.delete_resource_server(self.store, identifier)
                    await self._audit(request, caller, "resource_server.delete", identifier, 200)
                    return self._redirect("/admin/resource-servers")
                else:
                    raise ConfigurationError(f"unknown action: {action!r}")
            except _OperationError as exc:
                error, status = str(exc), _status(exc)
            view = admin.resource_server_view(
                await admin.get_resource_server(self.store, identifier)
            )
        return await self._page(
            request, token, caller, "admin_resource.html", status=status, rs=view, form=form,
            error=error, notice=notice, action=back,
            responses=("json", "jwt", "jwt-required"),
        )  # fmt: skip

    # -- users --------------------------------------------------------------------------------

    async def user_page(self, request: Request, caller: AdminCaller, token: str) -> Response:
        user = await admin.get_user(self.store, str(request.path_params["user"]))
        user_id = user.user_id
        back = f"/admin/users/{user_id}"
        error, status, notice = None, 200, None
        view = admin.user_view(user)
        form = {
            "name": view["name"] or "",
            "preferred_username": view["preferred_username"] or "",
            "email": view["email"] or "",
            "email_verified": "yes" if view["email_verified"] else "",
            "admin": "yes" if admin.ADMIN_ROLE in view["roles"] else "",
        }
        if request.method == "POST":
            posted = await self._form(request, token)
            action = posted.get("action") or ""
            try:
                if action == "update":
                    form = {k: posted.get(k) or "" for k in form}
                    notice = await self._update_user(request, caller, user_id, view, form, posted)
                elif action in ("enable", "disable"):
                    _, n = await admin.set_user_enabled(
                        self.store, self.clock, user_id, action == "enable", acting=caller.user
                    )
                    details = {"tokens_revoked": n} if action == "disable" else {}
                    await self._audit(
                        request, caller, f"user.{action}", user_id, 200,
                        username=user.username, **details,
                    )  # fmt: skip
                    notice = f"User {action}d." + (
                        f" {n} live token(s) revoked." if action == "disable" else ""
                    )
                elif action == "delete":
                    if posted.get("confirm") != "yes":
                        return await self._confirm(
                            request, token, caller, what=f"user {user.username}",
                            consequence="Their sessions end, their grants and tokens are "
                            "revoked, and the user is deleted.",
                            back=back,
                        )  # fmt: skip
                    _, n = await admin.delete_user(
                        self.store, self.clock, user_id, acting=caller.user
                    )
                    await self._audit(
                        request, caller, "user.delete", user_id, 200,
                        username=user.username, tokens_revoked=n,
                    )  # fmt: skip
                    return self._redirect("/admin/users")
                elif action == "revoke-sessions":
                    _, n = await admin.revoke_user_sessions(self.store, self.clock, user_id)
                    await self._audit(
                        request, caller, "user.revoke_sessions", user_id, 200,
                        username=user.username, tokens_revoked=n,
                    )  # fmt: skip
                    notice = f"Signed out everywhere: {n} live token(s) revoked." + (
                        " That ended your console session too: sign in again."
                        if user.username == caller.user
                        else ""
                    )
                else:
                    raise ConfigurationError(f"unknown action: {action!r}")
            except _OperationError as exc:
                error, status = str(exc), _status(exc)
            view = admin.user_view(await admin.get_user(self.store, user_id))
        return await self._page(
            request, token, caller, "admin_user.html", status=status, person=view, form=form,
            error=error, notice=notice, action=back,
        )  # fmt: skip

    async def _update_user(
        self,
        request: Request,
        caller: AdminCaller,
        user_id: str,
        before: dict[str, Any],
        form: dict[str, str],
        posted: Form,
    ) -> str:
        """Claims, the admin role and (if given) a new password: the operations of
        `keystile user update`, `user set-roles` and `user passwd`, each audited."""
        password = posted.get("password") or ""
        if password:
            admin.check_password(password)  # before any change, so none is half-made
        roles = [admin.ADMIN_ROLE] if form["admin"] else []
        if admin.ADMIN_ROLE in before["roles"] and not roles:  # likewise
            admin.refuse_yourself(before["username"], caller.user, "remove the admin role from")
        updated = await admin.update_user(
            self.store,
            self.clock,
            user_id,
            name=form["name"].strip(),
            preferred_username=form["preferred_username"].strip(),
            email=form["email"].strip(),
            email_verified=bool(form["email_verified"]),
        )
        after = admin.user_view(updated)
        fields = _changed(before, after, ("name", "preferred_username", "email", "email_verified"))
        if fields:
            await self._audit(
                request, caller, "user.update", user_id, 200, username=updated.username,
                fields=fields,
            )  # fmt: skip
        if sorted(roles) != before["roles"]:
            await admin.set_user_roles(self.store, self.clock, user_id, roles, acting=caller.user)
            await self._audit(
                request, caller, "user.roles", user_id, 200, username=updated.username,
                roles=roles,
            )  # fmt: skip
        if password:
            await admin.set_password(self.store, self.clock, user_id, password)
            await self._audit(
                request, caller, "user.password", user_id, 200, username=updated.username
            )
        return "User saved."
