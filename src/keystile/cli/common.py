"""What every command shares: the common options, settings loading, running one admin action
against the store, printing (text or --json) and failing with an exit code."""

from __future__ import annotations

import asyncio
import json
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from keystile.admin_audit import admin_action, cli_actor, record_admin_action
from keystile.clock import SystemClock
from keystile.errors import ConfigurationError, KeystileError
from keystile.settings import ServerSettings
from keystile.store.base import Conflict, NotFound, Store

T = TypeVar("T")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file.", envvar="KEYSTILE_CONFIG"),
]
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="SQLite file (default keystile.db) or postgresql:// URL."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Human-readable name.")]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"keystile: {message}", err=True)
    raise typer.Exit(code)


def load_settings(config: Path | None, **flags: Any) -> ServerSettings:
    try:
        return ServerSettings.load(config, **flags)
    except ConfigurationError as exc:
        fail(str(exc), 2)
        raise  # unreachable


def run_admin(
    settings: ServerSettings,
    action: Callable[[Store], Awaitable[T]],
    *,
    create: bool = False,
    audit: Callable[[T], dict[str, Any]] | None = None,
) -> T:
    """Open the store the settings name, run one admin action, close it.

    Only commands that make something (``create=True``: serve, db upgrade, the create
    commands) may create a missing SQLite database; the others exit 2 instead of leaving an
    empty database (and its folder) behind a mistyped path.

    A command that changes something gives ``audit``: from the action's result, what changed
    (``admin_audit.change``), named as the admin API names it. Once the change is made, the
    ``admin_action`` event is written with ``"actor": "cli"``, the OS user and the host, so
    the audit trail holds CLI changes beside API and console ones (docs/admin.md).
    """
    from keystile.server.app import open_store

    if not create:
        require_database(settings)

    async def main() -> T:
        store = open_store(settings)
        await store.open()
        try:
            result = await action(store)
            if audit is not None:
                payload = admin_action(audit(result), cli_actor())
                if not await record_admin_action(store, SystemClock(), payload):
                    typer.echo(
                        "keystile: warning: the change was made, but its audit event could "
                        "not be written",
                        err=True,
                    )
            return result
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


def require_database(settings: ServerSettings) -> None:
    """Exit 2 when the SQLite file the settings name does not exist (or is empty: SQLite
    would take it for a new database)."""
    path = settings.sqlite_path
    if path is None or (path.is_file() and path.stat().st_size > 0):
        return
    shown = str(path) if path.is_absolute() else f"{path} (in {Path.cwd()})"
    fail(
        f"no database at {shown}: check --db, --config or KEYSTILE_DB, or create it with "
        f"`keystile db upgrade --db {shlex.quote(str(path))}`",
        2,
    )


def echo_data(data: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
    elif text is not None:
        typer.echo(text)
    else:
        echo_human(data)


def echo_list(
    views: list[dict[str, Any]],
    as_json: bool,
    line: Callable[[dict[str, Any]], str],
    *,
    empty: str,
) -> None:
    """A list: JSON (``[]`` when empty), or one line per item, or ``empty`` on stderr so that
    a person sees it and a script reading stdout still gets no lines."""
    if as_json:
        echo_data(views, True)
    elif not views:
        typer.echo(empty, err=True)
    else:
        for view in views:
            typer.echo(line(view))


def echo_human(data: Any) -> None:
    if isinstance(data, list):
        for item in data:
            echo_human(item)
            typer.echo("")
        return
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        if isinstance(value, list):
            value = " ".join(str(v) for v in value) or "-"
        elif value in ("", None):
            value = "-"
        typer.echo(f"{key:<{width}}  {value}")


def split_all(values: list[str] | None) -> list[str] | None:
    """Options that take lists accept repeats and space-separated values alike."""
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        out.extend(v for v in value.replace(",", " ").split() if v)
    return out
