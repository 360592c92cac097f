"""The browser side of the authorization code flow (RFC 6749 §4.1): sign-in, consent, sign-out.

Server-rendered pages (Jinja2, autoescaped), no JavaScript. ``ui_routes(...)`` returns the
Starlette routes:

- ``GET|POST /oauth2/authorize``: validate the request (core/authorization.py), then show
  the login page, the consent page, or (consent remembered) redirect with a code.
- ``GET|POST /login``: sign in; the authorization request rides along in a hidden field
  (``request``: its query string) and is resumed with a 303 to /oauth2/authorize.
- ``POST /oauth2/consent``: Allow or Deny the carried request.
- ``GET|POST /logout``: sign out.
- ``GET|POST /oauth2/logout``: RP-initiated logout (``ui_end_session.py``).

Split along the grain: ``ui_sessions.py`` (sessions, cookies, CSRF), ``ui_pages.py`` (the
login form, sign-out, rendering), ``ui_authorize.py`` (authorization and consent) and
``ui_end_session.py`` (RP-initiated logout).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.routing import Route

from keystile.clock import Clock
from keystile.core.metadata import AUTHORIZATION_PATH, END_SESSION_PATH
from keystile.server.client_metadata import MetadataDocumentClients
from keystile.server.throttle import FailureThrottle, Throttle
from keystile.server.ui_end_session import EndSessionPages
from keystile.server.ui_pages import (
    CONSENT_PATH,
    LOGIN_PATH,
    LOGOUT_PATH,
    SECURITY_HEADERS,
)
from keystile.settings import ServerSettings
from keystile.store.base import Store

__all__ = ["SCOPE_DESCRIPTIONS", "SECURITY_HEADERS", "login_throttle", "ui_routes"]

# Plain words for well-known scopes; any other scope is shown as it is.
SCOPE_DESCRIPTIONS: Mapping[str, str] = {
    "openid": "Know who you are",
    "profile": "See your basic profile",
    "email": "See your email address",
    "offline_access": "Keep access while you are away",
    "read": "Read your data",
    "write": "Change your data",
    "keystile:admin": "Administer this keystile server",
    "keystile:admin:read": "See this keystile server's settings",
}


def login_throttle(settings: ServerSettings, clock: Clock) -> FailureThrottle:
    """The in-process throttle of failed sign-ins (per username and per address)."""
    return FailureThrottle(clock, limit=settings.login_failures, window=settings.login_window)


def ui_routes(
    settings: ServerSettings,
    store: Store,
    clock: Clock,
    *,
    throttle: Throttle | None = None,
    scope_descriptions: Mapping[str, str] = SCOPE_DESCRIPTIONS,
    clients: MetadataDocumentClients | None = None,
) -> list[Route]:
    """The sign-in, consent and sign-out routes, for the app's Starlette routes:
    ``Starlette(routes=[..., *ui_routes(settings, store, clock)])``.

    ``throttle`` counts failed sign-ins under keys ``lu:<username>`` and ``la:<address>``;
    by default an in-process one with ``login_failures`` per ``login_window``. ``clients``
    answers which client a client_id names (client ID metadata documents included).
    """
    pages = EndSessionPages(
        settings,
        store,
        clock,
        throttle if throttle is not None else login_throttle(settings, clock),
        scope_descriptions,
    )
    if clients is not None:
        pages.clients = clients
    return [
        Route(AUTHORIZATION_PATH, pages.guard(pages.authorize), methods=["GET", "POST"]),
        Route(CONSENT_PATH, pages.guard(pages.consent), methods=["POST"]),
        Route(LOGIN_PATH, pages.guard(pages.login), methods=["GET", "POST"]),
        Route(LOGOUT_PATH, pages.guard(pages.logout), methods=["GET", "POST"]),
        # RP-Initiated Logout §2: GET and POST.
        Route(END_SESSION_PATH, pages.guard(pages.end_session), methods=["GET", "POST"]),
    ]
