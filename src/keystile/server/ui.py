"""The browser side of the authorization code flow (RFC 6749 §4.1): sign-in, consent, sign-out.

Server-rendered pages (Jinja2, autoescaped), no JavaScript. ``ui_routes(...)`` returns the
Starlette routes:

- ``GET|POST /oauth2/authorize``: validate the request (core/authorization.py), then show
  the login page, the consent page, or (consent remembered) redirect with a code.
- ``GET|POST /login``: sign in; the authorization request rides along in a hidden field
  (``request``: its query string) and is resumed with a 303 to /oauth2/authorize.
- ``POST /oauth2/consent``: Allow or Deny the carried request.
- ``GET|POST /logout``: sign out.

Sessions: a 256-bit cookie value held only by the browser; the store keeps its SHA-256.
Forms carry a signed double-submit CSRF token (OWASP): HMAC-SHA256 under a server key of
a random cookie value (and, once signed in, the session's hash).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from keystile.clock import Clock
from keystile.core.authorization import (
    ACCESS_DENIED,
    AuthorizationPageError,
    AuthorizationRedirectError,
    AuthorizationRequest,
    Params,
    code_location,
    encode_params,
    error_location,
    parse_params,
    requested_client_id,
    validate_authorization_request,
)
from keystile.core.forms import Form, parse_form
from keystile.core.metadata import AUTHORIZATION_PATH
from keystile.core.models import AuthorizationCode, Grant, Session, User
from keystile.core.passwords import (
    PasswordPolicyError,
    hash_password,
    needs_rehash,
    verify_password,
)
from keystile.core.scope import format_scope
from keystile.core.tokens import new_authorization_code, token_hash
from keystile.errors import InvalidRequest, StoreUnavailable
from keystile.server.http import ClientDisconnected, read_body
from keystile.server.throttle import FailureThrottle, Throttle
from keystile.settings import ServerSettings
from keystile.store.base import Store

log = logging.getLogger("keystile.server")

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
CONSENT_PATH = "/oauth2/consent"

# Cookie names; over HTTPS they get the __Host- prefix, which browsers accept only with
# Secure, Path=/ and no Domain: no subdomain or plain-HTTP page can plant or shadow them.
SESSION_COOKIE = "ks_session"
CSRF_COOKIE = "ks_csrf"
HOST_PREFIX = "__Host-"
CSRF_KEY_META = "ui_csrf_key"  # the CSRF server key, in the store's meta table (hex)

WRONG_CREDENTIALS = "Wrong username or password."
MAX_USERNAME = 128  # admin.check_username allows no longer names

# Plain words for well-known scopes; any other scope is shown as it is.
SCOPE_DESCRIPTIONS: Mapping[str, str] = {
    "openid": "Know who you are",
    "profile": "See your basic profile",
    "email": "See your email address",
    "offline_access": "Keep access while you are away",
    "read": "Read your data",
    "write": "Change your data",
}

_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_TEMPLATES = Path(__file__).parent / "templates"
_CSS = (_TEMPLATES / "ui.css").read_text(encoding="utf-8")
# Inserted as is, byte for byte, so that the CSP hash below matches it.
_CSS_MARKUP = Markup(_CSS)  # noqa: S704 - our own stylesheet, never input
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode("ascii")

# On every page. no-store: pages carry CSRF tokens and redirects carry codes. No
# form-action: Chromium applies it to the redirect after the consent POST, which goes to
# the client's origin. no-referrer: a page URL may hold an authorization request.
SECURITY_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True, slots=True)
class _ScopeItem:
    name: str
    description: str | None


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
) -> list[Route]:
    """The sign-in, consent and sign-out routes, for the app's Starlette routes:
    ``Starlette(routes=[..., *ui_routes(settings, store, clock)])``.

    ``throttle`` counts failed sign-ins under keys ``lu:<username>`` and ``la:<address>``;
    by default an in-process one with ``login_failures`` per ``login_window``.
    """
    pages = _Pages(
        settings,
        store,
        clock,
        throttle if throttle is not None else login_throttle(settings, clock),
        scope_descriptions,
    )
    return [
        Route(AUTHORIZATION_PATH, pages.guard(pages.authorize), methods=["GET", "POST"]),
        Route(CONSENT_PATH, pages.guard(pages.consent), methods=["POST"]),
        Route(LOGIN_PATH, pages.guard(pages.login), methods=["GET", "POST"]),
        Route(LOGOUT_PATH, pages.guard(pages.logout), methods=["GET", "POST"]),
    ]


class _KeyLocks:
    """An asyncio.Lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class _Forbidden(Exception):
    """A form without a valid CSRF token: answered 403, nothing changed."""


class _Pages:
    def __init__(
        self,
        settings: ServerSettings,
        store: Store,
        clock: Clock,
        throttle: Throttle,
        scope_descriptions: Mapping[str, str],
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.throttle = throttle
        self.issuer = settings.effective_issuer
        self.scope_descriptions = scope_descriptions
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._csrf_key: bytes | None = None
        # argon2id takes 64 MiB and ~150 ms of CPU per check: bound how many run at once,
        # so a burst of sign-ins queues instead of exhausting memory.
        self._hashing = asyncio.Semaphore(max(2, os.cpu_count() or 2))
        self._attempts = _KeyLocks()  # sign-in attempts, one at a time per username

    # -- the request cycle ------------------------------------------------------------------

    def guard(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except _Forbidden:
                log.warning(
                    "form refused: CSRF token missing or wrong",
                    extra={"path": request.url.path, "source": _source(request)},
                )
                return self._message(
                    request,
                    "Form expired",
                    "This form has expired or did not come from this site. Go back, reload "
                    "the page and try again.",
                    status=403,
                )
            except InvalidRequest as exc:  # an unreadable body (413: too large)
                return self._message(
                    request, "Bad request", exc.description or "bad request", status=exc.status_code
                )
            except StoreUnavailable as exc:
                log.error("store unavailable", extra={"path": request.url.path, "error": str(exc)})
                return self._message(
                    request,
                    "Temporarily unavailable",
                    "The service is temporarily unavailable. Try again in a moment.",
                    status=503,
                    headers={"Retry-After": "1"},
                )
            except ClientDisconnected:
                return Response(status_code=400)  # nobody is left to read it
            except Exception:
                log.exception("unexpected error", extra={"path": request.url.path})
                return self._message(
                    request, "Error", "Something went wrong on our side.", status=500
                )

        return endpoint

    # -- GET|POST /oauth2/authorize -----------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        """The authorization endpoint (RFC 6749 §3.1, §4.1.1): GET, or POST with a form body."""
        if request.method == "HEAD":
            # Starlette answers HEAD for every GET route; here it would issue a code nobody
            # receives (a remembered consent redirects at once).
            return self._message(
                request,
                "Method not allowed",
                "Use GET or POST for the authorization endpoint.",
                status=405,
                headers={"Allow": "GET, POST"},
            )
        post = request.method == "POST"
        redirect_status = 303 if post else 302
        try:
            if post:
                params = parse_params(await self._body_text(request))
            else:
                params = parse_params(request.scope["query_string"].decode("latin-1"))
            areq = await self._validate(params)
        except AuthorizationPageError as exc:
            return self._refused(request, exc)
        except AuthorizationRedirectError as exc:
            return self._redirect_error(request, exc, redirect_status)
        carried = encode_params(params)
        found = await self._session(request)
        if found is None:
            return await self._login_page(request, carried=carried, areq=areq)
        session, user = found
        remembered = await self.store.get_consent(user.user_id, areq.client.client_id)
        # Remembered consent covers the scopes it named, for the client's own audience: a
        # request naming another resource server (RFC 8707) asks again, since the consent
        # page showed where the access would be used.
        if (
            remembered is not None
            and areq.scope <= remembered
            and set(areq.aud) <= set(areq.client.default_audience)
        ):
            issued = await self._issue_code(areq, session, user, redirect_status)
            return issued or await self._login_page(request, carried=carried, areq=areq)
        return await self._consent_page(request, areq, carried, session, user)

    # -- POST /oauth2/consent -----------------------------------------------------------------

    async def consent(self, request: Request) -> Response:
        """The person's decision on a carried authorization request (RFC 6749 §4.1.1)."""
        form = await self._form(request)
        try:
            params = parse_params(form.get("request", ""))
        except AuthorizationPageError as exc:
            return self._refused(request, exc)
        found = await self._session(request)
        if found is None:  # signed out meanwhile (or expired): sign in, then decide again
            return await self._login_page(
                request, carried=encode_params(params), areq=await self._quiet_validate(params)
            )
        session, user = found
        await self._check_csrf(request, form, "consent", session.session_hash)
        try:
            # Again: the client, its redirect URIs or the resource servers may have changed.
            areq = await self._validate(params)
        except AuthorizationPageError as exc:
            return self._refused(request, exc)
        except AuthorizationRedirectError as exc:
            return self._redirect_error(request, exc, 303)
        decision = form.get("decision")
        if decision == "deny":
            log.info(
                "authorization denied",
                extra={"client_id": areq.client.client_id, "user_id": user.user_id},
            )
            location = error_location(
                areq.redirect_uri,
                ACCESS_DENIED,
                "the user denied the request",
                state=areq.state,
                issuer=self.issuer,
            )
            return self._redirect(location, 303)
        if decision != "allow":
            return self._message(request, "Bad request", "Choose Allow or Deny.", status=400)
        if form.get("remember") == "yes":
            before = await self.store.get_consent(user.user_id, areq.client.client_id)
            await self.store.set_consent(
                user.user_id,
                areq.client.client_id,
                areq.scope | (before or frozenset()),
                self.clock.now(),
            )
        issued = await self._issue_code(areq, session, user, 303)
        return issued or await self._login_page(request, carried=encode_params(params), areq=areq)

    async def _issue_code(
        self, areq: AuthorizationRequest, session: Session, user: User, status: int
    ) -> Response | None:
        """Store a new grant with its code, then send the code to the client (§4.1.2).
        None if the session ended or the user was disabled since it was checked."""
        now = self.clock.now()
        client = areq.client
        grant = Grant(
            grant_id="gr_" + secrets.token_urlsafe(16),
            client_id=client.client_id,
            user_id=user.user_id,
            username=user.username,
            scope=areq.scope,
            aud=areq.aud,
            created_at=now,
            auth_time=session.created_at,
            expires_at=now + client.refresh_token_max_ttl,
        )
        code = new_authorization_code()
        stored = await self.store.create_authorization_code(
            grant,
            AuthorizationCode(
                code_hash=token_hash(code),
                grant_id=grant.grant_id,
                client_id=client.client_id,
                redirect_uri=areq.redirect_uri,
                code_challenge=areq.code_challenge,
                created_at=now,
                expires_at=now + self.settings.authorization_code_ttl,
            ),
            session_hash=session.session_hash,
        )
        if not stored:
            return None
        log.info(
            "authorization code issued",
            extra={
                "client_id": client.client_id,
                "user_id": user.user_id,
                "grant_id": grant.grant_id,
                "scope": format_scope(areq.scope),
                "aud": list(areq.aud),
            },
        )
        return self._redirect(code_location(areq, code, issuer=self.issuer), status)

    # -- GET|POST /login ----------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if request.method != "POST":
            found = await self._session(request)
            if found is not None:
                return self._message(
                    request,
                    "Signed in",
                    f"You are signed in as {found[1].username}.",
                    link=("Sign out", LOGOUT_PATH),
                )
            return await self._login_page(request, carried=None, areq=None)

        form = await self._form(request)
        carried, areq = await self._carried(form.get("request"))
        await self._check_csrf(request, form, "login", b"")
        typed = form.get("username", "")
        username = typed.strip().lower()
        password = form.get("password", "")
        source = _source(request)
        keys = ("lu:" + username[: MAX_USERNAME + 1], "la:" + source)
        wait = self.throttle.retry_after(*keys)
        if wait:
            return self._throttled(request, wait, source)
        if not username or not password:
            return await self._login_page(
                request, carried=carried, areq=areq, username=typed, error=True
            )
        user = (
            await self.store.get_user_by_name(username) if len(username) <= MAX_USERNAME else None
        )
        # One check at a time per username, and the throttle asked again once it is this
        # attempt's turn: guesses sent at once all passed the check above before any of
        # them had failed, and would otherwise all be tried.
        async with self._attempts.hold(keys[0]), self._hashing:
            wait = self.throttle.retry_after(*keys)
            if not wait:
                # An unknown username costs the same argon2 work as a known one
                # (verify_password with None), so timing does not tell which exist.
                ok = await asyncio.to_thread(
                    verify_password, user.password_hash if user is not None else None, password
                )
                if user is None or not ok or not user.enabled:
                    self.throttle.failed(*keys)
        if wait:
            return self._throttled(request, wait, source)
        if user is None or not ok or not user.enabled:
            # Log a user id only for an existing user: an unknown "username" may be a
            # password typed into the wrong field, so it is logged as a short digest keyed
            # by the server key (a plain hash would let anyone with the logs test guesses).
            who = (
                {"user_id": user.user_id}
                if user is not None
                else {"unknown_user_hmac": await self._log_digest(username)}
            )
            log.warning("sign-in failed", extra={**who, "source": source})
            return await self._login_page(
                request, carried=carried, areq=areq, username=typed, error=True
            )

        if needs_rehash(user.password_hash):
            # Made with weaker argon2 parameters than today's: upgrade it now, while the
            # password is at hand (the only moment it is).
            try:
                upgraded = await asyncio.to_thread(hash_password, password)
            except PasswordPolicyError:
                pass  # set before today's policy: upgraded at the next `user passwd`
            else:
                await self.store.update_user(
                    replace(user, password_hash=upgraded, updated_at=self.clock.now())
                )
                log.info("password hash upgraded", extra={"user_id": user.user_id})
        old = self._cookie(request, SESSION_COOKIE)
        if old is not None:
            await self.store.delete_session(token_hash(old))  # a new session on every sign-in
        value = secrets.token_urlsafe(32)  # 256 bits; the store keeps only its SHA-256
        now = self.clock.now()
        ttl = self.settings.session_ttl
        if not await self.store.create_session(
            Session(token_hash(value), user.user_id, now, now + ttl)
        ):
            # Disabled or deleted while the password was being checked.
            log.warning("sign-in failed", extra={"user_id": user.user_id, "source": source})
            return await self._login_page(
                request, carried=carried, areq=areq, username=typed, error=True
            )
        log.info("user signed in", extra={"user_id": user.user_id, "source": source})
        location = f"{AUTHORIZATION_PATH}?{carried}" if carried else LOGIN_PATH
        response = self._redirect(location, 303)
        self._set_cookie(response, request, SESSION_COOKIE, value, max_age=ttl)
        return response

    def _throttled(self, request: Request, wait: int, source: str) -> Response:
        # Refused before any password check, so throttled guesses learn nothing.
        log.warning("sign-in throttled", extra={"source": source})
        return self._message(
            request,
            "Too many attempts",
            f"Too many failed sign-in attempts. Try again in {wait} seconds.",
            status=429,
            headers={"Retry-After": str(max(1, wait))},
        )

    # -- GET|POST /logout ---------------------------------------------------------------------

    async def logout(self, request: Request) -> Response:
        value = self._cookie(request, SESSION_COOKIE)
        session_hash = token_hash(value) if value is not None else b""
        if request.method != "POST":
            found = await self._session(request)
            csrf_cookie, new = self._csrf_cookie_or_new(request)
            response = self._page(
                "logout.html",
                csrf=await self._csrf_token(csrf_cookie, "logout", session_hash),
                username=found[1].username if found is not None else None,
                logout_path=LOGOUT_PATH,
            )
            if new:
                self._set_cookie(response, request, CSRF_COOKIE, csrf_cookie)
            return response
        form = await self._form(request)
        await self._check_csrf(request, form, "logout", session_hash)
        if value is not None:
            found = await self.store.get_session(session_hash, self.clock.now())
            await self.store.delete_session(session_hash)
            if found is not None:
                log.info(
                    "user signed out",
                    extra={"user_id": found[1].user_id, "source": _source(request)},
                )
        response = self._message(request, "Signed out", "You are signed out.")
        response.delete_cookie(
            self._name(request, SESSION_COOKIE),
            path="/",
            secure=self._secure(request),
            httponly=True,
            samesite="lax",
        )
        return response

    # -- authorization requests -------------------------------------------------------------

    async def _validate(self, params: Params) -> AuthorizationRequest:
        client = await self.store.get_client(requested_client_id(params))
        known = await self.store.known_resources() if params.get("resource") else frozenset()
        return validate_authorization_request(params, client, known_resources=known)

    async def _quiet_validate(self, params: Params) -> AuthorizationRequest | None:
        try:
            return await self._validate(params)
        except (AuthorizationPageError, AuthorizationRedirectError):
            return None

    async def _carried(self, text: str | None) -> tuple[str | None, AuthorizationRequest | None]:
        """The carried request as a canonical query (None if there is none or it does not
        parse) and, if it is valid, the request itself (to name the client)."""
        if not text:
            return None, None
        try:
            params = parse_params(text)
        except AuthorizationPageError:
            return None, None
        # Canonical re-encoding: whatever came in, the 303 to /oauth2/authorize carries
        # only a query built here.
        return encode_params(params) or None, await self._quiet_validate(params)

    def _refused(self, request: Request, exc: AuthorizationPageError) -> Response:
        # RFC 6749 §4.1.2.1: no trustworthy redirect URI, so tell the person, not the client.
        log.info(
            "authorization request refused",
            extra={"description": exc.description, "source": _source(request)},
        )
        return self._message(
            request,
            "Invalid request",
            f"This sign-in request cannot be completed: {exc.description}.",
            status=400,
        )

    def _redirect_error(
        self, request: Request, exc: AuthorizationRedirectError, status: int
    ) -> Response:
        log.info(
            "authorization request refused",
            extra={"error": exc.error, "description": exc.description, "source": _source(request)},
        )
        return self._redirect(exc.location(self.issuer), status)

    # -- sessions, cookies, CSRF ------------------------------------------------------------

    async def _session(self, request: Request) -> tuple[Session, User] | None:
        """The live session of an enabled user, or None."""
        value = self._cookie(request, SESSION_COOKIE)
        if value is None:
            return None
        return await self.store.get_session(token_hash(value), self.clock.now())

    def _secure(self, request: Request) -> bool:
        return self.settings.tls or request.url.scheme == "https"

    def _name(self, request: Request, name: str) -> str:
        return HOST_PREFIX + name if self._secure(request) else name

    def _cookie(self, request: Request, name: str) -> str | None:
        value = request.cookies.get(self._name(request, name))
        return value if value is not None and _COOKIE_VALUE.fullmatch(value) else None

    def _set_cookie(
        self,
        response: Response,
        request: Request,
        name: str,
        value: str,
        max_age: int | None = None,
    ) -> None:
        # HttpOnly: no script needs them. SameSite=Lax: sent on the top-level GET a client
        # redirects to, never on cross-site POSTs.
        response.set_cookie(
            self._name(request, name),
            value,
            max_age=max_age,
            path="/",
            secure=self._secure(request),
            httponly=True,
            samesite="lax",
        )

    def _csrf_cookie_or_new(self, request: Request) -> tuple[str, bool]:
        value = self._cookie(request, CSRF_COOKIE)
        if value is not None:
            return value, False
        return secrets.token_urlsafe(32), True

    async def _csrf_token(self, cookie: str, purpose: str, session_hash: bytes) -> str:
        """HMAC-SHA256 (server key) of the form's purpose, the CSRF cookie and the session."""
        key = await self._key()
        return _mac(key, purpose, cookie, session_hash)

    async def _check_csrf(
        self, request: Request, form: Form, purpose: str, session_hash: bytes
    ) -> None:
        cookie = self._cookie(request, CSRF_COOKIE)
        given = form.get("csrf")
        if cookie is None or given is None:
            raise _Forbidden
        presented = given.encode("utf-8", "surrogateescape")
        key = await self._key()
        # Compare in constant time: the token is a MAC.
        if not hmac.compare_digest(_mac(key, purpose, cookie, session_hash).encode(), presented):
            raise _Forbidden

    async def _log_digest(self, value: str) -> str:
        message = b"log\0" + value.encode("utf-8", "surrogateescape")
        return hmac.new(await self._key(), message, hashlib.sha256).hexdigest()[:16]

    async def _key(self) -> bytes:
        if self._csrf_key is None:
            self._csrf_key = await self._load_key()
        return self._csrf_key

    async def _load_key(self) -> bytes:
        value = await self.store.get_meta(CSRF_KEY_META)
        if value is None:
            # Insert-if-absent: processes starting together all keep the one that won.
            value = await self.store.claim_meta(CSRF_KEY_META, secrets.token_hex(32))
        return bytes.fromhex(value)

    # -- pages --------------------------------------------------------------------------------

    async def _login_page(
        self,
        request: Request,
        *,
        carried: str | None,
        areq: AuthorizationRequest | None,
        username: str = "",
        error: bool = False,
    ) -> Response:
        csrf_cookie, new = self._csrf_cookie_or_new(request)
        response = self._page(
            "login.html",
            status=401 if error else 200,
            csrf=await self._csrf_token(csrf_cookie, "login", b""),
            carried=carried,
            client_name=areq.client.name if areq is not None else None,
            username=username,
            error=WRONG_CREDENTIALS if error else None,
            login_path=LOGIN_PATH,
        )
        if new:
            self._set_cookie(response, request, CSRF_COOKIE, csrf_cookie)
        return response

    async def _consent_page(
        self,
        request: Request,
        areq: AuthorizationRequest,
        carried: str,
        session: Session,
        user: User,
    ) -> Response:
        csrf_cookie, new = self._csrf_cookie_or_new(request)
        redirect = urlsplit(areq.redirect_uri)
        origin = f"{redirect.scheme}://{redirect.netloc}" if redirect.netloc else redirect.scheme
        response = self._page(
            "consent.html",
            csrf=await self._csrf_token(csrf_cookie, "consent", session.session_hash),
            carried=carried,
            client_name=areq.client.name or areq.client.client_id,
            username=user.username,
            scopes=[
                _ScopeItem(name, self.scope_descriptions.get(name)) for name in sorted(areq.scope)
            ],
            audiences=list(areq.aud),
            redirect_origin=origin,
            consent_path=CONSENT_PATH,
            logout_path=LOGOUT_PATH,
        )
        if new:
            self._set_cookie(response, request, CSRF_COOKIE, csrf_cookie)
        return response

    def _message(
        self,
        request: Request,
        heading: str,
        message: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        link: tuple[str, str] | None = None,
    ) -> Response:
        return self._page(
            "message.html",
            status=status,
            headers=headers,
            heading=heading,
            message=message,
            alert=status >= 400,
            link={"text": link[0], "href": link[1]} if link else None,
        )

    def _page(
        self,
        template: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> Response:
        html = self.env.get_template(template).render(css=_CSS_MARKUP, **context)
        return HTMLResponse(
            html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})}
        )

    def _redirect(self, location: str, status: int) -> Response:
        return RedirectResponse(location, status_code=status, headers=dict(SECURITY_HEADERS))

    # -- request bodies -------------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes:
        return await read_body(
            request.receive, request.headers.get("content-length"), self.settings.max_body_bytes
        )

    async def _form(self, request: Request) -> Form:
        body = await self._body(request)
        if not body:
            return Form()  # nothing sent: the CSRF check refuses it (403)
        return parse_form(body, request.headers.get("content-type"))

    async def _body_text(self, request: Request) -> str:
        """A POSTed authorization request: a form body (RFC 6749 §3.1)."""
        ctype = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise AuthorizationPageError("the request body must be a form")
        body = await self._body(request)
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise AuthorizationPageError("the request is not properly URL-encoded") from None


def _mac(key: bytes, purpose: str, cookie: str, session_hash: bytes) -> str:
    message = f"{purpose}\0{cookie}\0{session_hash.hex()}".encode("ascii")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _source(request: Request) -> str:
    return request.client.host if request.client else "unknown"
