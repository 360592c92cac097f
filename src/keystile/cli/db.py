"""`keystile db`: the database schema."""

from __future__ import annotations

import typer

from keystile.cli.common import ConfigOpt, DbOpt, JsonOpt, echo_data, load_settings, run_admin

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Create the database if needed and apply pending migrations."""
    settings = load_settings(config, db=db)
    version = run_admin(settings, lambda store: store.schema_version(), create=True)
    echo_data(
        {"db": settings.db_display, "schema_version": version},
        as_json,
        f"{settings.db_display}: schema at version {version}",
    )
