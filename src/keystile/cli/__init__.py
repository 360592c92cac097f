"""keystile: an OAuth 2.0 authorization server built around token introspection.

Serve the AS, manage the database, clients, resource servers and users. Every command that
shows data takes --json for scripts; secrets are printed once, on creation or rotation.
"""

from __future__ import annotations

import sys

try:
    import typer
except ImportError:  # pragma: no cover - only without the extra
    sys.exit(
        "the keystile command needs keystile's server extra: pip install '.[server]' in a clone "
        "of the repository, or 'dist/keystile-VERSION-py3-none-any.whl[server]' (README: Install)"
    )

from keystile.cli import clients, db, gateway, keys, resources, serve, tokens, users

# One line per paragraph: the help renderer keeps a docstring's line breaks, so the wrapped
# source lines would break mid-sentence at any terminal width.
_HELP = "\n\n".join(" ".join(part.split()) for part in (__doc__ or "").split("\n\n"))
app = typer.Typer(
    help=_HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)
app.command()(serve.serve)
app.command()(gateway.gateway)
app.add_typer(db.db_app, name="db")
app.add_typer(clients.client_app, name="client")
app.add_typer(resources.resource_app, name="resource")
app.add_typer(keys.key_app, name="key")
app.add_typer(users.user_app, name="user")
app.add_typer(tokens.token_app, name="token")


def main() -> None:
    app()
