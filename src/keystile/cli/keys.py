"""`keystile key`: signing keys for JWT access tokens and signed introspection answers
(RFC 7517; docs/tokens.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from keystile.admin_audit import change
from keystile.cli.common import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    echo_list,
    load_settings,
    run_admin,
)
from keystile.clock import SystemClock

key_app = typer.Typer(
    help="Signing keys for JWT access tokens and signed introspection answers.",
    no_args_is_help=True,
)

AlgOpt = Annotated[
    str | None, typer.Option("--alg", help="ES256 (default), RS256, Ed25519 or EdDSA.")
]


def _key_views(keys: list[Any]) -> list[dict[str, Any]]:
    from keystile import key_admin

    now = SystemClock().now()
    return [key_admin.key_view(k, now) for k in keys]


def _print_keys(views: list[dict[str, Any]], as_json: bool) -> None:
    echo_list(views, as_json, _key_line, empty="no signing keys")


def _key_line(v: dict[str, Any]) -> str:
    shown = "published" if v["published"] else "unpublished"
    # An ID-token key (docs/oidc.md) signs only ID tokens of its algorithm.
    use = "  ID tokens only" if v.get("use") == "id_token" else ""
    return f"{v['kid']}  {v['alg']:<7} {v['state']:<7} {shown}{use}"


@key_app.command("list")
def key_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List signing keys: next, active and retired, and whether the JWKS publishes them."""
    settings = load_settings(config, db=db)
    _print_keys(_key_views(run_admin(settings, lambda store: store.list_signing_keys())), as_json)


@key_app.command("create")
def key_create(
    alg: AlgOpt = None, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Make a next key: published now, signing from the next `keystile key rotate`."""
    from keystile import key_admin

    settings = load_settings(config, db=db)
    key = run_admin(
        settings,
        lambda store: key_admin.create_key(
            store, SystemClock(), key_admin.require_kek(settings), alg=alg or "ES256"
        ),
        create=True,
        audit=lambda key: change("signing_key.create", key.kid, alg=key.alg),
    )
    _print_keys(_key_views([key]), as_json)


@key_app.command("rotate")
def key_rotate(
    alg: AlgOpt = None, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Activate the next key (or a new one) and retire the active key, in every server."""
    from keystile import key_admin

    settings = load_settings(config, db=db)
    active, retired = run_admin(
        settings,
        lambda store: key_admin.rotate(
            store, SystemClock(), key_admin.require_kek(settings), alg=alg
        ),
        audit=lambda keys: change(
            "signing_key.rotate", keys[0].kid, retired=keys[1].kid if keys[1] else None
        ),
    )
    _print_keys(_key_views([active] + ([retired] if retired else [])), as_json)


@key_app.command("retire")
def key_retire(
    kid: Annotated[
        str, typer.Argument(help='The key id (put "--" before it: a kid may start with "-").')
    ],
    immediately: Annotated[
        bool,
        typer.Option(
            "--immediately",
            help="Unpublish now: every token it signed stops validating (a compromised key).",
        ),
    ] = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retire a key that does not sign (rotate away from the active key first)."""
    from keystile import key_admin

    settings = load_settings(config, db=db)
    key = run_admin(
        settings,
        lambda store: key_admin.retire(store, SystemClock(), kid, immediately=immediately),
        audit=lambda key: change("signing_key.retire", key.kid, immediately=immediately),
    )
    _print_keys(_key_views([key]), as_json)
