"""`keystile token`: find a token by jti or digest and revoke tokens (docs/cli.md). The same
operations as the admin API's /tokens (token_admin.py); never shows a token's value."""

from __future__ import annotations

from typing import Annotated

import typer

from keystile import token_admin
from keystile.admin_audit import change
from keystile.cli.common import ConfigOpt, DbOpt, JsonOpt, echo_data, load_settings, run_admin
from keystile.clock import SystemClock

token_app = typer.Typer(
    help="Tokens: find one by jti or digest, revoke by token or by client.", no_args_is_help=True
)

JtiOpt = Annotated[str | None, typer.Option("--jti", help="The token's jti.")]
DigestOpt = Annotated[
    str | None, typer.Option("--digest", help="SHA-256 of the token, hex (64 digits).")
]


@token_app.command("show")
def token_show(
    jti: JtiOpt = None,
    digest: DigestOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a token's claims and state (active, revoked, expired), never its value."""
    settings = load_settings(config, db=db)
    record = run_admin(
        settings, lambda store: token_admin.find_token(store, jti=jti, digest=digest)
    )
    echo_data(token_admin.token_view(record, SystemClock().now()), as_json)


@token_app.command("revoke")
def token_revoke(
    jti: JtiOpt = None,
    digest: DigestOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke one token (a refresh token with its whole grant), whoever holds it."""
    settings = load_settings(config, db=db)
    clock = SystemClock()
    record = run_admin(
        settings,
        lambda store: token_admin.revoke_token(store, clock, jti=jti, digest=digest),
        audit=lambda record: change("token.revoke", record.jti, client_id=record.client_id),
    )
    echo_data(token_admin.token_view(record, clock.now()), as_json)


@token_app.command("revoke-client")
def token_revoke_client(
    client_id: Annotated[str, typer.Argument(help="The client whose tokens to revoke.")],
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke every live token of a client; the client stays enabled."""
    settings = load_settings(config, db=db)
    n = run_admin(
        settings,
        lambda store: token_admin.revoke_client_tokens(store, SystemClock(), client_id),
        audit=lambda n: change("client.revoke_tokens", client_id, tokens_revoked=n),
    )
    echo_data(
        {"client_id": client_id, "tokens_revoked": n},
        as_json,
        f"{n} live token(s) of client {client_id} revoked",
    )
