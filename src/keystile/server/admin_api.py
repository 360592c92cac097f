"""The admin API under /admin/v1 (docs/admin.md): JSON over the operations the CLI runs.

This module holds the table of operations (routes and what the OpenAPI document says of
them), authentication of each request, and the audit event of each change. Every handler
(admin_handlers.py) parses its input, calls the shared operation (admin.py, key_admin.py,
registration_admin.py, token_admin.py) and renders the result; failures become RFC 9457
problem details. Every change writes an ``admin_action`` event: who (client id), what,
when and from where. Off unless ``admin_api`` is set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keystile.admin_audit import admin_action, record_admin_action
from keystile.clock import Clock
from keystile.server.admin_handlers import (
    PREFIX,
    create_client,
    create_key,
    create_registration_token,
    create_resource_server,
    create_user,
    delete_client,
    delete_registration_token,
    delete_resource_server,
    delete_user,
    disable_client,
    disable_user,
    enable_client,
    enable_user,
    find_token,
    get_client,
    get_resource_server,
    get_stats,
    get_user,
    list_clients,
    list_keys,
    list_registration_tokens,
    list_resource_servers,
    list_users,
    retire_key,
    revoke_client_tokens,
    revoke_token,
    revoke_user_sessions,
    rotate_client_secret,
    rotate_keys,
    set_user_password,
    set_user_roles,
    tail_events,
    update_client,
    update_resource_server,
    update_user_claims,
)
from keystile.server.admin_http import (
    AdminAuthenticator,
    AdminCaller,
    Call,
    Handler,
    json_response,
    problem_from,
)
from keystile.server.instance_stats import InstanceStatsBoard
from keystile.server.keys import SigningKeys
from keystile.settings import ServerSettings
from keystile.store.base import Store

__all__ = ["OPERATIONS", "PREFIX", "AdminApi", "Operation", "write_audit"]


@dataclass(frozen=True)
class Operation:
    """One route, and what the OpenAPI document says of it (server/admin_openapi.py)."""

    method: str
    path: str  # under PREFIX, with {name} parameters as OpenAPI writes them
    operation_id: str
    summary: str
    handler: Handler
    tag: str
    request: str | None = None  # schema name of the JSON body
    response: str | None = None  # schema name of the answer (None: a plain object)
    status: int = 200
    query: tuple[str, ...] = ()

    @property
    def writes(self) -> bool:
        return self.method != "GET"


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/clients", "listClients", "List clients", list_clients, "clients",
              response="ClientPage", query=("limit", "cursor")),
    Operation("POST", "/clients", "createClient", "Register a client (its secret is shown once)",
              create_client, "clients", request="ClientCreate", response="Client", status=201),
    Operation("GET", "/clients/{client_id}", "getClient", "Show a client", get_client, "clients",
              response="Client"),
    Operation("PATCH", "/clients/{client_id}", "updateClient", "Change a client's settings",
              update_client, "clients", request="ClientUpdate", response="Client"),
    Operation("DELETE", "/clients/{client_id}", "deleteClient",
              "Revoke a client's tokens and delete it", delete_client, "clients"),
    Operation("POST", "/clients/{client_id}/enable", "enableClient", "Enable a client",
              enable_client, "clients"),
    Operation("POST", "/clients/{client_id}/disable", "disableClient",
              "Disable a client and revoke its tokens", disable_client, "clients"),
    Operation("POST", "/clients/{client_id}/rotate-secret", "rotateClientSecret",
              "A new secret, shown once", rotate_client_secret, "clients"),
    Operation("POST", "/clients/{client_id}/revoke-tokens", "revokeClientTokens",
              "Revoke every live token of a client", revoke_client_tokens, "tokens"),
    Operation("GET", "/resource-servers", "listResourceServers", "List resource servers",
              list_resource_servers, "resource servers", response="ResourceServerPage",
              query=("limit", "cursor")),
    Operation("POST", "/resource-servers", "createResourceServer", "Register a resource server",
              create_resource_server, "resource servers", request="ResourceServerCreate",
              response="ResourceServer", status=201),
    Operation("GET", "/resource-servers/{identifier}", "getResourceServer",
              "Show a resource server", get_resource_server, "resource servers",
              response="ResourceServer"),
    Operation("PATCH", "/resource-servers/{identifier}", "updateResourceServer",
              "Change a resource server", update_resource_server, "resource servers",
              request="ResourceServerUpdate", response="ResourceServer"),
    Operation("DELETE", "/resource-servers/{identifier}", "deleteResourceServer",
              "Delete a resource server", delete_resource_server, "resource servers"),
    Operation("GET", "/users", "listUsers", "List users", list_users, "users",
              response="UserPage", query=("limit", "cursor")),
    Operation("POST", "/users", "createUser", "Create a user", create_user, "users",
              request="UserCreate", response="User", status=201),
    Operation("GET", "/users/{user}", "getUser", "Show a user (by id or username)", get_user,
              "users", response="User"),
    Operation("PATCH", "/users/{user}", "updateUser",
              "Change a user's OpenID Connect claims (name, email...)", update_user_claims,
              "users", request="UserClaims", response="User"),
    Operation("DELETE", "/users/{user}", "deleteUser", "Revoke everything of a user, delete them",
              delete_user, "users"),
    Operation("POST", "/users/{user}/password", "setUserPassword", "Set a user's password",
              set_user_password, "users", request="Password"),
    Operation("PUT", "/users/{user}/roles", "setUserRoles",
              "Replace a user's roles (admin: the admin console)", set_user_roles, "users",
              request="Roles", response="User"),
    Operation("POST", "/users/{user}/enable", "enableUser", "Enable a user", enable_user, "users"),
    Operation("POST", "/users/{user}/disable", "disableUser",
              "Disable a user and revoke their grants and tokens", disable_user, "users"),
    Operation("POST", "/users/{user}/revoke-sessions", "revokeUserSessions",
              "Sign a user out everywhere (revoke by user)", revoke_user_sessions, "tokens"),
    Operation("GET", "/signing-keys", "listSigningKeys", "List signing keys", list_keys,
              "signing keys", response="SigningKeyPage"),
    Operation("POST", "/signing-keys", "createSigningKey", "Make a next key", create_key,
              "signing keys", request="KeyCreate", response="SigningKey", status=201),
    Operation("POST", "/signing-keys/rotate", "rotateSigningKeys",
              "Activate the next key, retire the active one", rotate_keys, "signing keys",
              request="KeyCreate"),
    Operation("POST", "/signing-keys/{kid}/retire", "retireSigningKey",
              "Retire a key that does not sign", retire_key, "signing keys",
              request="KeyRetire", response="SigningKey"),
    Operation("GET", "/registration-tokens", "listRegistrationTokens",
              "List initial access tokens (never their values)", list_registration_tokens,
              "registration", response="RegistrationTokenPage", query=("limit", "cursor")),
    Operation("POST", "/registration-tokens", "createRegistrationToken",
              "Make an initial access token (its value is shown once)",
              create_registration_token, "registration", request="RegistrationTokenCreate",
              status=201),
    Operation("DELETE", "/registration-tokens/{token_id}", "deleteRegistrationToken",
              "Revoke an initial access token", delete_registration_token, "registration"),
    Operation("GET", "/tokens", "findToken", "Find a token by jti or digest (SHA-256, hex)",
              find_token, "tokens", response="Token", query=("jti", "digest")),
    Operation("POST", "/tokens/revoke", "revokeToken", "Revoke a token (by value, jti or digest)",
              revoke_token, "tokens", request="TokenRevoke", response="Token"),
    Operation("GET", "/stats", "getStats",
              "Dashboard counters of every live AS process, added up and one by one",
              get_stats, "stats", response="Stats"),
    Operation("GET", "/events", "tailEvents", "The event log: latest events, or those after an id",
              tail_events, "events", response="EventPage", query=("after", "limit")),
)  # fmt: skip


class AdminApi:
    """Builds the routes; each request is authenticated, run, audited and rendered."""

    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        clock: Clock,
        signing: SigningKeys,
        *,
        stats: InstanceStatsBoard | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.signing = signing
        self.stats = stats
        self.auth = AdminAuthenticator(settings, store, clock, signing)

    def routes(self) -> list[Route]:
        if not self.settings.admin_api:
            return []
        from keystile.server.admin_openapi import openapi_document

        document = openapi_document(OPERATIONS, PREFIX)

        async def openapi(call: Call) -> Response:
            return json_response(document)

        routes = [
            Route(f"{PREFIX}/openapi.json", self._endpoint(openapi), methods=["GET"]),
        ]
        for op in OPERATIONS:
            # A resource identifier is a URI: it may hold slashes even when encoded.
            path = op.path.replace("{identifier}", "{identifier:path}")
            routes.append(Route(PREFIX + path, self._endpoint(op.handler), methods=[op.method]))
        return routes

    def _endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                caller = await self.auth.authenticate(request)
                call = Call(
                    request,
                    caller,
                    self.store,
                    self.clock,
                    self.settings,
                    self.signing,
                    stats=self.stats,
                )
                response = await handler(call)
            except Exception as exc:
                return problem_from(exc).response()
            if call.audit:
                await write_audit(
                    self.store,
                    self.clock,
                    call.caller,
                    call.audit,
                    method=request.method,
                    path=request.url.path,
                    status=response.status_code,
                )
            return response

        return endpoint


async def write_audit(
    store: Store,
    clock: Clock,
    caller: AdminCaller,
    audit: dict[str, Any],
    *,
    method: str,
    path: str,
    status: int,
) -> None:
    """The audit event of a change: who (client, token jti, user), what, when (the event's
    time), from where. Written after the change commits; never holds a secret. The payload
    is the CLI's too, but for who made the change (keystile/admin_audit.py)."""
    who = {
        "actor": caller.client_id,
        "actor_jti": caller.jti,
        **({"actor_user": caller.user} if caller.user else {}),
        "address": caller.address,
        "method": method,
        "path": path,
        "status": status,
    }
    await record_admin_action(store, clock, admin_action(audit, who))
