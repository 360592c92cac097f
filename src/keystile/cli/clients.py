"""`keystile client`: register, show, change, disable and delete OAuth clients."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from keystile import admin
from keystile.admin_audit import change, field_names, given_fields
from keystile.cli.common import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    NameOpt,
    echo_data,
    echo_list,
    fail,
    load_settings,
    require_database,
    run_admin,
    split_all,
)
from keystile.cli.registration import registration_token_app
from keystile.clock import SystemClock

client_app = typer.Typer(help="OAuth clients.", no_args_is_help=True)
client_app.add_typer(registration_token_app, name="registration-token")

AuthOpt = Annotated[
    str | None,
    typer.Option(
        "--auth-method",
        help="client_secret_basic (default), client_secret_post, private_key_jwt or none.",
    ),
]
GrantOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grant-type",
        "--grant",
        help="client_credentials, authorization_code or refresh_token, repeatable ('none' for "
        "none). Default: client_credentials, or authorization_code and refresh_token for a "
        "public client or one with redirect URIs.",
    ),
]
RedirectOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--redirect-uri",
        help="Redirect URI for authorization_code, repeatable; on update replaces the list "
        "('' for none).",
    ),
]
PostLogoutOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--post-logout-redirect-uri",
        help="Where RP-initiated logout may send the browser back to (exact match), "
        "repeatable; on update replaces the list ('' for none).",
    ),
]
IdTokenAlgOpt = Annotated[
    str | None,
    typer.Option(
        "--id-token-alg",
        help="id_token_signed_response_alg: ES256, RS256, Ed25519 or EdDSA (default: the "
        "active signing key's; '' resets).",
    ),
]
LogoutRevokesOpt = Annotated[
    bool | None,
    typer.Option(
        "--logout-revokes-grants/--logout-keeps-grants",
        help="Whether RP-initiated logout also revokes this client's grants for the user "
        "(default: keeps them).",
    ),
]
PublicOpt = Annotated[
    bool,
    typer.Option(
        "--public", help="A public client (auth method none): a native or browser app, no secret."
    ),
]
RefreshTtlOpt = Annotated[
    int | None,
    typer.Option("--refresh-ttl", help="Refresh-token idle lifetime, seconds (default 14 days)."),
]
RefreshMaxTtlOpt = Annotated[
    int | None,
    typer.Option(
        "--refresh-max-ttl",
        help="Absolute lifetime of a grant's refresh tokens, seconds (default 30 days).",
    ),
]
ScopeOpt = Annotated[
    list[str] | None, typer.Option("--scope", help="Allowed scopes, space-separated or repeated.")
]
AudOpt = Annotated[
    list[str] | None,
    typer.Option("--audience", help="Default audience URI (RFC 8707 resource), repeatable."),
]
TtlOpt = Annotated[int | None, typer.Option("--ttl", help="Access-token lifetime, seconds.")]
TokenFormatOpt = Annotated[
    str | None,
    typer.Option("--token-format", help="Access tokens: opaque (default) or jwt (RFC 9068)."),
]
RequireDpopOpt = Annotated[
    bool | None,
    typer.Option(
        "--require-dpop/--no-require-dpop",
        help="Refuse token requests without a DPoP proof (RFC 9449); default: optional.",
    ),
]
JwksOpt = Annotated[
    Path | None,
    typer.Option("--jwks", help="JWK Set file with the client's public keys (private_key_jwt)."),
]


def _read_jwks(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}", 2)
        raise  # unreachable


def _grants(values: list[str] | None) -> list[str] | None:
    grants = split_all(values)
    if grants is None:
        return None
    return [g for g in grants if g != "none"]


def _redirects(values: list[str] | None) -> list[str] | None:
    """Redirect URIs as given, one per option (a URI may hold commas); '' drops out."""
    if values is None:
        return None
    return [v for v in values if v != ""]


def _auth_method(auth_method: str | None, public: bool) -> str | None:
    if public:
        if auth_method not in (None, "none"):
            fail(f"--public means auth method none, not {auth_method}", 2)
        return "none"
    return auth_method


# What POST /admin/v1/clients sets when not given: its audit event names them too.
_CREATE_DEFAULTS = ("access_token_ttl", "scopes", "default_audience", "redirect_uris")


@client_app.command("create")
def client_create(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    name: NameOpt = None,
    auth_method: AuthOpt = None,
    grant_type: GrantOpt = None,
    scope: ScopeOpt = None,
    audience: AudOpt = None,
    ttl: TtlOpt = None,
    token_format: TokenFormatOpt = None,
    jwks: JwksOpt = None,
    redirect_uri: RedirectOpt = None,
    public: PublicOpt = False,
    refresh_ttl: RefreshTtlOpt = None,
    refresh_max_ttl: RefreshMaxTtlOpt = None,
    id_token_alg: IdTokenAlgOpt = None,
    post_logout_redirect_uri: PostLogoutOpt = None,
    logout_revokes_grants: LogoutRevokesOpt = None,
    require_dpop: RequireDpopOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a client and print its secret, once (none for a public client)."""
    settings = load_settings(config, db=db)
    grants = _grants(grant_type)
    method = _auth_method(auth_method, public)
    jwks_text = _read_jwks(jwks)
    fields = sorted(
        {
            *given_fields(
                name=name, auth_method=method, grant_types=grants, scopes=scope,
                default_audience=audience, access_token_ttl=ttl, token_format=token_format,
                jwks=jwks_text, redirect_uris=redirect_uri, refresh_token_ttl=refresh_ttl,
                refresh_token_max_ttl=refresh_max_ttl, id_token_signed_response_alg=id_token_alg,
                post_logout_redirect_uris=post_logout_redirect_uri,
                logout_revokes_grants=logout_revokes_grants, require_dpop=require_dpop,
            ),
            *field_names(_CREATE_DEFAULTS),
        }
    )  # fmt: skip
    client, secret = run_admin(
        settings,
        lambda store: admin.create_client(
            store,
            SystemClock(),
            client_id=client_id,
            name=name,
            auth_method=method or "client_secret_basic",
            grant_types=grants,
            scopes=split_all(scope) or [],
            default_audience=split_all(audience) or [],
            access_token_ttl=settings.access_token_ttl if ttl is None else ttl,
            token_format=token_format or "opaque",
            jwks=jwks_text,
            redirect_uris=_redirects(redirect_uri) or [],
            refresh_token_ttl=refresh_ttl,
            refresh_token_max_ttl=refresh_max_ttl,
            id_token_signed_response_alg=id_token_alg,
            post_logout_redirect_uris=_redirects(post_logout_redirect_uri) or [],
            logout_revokes_grants=bool(logout_revokes_grants),
            require_dpop=bool(require_dpop),
        ),
        create=True,
        audit=lambda made: change("client.create", made[0].client_id, fields=fields),
    )
    if client.auth_method in ("private_key_jwt", "none"):
        # It authenticates with its keys, or not at all (a public client): no secret.
        echo_data(admin.client_view(client), as_json)
        return
    view = {**admin.client_view(client), "client_secret": secret}
    echo_data(view, as_json)
    if not as_json:
        typer.echo("\nThe secret is shown only now; keystile keeps only its SHA-256 digest.")


@client_app.command("list")
def client_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List clients."""
    settings = load_settings(config, db=db)
    # How each came to be: the CLI, or dynamic registration (docs/registration.md).
    views = run_admin(settings, admin.list_clients)
    echo_list(views, as_json, _client_line, empty="no clients")


def _client_line(v: dict[str, Any]) -> str:
    state = "enabled " if v["enabled"] else "disabled"
    return (
        f"{v['client_id']:<24} {state} {v['registration']:<20} {v['scope'] or '-':<24} {v['name']}"
    )


@client_app.command("show")
def client_show(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one client (never its secret)."""
    settings = load_settings(config, db=db)
    client = run_admin(settings, lambda store: admin.get_client(store, client_id))
    echo_data(admin.client_view(client), as_json)


@client_app.command("update")
def client_update(
    client_id: str,
    name: NameOpt = None,
    auth_method: AuthOpt = None,
    grant_type: GrantOpt = None,
    scope: ScopeOpt = None,
    audience: AudOpt = None,
    ttl: TtlOpt = None,
    token_format: TokenFormatOpt = None,
    jwks: JwksOpt = None,
    redirect_uri: RedirectOpt = None,
    public: PublicOpt = False,
    refresh_ttl: RefreshTtlOpt = None,
    refresh_max_ttl: RefreshMaxTtlOpt = None,
    id_token_alg: IdTokenAlgOpt = None,
    post_logout_redirect_uri: PostLogoutOpt = None,
    logout_revokes_grants: LogoutRevokesOpt = None,
    require_dpop: RequireDpopOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a client's settings (only the options given)."""
    settings = load_settings(config, db=db)
    method = _auth_method(auth_method, public)
    jwks_text = _read_jwks(jwks)
    fields = given_fields(
        name=name, auth_method=method, grant_types=grant_type, scopes=scope,
        default_audience=audience, access_token_ttl=ttl, token_format=token_format,
        jwks=jwks_text, redirect_uris=redirect_uri, refresh_token_ttl=refresh_ttl,
        refresh_token_max_ttl=refresh_max_ttl, id_token_signed_response_alg=id_token_alg,
        post_logout_redirect_uris=post_logout_redirect_uri,
        logout_revokes_grants=logout_revokes_grants, require_dpop=require_dpop,
    )  # fmt: skip
    client = run_admin(
        settings,
        lambda store: admin.update_client(
            store,
            SystemClock(),
            client_id,
            name=name,
            auth_method=method,
            grant_types=_grants(grant_type),
            scopes=split_all(scope),
            default_audience=split_all(audience),
            access_token_ttl=ttl,
            token_format=token_format,
            jwks=jwks_text,
            redirect_uris=_redirects(redirect_uri),
            refresh_token_ttl=refresh_ttl,
            refresh_token_max_ttl=refresh_max_ttl,
            id_token_signed_response_alg=id_token_alg,
            post_logout_redirect_uris=_redirects(post_logout_redirect_uri),
            logout_revokes_grants=logout_revokes_grants,
            require_dpop=require_dpop,
        ),
        audit=lambda updated: change("client.update", updated.client_id, fields=fields),
    )
    echo_data(admin.client_view(client), as_json)


@client_app.command("disable")
def client_disable(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Disable a client and revoke every live token it holds."""
    settings = load_settings(config, db=db)
    n = run_admin(
        settings,
        lambda store: admin.set_client_enabled(store, SystemClock(), client_id, False),
        audit=lambda n: change("client.disable", client_id, tokens_revoked=n),
    )
    echo_data(
        {"client_id": client_id, "enabled": False, "tokens_revoked": n},
        as_json,
        f"client {client_id} disabled; {n} live token(s) revoked",
    )


@client_app.command("enable")
def client_enable(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Enable a client again (its revoked tokens stay revoked)."""
    settings = load_settings(config, db=db)
    run_admin(
        settings,
        lambda store: admin.set_client_enabled(store, SystemClock(), client_id, True),
        audit=lambda _: change("client.enable", client_id),
    )
    echo_data({"client_id": client_id, "enabled": True}, as_json, f"client {client_id} enabled")


@client_app.command("delete")
def client_delete(
    client_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a client; its live tokens are revoked first."""
    settings = load_settings(config, db=db)
    require_database(settings)  # before asking
    # Without a terminal (a script, a pipe) there is no one to ask: delete without asking,
    # as --yes does (docs/cli.md).
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Delete client {client_id} and revoke its tokens?", abort=True)
    n = run_admin(
        settings,
        lambda store: admin.delete_client(store, SystemClock(), client_id),
        audit=lambda n: change("client.delete", client_id, tokens_revoked=n),
    )
    echo_data(
        {"client_id": client_id, "deleted": True, "tokens_revoked": n},
        as_json,
        f"client {client_id} deleted; {n} live token(s) revoked",
    )


@client_app.command("rotate-secret")
def client_rotate(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Give a client a new secret; the old one stops working at once."""
    settings = load_settings(config, db=db)
    client, secret = run_admin(
        settings,
        lambda store: admin.rotate_secret(store, SystemClock(), client_id),
        # Never the secret: the event names the client only.
        audit=lambda rotated: change("client.rotate_secret", rotated[0].client_id),
    )
    echo_data(
        {"client_id": client.client_id, "client_secret": secret},
        as_json,
        f"client_id      {client.client_id}\nclient_secret  {secret}\n\n"
        "The secret is shown only now; the old secret no longer works.",
    )
