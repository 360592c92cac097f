"""`keystile client registration-token`: initial access tokens for dynamic client
registration (RFC 7591 §3; docs/registration.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keystile import registration_admin
from keystile.admin_audit import change
from keystile.cli.common import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    echo_data,
    echo_list,
    fail,
    load_settings,
    run_admin,
)
from keystile.clock import SystemClock

registration_token_app = typer.Typer(
    help="Initial access tokens for dynamic client registration (RFC 7591).",
    no_args_is_help=True,
)


@registration_token_app.command("create")
def token_create(
    uses: Annotated[
        int | None, typer.Option("--uses", help="Registrations it allows (default 1).")
    ] = None,
    unlimited: Annotated[
        bool, typer.Option("--unlimited", help="Any number of registrations until it expires.")
    ] = False,
    ttl: Annotated[int, typer.Option("--ttl", help="Lifetime in seconds (default a day).")] = 86400,
    description: Annotated[
        str, typer.Option("--description", help="What it is for (shown in the list).")
    ] = "",
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an initial access token; prints it once (only its SHA-256 is kept)."""
    if unlimited and uses is not None:
        fail("give --uses or --unlimited, not both", 2)
    settings = load_settings(config, db=db)
    clock = SystemClock()
    token, value = run_admin(
        settings,
        lambda store: registration_admin.create_initial_access_token(
            store,
            clock,
            ttl=ttl,
            uses=None if unlimited else (1 if uses is None else uses),
            description=description,
        ),
        create=True,
        # Never the token's value: the event names its id only.
        audit=lambda made: change("registration_token.create", made[0].token_id),
    )
    view = {**registration_admin.initial_token_view(token, clock.now()), "token": value}
    echo_data(view, as_json)
    if not as_json:
        typer.echo("\nThe token is shown only now; keystile keeps only its SHA-256 digest.")


@registration_token_app.command("list")
def token_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List initial access tokens (never their values)."""
    settings = load_settings(config, db=db)
    tokens = run_admin(settings, lambda store: store.list_initial_access_tokens())
    now = SystemClock().now()
    views = [registration_admin.initial_token_view(t, now) for t in tokens]
    echo_list(views, as_json, _token_line, empty="no initial access tokens")


def _token_line(v: dict[str, Any]) -> str:
    state = "live   " if v["live"] else "spent  "
    uses = "unlimited" if v["uses_left"] is None else f"{v['uses_left']} left"
    return f"{v['token_id']:<18} {state} {uses:<10} expires {v['expires_at']}  {v['description']}"


@registration_token_app.command("revoke")
def token_revoke(
    token_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Revoke an initial access token: it registers nothing more."""
    settings = load_settings(config, db=db)
    run_admin(
        settings,
        lambda store: registration_admin.revoke_initial_access_token(store, token_id),
        audit=lambda _: change("registration_token.delete", token_id),
    )
    echo_data({"token_id": token_id, "revoked": True}, as_json, f"{token_id} revoked")
