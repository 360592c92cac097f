"""keystile: an OAuth 2.0 authorization server built around token introspection.

Serve the AS, manage the database, clients, resource servers and users. Every command that
shows data takes --json for scripts; secrets are printed once, on creation or rotation.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

try:
    import typer
except ImportError:  # pragma: no cover - only without the extra
    sys.exit("the keystile command needs the server extra: pip install 'keystile[server]'")

from keystile import admin
from keystile.clock import SystemClock
from keystile.errors import ConfigurationError, KeystileError
from keystile.settings import ServerSettings
from keystile.store.base import Conflict, NotFound, Store

T = TypeVar("T")

app = typer.Typer(
    help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
client_app = typer.Typer(help="OAuth clients.", no_args_is_help=True)
resource_app = typer.Typer(
    help="Resource servers (APIs that introspect tokens).", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(client_app, name="client")
app.add_typer(resource_app, name="resource")
key_app = typer.Typer(
    help="Signing keys for JWT access tokens and signed introspection answers.",
    no_args_is_help=True,
)
app.add_typer(key_app, name="key")
user_app = typer.Typer(help="Users: people who sign in to authorize clients.", no_args_is_help=True)
app.add_typer(user_app, name="user")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file.", envvar="KEYSTILE_CONFIG"),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="SQLite file (default keystile.db) or postgresql:// URL."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

_INTERNAL_SETTINGS = "KEYSTILE_INTERNAL_SETTINGS_JSON"


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"keystile: {message}", err=True)
    raise typer.Exit(code)


def _settings(config: Path | None, **flags: Any) -> ServerSettings:
    try:
        return ServerSettings.load(config, **flags)
    except ConfigurationError as exc:
        fail(str(exc), 2)
        raise  # unreachable


def _run(settings: ServerSettings, action: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store the settings name, run one admin action, close it."""
    from keystile.server.app import open_store

    async def main() -> T:
        store = open_store(settings)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except NotFound as exc:
        fail(str(exc), 3)
    except Conflict as exc:
        fail(str(exc), 4)
    except ConfigurationError as exc:
        fail(str(exc), 2)
    except KeystileError as exc:
        fail(str(exc), 1)
    raise AssertionError("unreachable")


def _print(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        typer.echo(text)
    else:
        _print_human(data)


def _print_human(data: Any) -> None:
    if isinstance(data, list):
        for item in data:
            _print_human(item)
            typer.echo("")
        return
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, list):
            value = " ".join(str(v) for v in value) or "-"
        elif value in ("", None):
            value = "-"
        typer.echo(f"{key:<{width}}  {value}")


def _split_all(values: list[str] | None) -> list[str] | None:
    """Options that take lists accept repeats and space-separated values alike."""
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        out.extend(v for v in value.replace(",", " ").split() if v)
    return out


# -- serve ----------------------------------------------------------------------------------


@app.command()
def serve(
    config: ConfigOpt = None,
    db: DbOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    issuer: Annotated[str | None, typer.Option(help="Issuer URL (RFC 8414).")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key.")] = None,
    allow_insecure_http: Annotated[
        bool | None,
        typer.Option("--allow-insecure-http", help="Plain HTTP on a non-loopback address."),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
    demo: Annotated[
        bool | None,
        typer.Option(
            "--demo/--no-demo", help="Demo setup on an empty database (default: on loopback)."
        ),
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug|info|warning|error")] = None,
    log_format: Annotated[str | None, typer.Option(help="json|text")] = None,
    fast_path: Annotated[
        bool | None,
        typer.Option(
            "--fast-path/--no-fast-path",
            help="Answer common introspection requests without ASGI (default: on).",
        ),
    ] = None,
) -> None:
    """Run the authorization server (SQLite file by default, created on first start)."""
    settings = _settings(
        config,
        db=db,
        host=host,
        port=port,
        issuer=issuer,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_insecure_http=allow_insecure_http,
        workers=workers,
        demo=demo,
        log_level=log_level,
        log_format=log_format,
        fast_path=fast_path,
    )
    try:
        settings.check_bind()
    except ConfigurationError as exc:
        fail(str(exc), 2)
    from keystile.server.demo import demo_text, first_start
    from keystile.server.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # Bind first: if the port is taken, fail before the one-time demo secrets are printed
    # and the database is marked initialized.
    sock = _bind(settings)
    clock = SystemClock()
    setup = _run(
        settings,
        lambda store: first_start(
            store,
            clock,
            demo=settings.demo_enabled,
            ttl=settings.access_token_ttl,
            issuer=settings.effective_issuer,
        ),
    )
    if setup is not None:
        typer.echo(demo_text(setup, settings.effective_issuer))
    _serve(settings, sock)


def _bind(settings: ServerSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        fail(f"cannot bind {settings.host}:{settings.port}: {exc.strerror}", 1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _serve(settings: ServerSettings, sock: socket.socket) -> None:
    import uvicorn

    from keystile.server.fastpath import FastPathProtocol

    common: dict[str, Any] = {
        # uvicorn's httptools protocol; with the fast path, one that answers common
        # introspection requests without an ASGI task (server/fastpath.py).
        "http": FastPathProtocol if settings.fast_path else "httptools",
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": False,  # our own structured log covers requests, without secrets
        "server_header": False,
        # Event streams never end by themselves: give them this long once asked to stop.
        "timeout_graceful_shutdown": 3,
        # X-Forwarded-* are believed only from proxies the operator names: otherwise any
        # caller could pick the source address that failed-authentication throttling counts.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": ",".join(settings.trusted_proxies) or None,
        "log_config": None,
        "log_level": settings.log_level,
        "ssl_certfile": str(settings.tls_cert) if settings.tls_cert else None,
        "ssl_keyfile": str(settings.tls_key) if settings.tls_key else None,
    }
    url = settings.effective_issuer
    if settings.workers > 1:
        import shutil
        import tempfile

        # Workers are separate processes: they rebuild the same settings from this.
        os.environ[_INTERNAL_SETTINGS] = settings.model_dump_json()
        own_dir = None
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Metrics of all workers are summed from files in this folder (prometheus_client
            # multiprocess mode); it lives as long as this server.
            own_dir = tempfile.mkdtemp(prefix="keystile-prom-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
        typer.echo(f"keystile listening on {url} ({settings.workers} workers)", err=False)
        sys.stdout.flush()
        try:
            # The workers inherit the socket bound above, passed as the socket object: with
            # `fd=` uvicorn rebuilds it as AF_UNIX, so asyncio never sets TCP_NODELAY and
            # every response waits ~40 ms on Nagle + delayed ACK.
            from uvicorn.supervisors import Multiprocess

            config = uvicorn.Config(
                "keystile.server.app:app_from_environment",
                factory=True,
                workers=settings.workers,
                **common,
            )
            Multiprocess(config, sockets=[sock]).run()
        finally:
            if own_dir is not None:
                shutil.rmtree(own_dir, ignore_errors=True)
        return
    from keystile.server.app import create_app

    app = create_app(settings)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            if app.bus is not None:
                app.bus.end_streams()  # event streams end now instead of timing out
            await super().shutdown(sockets)

    config = uvicorn.Config(app, **common)
    server = Server(config)
    typer.echo(f"keystile listening on {url}", err=False)
    sys.stdout.flush()
    server.run(sockets=[sock])


# -- db -------------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Create the database if needed and apply pending migrations."""
    settings = _settings(config, db=db)
    version = _run(settings, lambda store: store.schema_version())
    _print(
        {"db": settings.db_display, "schema_version": version},
        as_json,
        f"{settings.db_display}: schema at version {version}",
    )


# -- clients --------------------------------------------------------------------------------

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
NameOpt = Annotated[str | None, typer.Option("--name", help="Human-readable name.")]
TokenFormatOpt = Annotated[
    str | None,
    typer.Option("--token-format", help="Access tokens: opaque (default) or jwt (RFC 9068)."),
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
    grants = _split_all(values)
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
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a client and print its secret, once (none for a public client)."""
    settings = _settings(config, db=db)
    grants = _grants(grant_type)
    method = _auth_method(auth_method, public)
    jwks_text = _read_jwks(jwks)
    client, secret = _run(
        settings,
        lambda store: admin.create_client(
            store,
            SystemClock(),
            client_id=client_id,
            name=name,
            auth_method=method or "client_secret_basic",
            grant_types=grants,
            scopes=_split_all(scope) or [],
            default_audience=_split_all(audience) or [],
            access_token_ttl=settings.access_token_ttl if ttl is None else ttl,
            token_format=token_format or "opaque",
            jwks=jwks_text,
            redirect_uris=_redirects(redirect_uri) or [],
            refresh_token_ttl=refresh_ttl,
            refresh_token_max_ttl=refresh_max_ttl,
        ),
    )
    if client.auth_method in ("private_key_jwt", "none"):
        # It authenticates with its keys, or not at all (a public client): no secret.
        _print(admin.client_view(client), as_json)
        return
    view = {**admin.client_view(client), "client_secret": secret}
    _print(view, as_json)
    if not as_json:
        typer.echo("\nThe secret is shown only now; keystile keeps only its SHA-256 digest.")


@client_app.command("list")
def client_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List clients."""
    settings = _settings(config, db=db)
    clients = _run(settings, lambda store: store.list_clients())
    views = [admin.client_view(c) for c in clients]
    if as_json:
        _print(views, True)
        return
    for v in views:
        state = "enabled " if v["enabled"] else "disabled"
        typer.echo(f"{v['client_id']:<24} {state} {v['scope'] or '-':<24} {v['name']}")


@client_app.command("show")
def client_show(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one client (never its secret)."""
    settings = _settings(config, db=db)
    client = _run(settings, lambda store: admin.get_client(store, client_id))
    _print(admin.client_view(client), as_json)


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
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a client's settings (only the options given)."""
    settings = _settings(config, db=db)
    method = _auth_method(auth_method, public)
    jwks_text = _read_jwks(jwks)
    client = _run(
        settings,
        lambda store: admin.update_client(
            store,
            SystemClock(),
            client_id,
            name=name,
            auth_method=method,
            grant_types=_grants(grant_type),
            scopes=_split_all(scope),
            default_audience=_split_all(audience),
            access_token_ttl=ttl,
            token_format=token_format,
            jwks=jwks_text,
            redirect_uris=_redirects(redirect_uri),
            refresh_token_ttl=refresh_ttl,
            refresh_token_max_ttl=refresh_max_ttl,
        ),
    )
    _print(admin.client_view(client), as_json)


@client_app.command("disable")
def client_disable(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Disable a client and revoke every live token it holds."""
    settings = _settings(config, db=db)
    n = _run(
        settings, lambda store: store.set_client_enabled(client_id, False, SystemClock().now())
    )
    _print(
        {"client_id": client_id, "enabled": False, "tokens_revoked": n},
        as_json,
        f"client {client_id} disabled; {n} live token(s) revoked",
    )


@client_app.command("enable")
def client_enable(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Enable a client again (its revoked tokens stay revoked)."""
    settings = _settings(config, db=db)
    _run(settings, lambda store: store.set_client_enabled(client_id, True, SystemClock().now()))
    _print({"client_id": client_id, "enabled": True}, as_json, f"client {client_id} enabled")


@client_app.command("delete")
def client_delete(
    client_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a client; its live tokens are revoked first."""
    if not yes and sys.stdin.isatty():
        typer.confirm(f"Delete client {client_id} and revoke its tokens?", abort=True)
    settings = _settings(config, db=db)
    n = _run(settings, lambda store: store.delete_client(client_id, SystemClock().now()))
    _print(
        {"client_id": client_id, "deleted": True, "tokens_revoked": n},
        as_json,
        f"client {client_id} deleted; {n} live token(s) revoked",
    )


@client_app.command("rotate-secret")
def client_rotate(
    client_id: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Give a client a new secret; the old one stops working at once."""
    settings = _settings(config, db=db)
    client, secret = _run(
        settings, lambda store: admin.rotate_secret(store, SystemClock(), client_id)
    )
    _print(
        {"client_id": client.client_id, "client_secret": secret},
        as_json,
        f"client_id      {client.client_id}\nclient_secret  {secret}\n\n"
        "The secret is shown only now; the old secret no longer works.",
    )


# -- resource servers -----------------------------------------------------------------------

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
    settings = _settings(config, db=db)
    rs = _run(
        settings,
        lambda store: admin.create_resource_server(
            store,
            SystemClock(),
            identifier=identifier,
            name=name,
            introspection_clients=_split_all(client) or [],
            claims=_split_all(claims),
            rules=["audience", *(_split_all(allow) or [])],
            introspection_response=introspection_response or "json",
        ),
    )
    _print(admin.resource_server_view(rs), as_json)


@resource_app.command("list")
def resource_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List resource servers."""
    settings = _settings(config, db=db)
    servers = _run(settings, lambda store: store.list_resource_servers())
    views = [admin.resource_server_view(rs) for rs in servers]
    if as_json:
        _print(views, True)
        return
    for v in views:
        typer.echo(f"{v['identifier']:<40} clients: {' '.join(v['introspection_clients']) or '-'}")


@resource_app.command("show")
def resource_show(
    identifier: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one resource server."""
    settings = _settings(config, db=db)
    rs = _run(settings, lambda store: admin.get_resource_server(store, identifier))
    _print(admin.resource_server_view(rs), as_json)


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
    settings = _settings(config, db=db)
    rs = _run(
        settings,
        lambda store: admin.update_resource_server(
            store,
            SystemClock(),
            identifier,
            name=name,
            introspection_clients=_split_all(client),
            claims=_split_all(claims),
            rules=None if allow is None else ["audience", *(_split_all(allow) or [])],
            introspection_response=introspection_response,
        ),
    )
    _print(admin.resource_server_view(rs), as_json)


@resource_app.command("delete")
def resource_delete(
    identifier: str, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete a resource server; its clients can no longer introspect."""
    settings = _settings(config, db=db)
    _run(settings, lambda store: store.delete_resource_server(identifier))
    _print(
        {"identifier": identifier, "deleted": True},
        as_json,
        f"resource server {identifier} deleted",
    )


# -- users ----------------------------------------------------------------------------------

UserArg = Annotated[str, typer.Argument(help="Username or user id (usr_...).")]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of stdin (for scripts).",
    ),
]


def _stdin_is_tty() -> bool:
    return sys.stdin.isatty()


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice at a hidden prompt. Never argv,
    where other users of the machine and shell histories would see it."""
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    if not _stdin_is_tty():
        fail("no terminal to ask for the password: give --password-stdin and pipe it in", 2)
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    return password


def _print_user(user: Any, as_json: bool) -> None:
    _print(admin.user_view(user), as_json)


@user_app.command("create")
def user_create(
    username: Annotated[
        str,
        typer.Argument(help="1-128 letters, digits and . _ @ + - (stored lower-cased)."),
    ],
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a user; the password is asked for (or read with --password-stdin)."""
    settings = _settings(config, db=db)
    try:
        admin.check_username(username)  # before asking for a password
    except ConfigurationError as exc:
        fail(str(exc), 2)
    password = _read_password(password_stdin)
    user = _run(
        settings,
        lambda store: admin.create_user(store, SystemClock(), username=username, password=password),
    )
    _print_user(user, as_json)


@user_app.command("list")
def user_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List users, by username."""
    settings = _settings(config, db=db)
    users = _run(settings, lambda store: store.list_users())
    views = [admin.user_view(u) for u in users]
    if as_json:
        _print(views, True)
        return
    for v in views:
        state = "enabled " if v["enabled"] else "disabled"
        typer.echo(f"{v['username']:<32} {state} {v['user_id']}")


@user_app.command("show")
def user_show(
    user: UserArg, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one user (never their password hash)."""
    settings = _settings(config, db=db)
    _print_user(_run(settings, lambda store: admin.get_user(store, user)), as_json)


@user_app.command("passwd")
def user_passwd(
    user: UserArg,
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a user's password (their sessions stay: see revoke-sessions)."""
    settings = _settings(config, db=db)
    _run(settings, lambda store: admin.get_user(store, user))  # before asking for a password
    password = _read_password(password_stdin)
    found = _run(settings, lambda store: admin.set_password(store, SystemClock(), user, password))
    _print(
        {"user_id": found.user_id, "username": found.username, "password_changed": True},
        as_json,
        f"password of user {found.username} changed",
    )


@user_app.command("disable")
def user_disable(
    user: UserArg, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Disable a user: end their sessions, revoke their grants and every token from them."""
    settings = _settings(config, db=db)
    found, n = _run(
        settings, lambda store: admin.set_user_enabled(store, SystemClock(), user, False)
    )
    _print(
        {
            "user_id": found.user_id,
            "username": found.username,
            "enabled": False,
            "tokens_revoked": n,
        },
        as_json,
        f"user {found.username} disabled; {n} live token(s) revoked",
    )


@user_app.command("enable")
def user_enable(
    user: UserArg, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Enable a user again (what was revoked stays revoked)."""
    settings = _settings(config, db=db)
    found, _ = _run(
        settings, lambda store: admin.set_user_enabled(store, SystemClock(), user, True)
    )
    _print(
        {"user_id": found.user_id, "username": found.username, "enabled": True},
        as_json,
        f"user {found.username} enabled",
    )


@user_app.command("revoke-sessions")
def user_revoke_sessions(
    user: UserArg, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Sign a user out everywhere: end their sessions, revoke their grants and tokens."""
    settings = _settings(config, db=db)
    found, n = _run(settings, lambda store: admin.revoke_user_sessions(store, SystemClock(), user))
    _print(
        {"user_id": found.user_id, "username": found.username, "tokens_revoked": n},
        as_json,
        f"sessions of user {found.username} ended; {n} live token(s) revoked",
    )


@user_app.command("delete")
def user_delete(
    user: UserArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete a user; their sessions, grants and tokens are revoked first."""
    if not yes and _stdin_is_tty():
        typer.confirm(f"Delete user {user} and revoke their tokens?", abort=True)
    settings = _settings(config, db=db)
    found, n = _run(settings, lambda store: admin.delete_user(store, SystemClock(), user))
    _print(
        {
            "user_id": found.user_id,
            "username": found.username,
            "deleted": True,
            "tokens_revoked": n,
        },
        as_json,
        f"user {found.username} deleted; {n} live token(s) revoked",
    )


# -- signing keys (RFC 7517; docs/tokens.md) -------------------------------------------------

AlgOpt = Annotated[
    str | None, typer.Option("--alg", help="ES256 (default), RS256, Ed25519 or EdDSA.")
]


def _key_views(keys: list[Any]) -> list[dict[str, Any]]:
    from keystile import key_admin

    now = SystemClock().now()
    return [key_admin.key_view(k, now) for k in keys]


def _print_keys(views: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        _print(views, True)
        return
    for v in views:
        shown = "published" if v["published"] else "unpublished"
        typer.echo(f"{v['kid']}  {v['alg']:<7} {v['state']:<7} {shown}")


@key_app.command("list")
def key_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List signing keys: next, active and retired, and whether the JWKS publishes them."""
    settings = _settings(config, db=db)
    _print_keys(_key_views(_run(settings, lambda store: store.list_signing_keys())), as_json)


@key_app.command("create")
def key_create(
    alg: AlgOpt = None, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Make a next key: published now, signing from the next `keystile key rotate`."""
    from keystile import key_admin

    settings = _settings(config, db=db)
    key = _run(
        settings,
        lambda store: key_admin.create_key(
            store, SystemClock(), key_admin.require_kek(settings), alg=alg or "ES256"
        ),
    )
    _print_keys(_key_views([key]), as_json)


@key_app.command("rotate")
def key_rotate(
    alg: AlgOpt = None, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Activate the next key (or a new one) and retire the active key, in every server."""
    from keystile import key_admin

    settings = _settings(config, db=db)
    active, retired = _run(
        settings,
        lambda store: key_admin.rotate(
            store, SystemClock(), key_admin.require_kek(settings), alg=alg
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

    settings = _settings(config, db=db)
    key = _run(
        settings,
        lambda store: key_admin.retire(store, SystemClock(), kid, immediately=immediately),
    )
    _print_keys(_key_views([key]), as_json)


# -- gateway --------------------------------------------------------------------------------


@app.command()
def gateway(
    config: Annotated[
        Path,
        typer.Option(
            "--config",
            "-c",
            help="Gateway TOML file (docs/gateway.md).",
            envvar="KEYSTILE_GATEWAY_CONFIG",
        ),
    ],
) -> None:
    """Run the gateway: an introspecting reverse proxy that also answers forward-auth checks."""
    from keystile.gateway.config import load_config
    from keystile.gateway.server import bind, check_bind, serve
    from keystile.server.logs import configure_logging

    try:
        settings = load_config(config)
        check_bind(settings)
    except ConfigurationError as exc:
        fail(str(exc), 2)
        raise  # unreachable
    configure_logging(settings.gateway.log_level, settings.gateway.log_format)
    try:
        sock = bind(settings)
    except OSError as exc:
        fail(f"cannot bind {settings.gateway.host}:{settings.gateway.port}: {exc.strerror}", 1)
        raise  # unreachable
    serve(settings, sock)


def main() -> None:
    app()
