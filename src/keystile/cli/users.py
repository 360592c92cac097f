"""`keystile user`: the people who sign in to authorize clients."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from keystile import admin
from keystile.admin_audit import change, given_fields
from keystile.cli.common import (
    ConfigOpt,
    DbOpt,
    JsonOpt,
    echo_data,
    echo_list,
    fail,
    load_settings,
    require_database,
    run_admin,
)
from keystile.clock import SystemClock
from keystile.core.models import User
from keystile.errors import ConfigurationError

user_app = typer.Typer(help="Users: people who sign in to authorize clients.", no_args_is_help=True)

UserArg = Annotated[str, typer.Argument(help="Username or user id (usr_...).")]
RoleOpt = Annotated[
    list[str] | None,
    typer.Option("--role", help="A role: admin (the admin console; docs/admin.md), repeatable."),
]
PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of stdin (for scripts).",
    ),
]


# Standard claims (OIDC Core §5.1), for the profile and email scopes (docs/oidc.md).
NameOpt = Annotated[
    str | None, typer.Option("--name", help='Full name (claim "name"; "" clears it).')
]
PreferredUsernameOpt = Annotated[
    str | None,
    typer.Option(
        "--preferred-username",
        help='Claim "preferred_username" (default: the username; "" clears it).',
    ),
]
EmailOpt = Annotated[
    str | None, typer.Option("--email", help='Email address (claim "email"; "" clears it).')
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
    echo_data(admin.user_view(user), as_json)


@user_app.command("create")
def user_create(
    username: Annotated[
        str,
        typer.Argument(help="1-128 letters, digits and . _ @ + - (stored lower-cased)."),
    ],
    password_stdin: PasswordStdinOpt = False,
    role: RoleOpt = None,
    name: NameOpt = None,
    preferred_username: PreferredUsernameOpt = None,
    email: EmailOpt = None,
    email_verified: Annotated[
        bool,
        typer.Option("--email-verified", help="The email address was verified (by you)."),
    ] = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a user; the password is asked for (or read with --password-stdin)."""
    settings = load_settings(config, db=db)
    try:
        admin.check_username(username)  # before asking for a password
    except ConfigurationError as exc:
        fail(str(exc), 2)
    password = _read_password(password_stdin)
    user = run_admin(
        settings,
        lambda store: admin.create_user(
            store,
            SystemClock(),
            username=username,
            password=password,
            name=name,
            preferred_username=preferred_username,
            email=email,
            email_verified=email_verified,
            roles=role or (),
        ),
        create=True,
        audit=lambda made: change("user.create", made.user_id, username=made.username),
    )
    _print_user(user, as_json)


@user_app.command("list")
def user_list(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List users, by username."""
    settings = load_settings(config, db=db)
    users = run_admin(settings, lambda store: store.list_users())
    echo_list([admin.user_view(u) for u in users], as_json, _user_line, empty="no users")


def _user_line(v: dict[str, Any]) -> str:
    state = "enabled " if v["enabled"] else "disabled"
    return f"{v['username']:<32} {state} {v['user_id']}"


@user_app.command("show")
def user_show(
    user: UserArg, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Show one user (never their password hash)."""
    settings = load_settings(config, db=db)
    _print_user(run_admin(settings, lambda store: admin.get_user(store, user)), as_json)


@user_app.command("update")
def user_update(
    user: UserArg,
    name: NameOpt = None,
    preferred_username: PreferredUsernameOpt = None,
    email: EmailOpt = None,
    email_verified: Annotated[
        bool | None,
        typer.Option(
            "--email-verified/--email-unverified",
            help="Whether the email address was verified (a new --email is unverified).",
        ),
    ] = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's claims (name, preferred_username, email, email_verified)."""
    settings = load_settings(config, db=db)
    fields = given_fields(
        name=name, preferred_username=preferred_username, email=email, email_verified=email_verified
    )
    found = run_admin(
        settings,
        lambda store: admin.update_user(
            store,
            SystemClock(),
            user,
            name=name,
            preferred_username=preferred_username,
            email=email,
            email_verified=email_verified,
        ),
        audit=lambda updated: change(
            "user.update",
            updated.user_id,
            username=updated.username,
            fields=fields,
        ),
    )
    _print_user(found, as_json)


@user_app.command("passwd")
def user_passwd(
    user: UserArg,
    password_stdin: PasswordStdinOpt = False,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a user's password (their sessions stay: see revoke-sessions)."""
    settings = load_settings(config, db=db)
    run_admin(settings, lambda store: admin.get_user(store, user))  # before asking for a password
    password = _read_password(password_stdin)
    found = run_admin(
        settings,
        lambda store: admin.set_password(store, SystemClock(), user, password),
        # Never the password: the event names the user only.
        audit=lambda found: change("user.password", found.user_id, username=found.username),
    )
    echo_data(
        {"user_id": found.user_id, "username": found.username, "password_changed": True},
        as_json,
        f"password of user {found.username} changed",
    )


@user_app.command("set-roles")
def user_set_roles(
    user: UserArg,
    role: RoleOpt = None,
    config: ConfigOpt = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replace a user's roles (no --role: none)."""
    settings = load_settings(config, db=db)
    found = run_admin(
        settings,
        lambda store: admin.set_user_roles(store, SystemClock(), user, role or ()),
        audit=lambda found: change(
            "user.roles", found.user_id, username=found.username, roles=sorted(found.roles)
        ),
    )
    _print_user(found, as_json)


def _enabled_change(done: tuple[User, int], enabled: bool) -> dict[str, Any]:
    """The audit event of enable or disable, as POST /admin/v1/users/{user}/... writes it."""
    user, n = done
    action = "user.enable" if enabled else "user.disable"
    return change(action, user.user_id, username=user.username, tokens_revoked=n)


@user_app.command("disable")
def user_disable(
    user: UserArg, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Disable a user: end their sessions, revoke their grants and every token from them."""
    settings = load_settings(config, db=db)
    found, n = run_admin(
        settings,
        lambda store: admin.set_user_enabled(store, SystemClock(), user, False),
        audit=lambda done: _enabled_change(done, False),
    )
    echo_data(
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
    settings = load_settings(config, db=db)
    found, _ = run_admin(
        settings,
        lambda store: admin.set_user_enabled(store, SystemClock(), user, True),
        audit=lambda done: _enabled_change(done, True),
    )
    echo_data(
        {"user_id": found.user_id, "username": found.username, "enabled": True},
        as_json,
        f"user {found.username} enabled",
    )


@user_app.command("revoke-sessions")
def user_revoke_sessions(
    user: UserArg, config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False
) -> None:
    """Sign a user out everywhere: end their sessions, revoke their grants and tokens."""
    settings = load_settings(config, db=db)
    found, n = run_admin(
        settings,
        lambda store: admin.revoke_user_sessions(store, SystemClock(), user),
        audit=lambda done: change(
            "user.revoke_sessions",
            done[0].user_id,
            username=done[0].username,
            tokens_revoked=done[1],
        ),
    )
    echo_data(
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
    settings = load_settings(config, db=db)
    require_database(settings)  # before asking
    # Without a terminal there is no one to ask: delete without asking, as --yes does.
    if not yes and _stdin_is_tty():
        typer.confirm(f"Delete user {user} and revoke their tokens?", abort=True)
    found, n = run_admin(
        settings,
        lambda store: admin.delete_user(store, SystemClock(), user),
        audit=lambda done: change(
            "user.delete", done[0].user_id, username=done[0].username, tokens_revoked=done[1]
        ),
    )
    echo_data(
        {
            "user_id": found.user_id,
            "username": found.username,
            "deleted": True,
            "tokens_revoked": n,
        },
        as_json,
        f"user {found.username} deleted; {n} live token(s) revoked",
    )
