"""The ``admin_action`` audit event (docs/admin.md, Audit): one payload for every change made
through the admin API, the console and the CLI.

The same change writes the same ``action``, ``target`` and details whichever way it came
in; only the part saying who and from where differs (a client and its token's ``jti``, or
``"actor": "cli"`` with the OS user and host name). Never a secret, password or token value.

    payload = admin_action(change("client.disable", "app-1", tokens_revoked=2), cli_actor())
    await record_admin_action(store, clock, payload)
"""

from __future__ import annotations

import getpass
import logging
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from keystile.clock import Clock
from keystile.store.base import ADMIN_ACTION, Store

log = logging.getLogger("keystile.admin")

__all__ = [
    "admin_action",
    "change",
    "cli_actor",
    "field_names",
    "given_fields",
    "record_admin_action",
]

# Keyword names of the shared operations (admin.py) -> field names of the JSON views.
_WIRE_NAMES = {
    "auth_method": "token_endpoint_auth_method",
    "scopes": "scope",
    "rules": "introspection_rules",
}


def field_names(given: Iterable[str]) -> list[str]:
    """The changed fields of an operation's keywords, named as the views and the API name
    them (``scopes`` -> ``scope``...): the ``fields`` of an audit event."""
    return sorted(_WIRE_NAMES.get(name, name) for name in given)


def given_fields(**options: object) -> list[str]:
    """The fields an operation was given (its keywords that are not None), named as
    ``field_names`` names them."""
    return field_names(name for name, value in options.items() if value is not None)


def change(action: str, target: str, **details: Any) -> dict[str, Any]:
    """What changed: the action (``client.disable``), its target and the details."""
    return {"action": action, "target": target, **details}


def cli_actor() -> dict[str, Any]:
    """Who: the CLI, run by this OS user on this host (best effort: either may be None)."""
    try:
        os_user: str | None = getpass.getuser()
    except Exception:  # no LOGNAME/USER and no passwd entry (a bare container)
        os_user = None
    try:
        host: str | None = socket.gethostname() or None
    except OSError:
        host = None
    return {"actor": "cli", "os_user": os_user, "host": host, "via": "cli"}


def admin_action(what: Mapping[str, Any], who: Mapping[str, Any]) -> dict[str, Any]:
    """The event's payload: what changed, then who made the change and from where."""
    return {**what, **who}


async def record_admin_action(store: Store, clock: Clock, payload: Mapping[str, Any]) -> bool:
    """Append the event (written after the change commits) and log one line; False when the
    event could not be written: the change is made, so say so rather than undo it."""
    log.info(
        "admin change",
        extra={
            k: payload[k] for k in ("action", "target", "actor", "address", "host") if k in payload
        },
    )
    try:
        await store.append_event(ADMIN_ACTION, clock.now(), dict(payload))
    except Exception:
        log.exception("admin audit event not written", extra={"action": payload.get("action")})
        return False
    return True
