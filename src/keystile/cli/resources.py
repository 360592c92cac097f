"""`keystile resource`: resource servers, the APIs that introspect tokens."""

from __future__ import annotations

from typing import Annotated

import typer

from keystile import admin
from keystile.admin_audit import change, given_fields
from keystile.cli.common import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    NameOpt,
    echo_data,
    echo_list,
    load_settings,
    run_admin,
    split_all,
)
from keystile.clock import SystemClock

resource_app = typer.Typer(
    help="Resource servers (APIs that introspect tokens).", no_args_is_help=True
)

IntroClientOpt = Annotated[
    list[str] | None,
    typer.Option("--client", help="Client id the resource server introspects with, repeatable."),
]
ClaimsOpt = Annotated[
    list[str] | None,
    typer.Option("--claims", help="Claims it may see (default: all of RFC 7662), space-separated."),
]
RuleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow", help="Extra introspection rule: 'owner' (tokens of its own clients) or 'any'."
    ),
]
ResponseOpt = Annotated[
    str | None,
    typer.Option(
        "--introspection-response",
        help="json (default), jwt (signed when asked, RFC 9701) or jwt-required.",
    ),
]


@resource_app.command("create")
def resource_create(
    identifier: Annotated[str, typer.Argument(help="Identifier URI (the RFC 8707 resource).")],
    name: NameOpt = None,
    client: IntroClientOpt = None,
    claims: ClaimsOpt = None,
    allow: RuleOpt = None,
    introspection_response: ResponseOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a resource server."""
    settings = load_settings(config, db=db)
    rs = run_admin(
        settings,
        lambda store: admin.create_resource_server(
            store,
            SystemClock(),
            identifier=identifier,
            name=name,
            introspection_clients=split_all(client) or [],
            claims=split_all(claims),
            rules=["audience", *(split_all(allow) or [])],
            introspection_response=introspection_response or "json",
        ),
        create=True,
        audit=lambda rs: change(
            "resource_server.create",
            rs.identifier,
            fields=given_fields(
                name=name,
                introspection_clients=client,
                claims=claims,
                rules=allow,
                introspection_response=introspection_response,
            ),
        ),
    )
    echo_data(admin.resource_server_view(rs), as_json)


@resource_app.command("list")
def resource_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List resource servers."""
    settings = load_settings(config, db=db)
    servers = run_admin(settings, lambda store: store.list_resource_servers())
    echo_list(
        [admin.resource_server_view(rs) for rs in servers],
        as_json,
        lambda v: f"{v['identifier']:<40} clients: {' '.join(v['introspection_clients']) or '-'}",
        empty="no resource servers",
    )


@resource_app.command("show")
def resource_show(
    identifier: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one resource server."""
    settings = load_settings(config, db=db)
    rs = run_admin(settings, lambda store: admin.get_resource_server(store, identifier))
    echo_data(admin.resource_server_view(rs), as_json)


@resource_app.command("update")
def resource_update(
    identifier: str,
    name: NameOpt = None,
    client: IntroClientOpt = None,
    claims: ClaimsOpt = None,
    allow: RuleOpt = None,
    introspection_response: ResponseOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a resource server (only the options given; lists are replaced whole)."""
    settings = load_settings(config, db=db)
    rs = run_admin(
        settings,
        lambda store: admin.update_resource_server(
            store,
            SystemClock(),
            identifier,
            name=name,
            introspection_clients=split_all(client),
            claims=split_all(claims),
            rules=None if allow is None else ["audience", *(split_all(allow) or [])],
            introspection_response=introspection_response,
        ),
        audit=lambda rs: change(
            "resource_server.update",
            rs.identifier,
            fields=given_fields(
                name=name,
                introspection_clients=client,
                claims=claims,
                rules=allow,
                introspection_response=introspection_response,
            ),
        ),
    )
    echo_data(admin.resource_server_view(rs), as_json)


@resource_app.command("delete")
def resource_delete(
    identifier: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete a resource server; its clients can no longer introspect."""
    settings = load_settings(config, db=db)
    run_admin(
        settings,
        lambda store: admin.delete_resource_server(store, identifier),
        audit=lambda _: change("resource_server.delete", identifier),
    )
    echo_data(
        {"identifier": identifier, "deleted": True},
        as_json,
        f"resource server {identifier} deleted",
    )
