"""Sign-in sessions, cookies and CSRF tokens for the pages (ui.py).

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
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import jinja2
from starlette.requests import Request
from starlette.responses import Response

from keystile.clock import Clock
from keystile.core.authorization import AuthorizationPageError
from keystile.core.forms import Form, parse_form
from keystile.core.models import Session, User
from keystile.core.tokens import token_hash
from keystile.server.client_metadata import MetadataDocumentClients
from keystile.server.http import read_body
from keystile.server.throttle import Throttle
from keystile.settings import ServerSettings
from keystile.store.base import Store

log = logging.getLogger("keystile.server")

# Cookie names; over HTTPS they get the __Host- prefix, which browsers accept only with
# Secure, Path=/ and no Domain: no subdomain or plain-HTTP page can plant or shadow them.
SESSION_COOKIE = "ks_session"
CSRF_COOKIE = "ks_csrf"
HOST_PREFIX = "__Host-"
CSRF_KEY_META = "ui_csrf_key"  # the CSRF server key, in the store's meta table (hex)

_TEMPLATES = Path(__file__).parent / "templates"
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)


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


class PageCookies:
    """The cookies of the server-rendered pages (sign-in and the admin console): named with
    the ``__Host-`` prefix over TLS, HttpOnly, SameSite=Lax. Needs ``self.settings``."""

    settings: ServerSettings

    def _secure(self, request: Request) -> bool:
        return self.settings.tls or request.url.scheme == "https"

    def _name(self, request: Request, name: str) -> str:
        return HOST_PREFIX + name if self._secure(request) else name

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

    def _clear_cookie(self, response: Response, request: Request, name: str) -> None:
        """Tell the browser to drop the cookie (same name, path and flags, Max-Age=0)."""
        self._set_cookie(response, request, name, "", 0)


class UiBase(PageCookies):
    """What the pages share: settings, store, templates, the sign-in throttle, sessions,
    cookies, CSRF tokens and request bodies."""

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
        # Which client a client_id names (ui_routes shares the endpoints' instance).
        self.clients = MetadataDocumentClients(settings, store, clock)
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

    # -- sessions, cookies, CSRF ------------------------------------------------------------

    async def _session(self, request: Request) -> tuple[Session, User] | None:
        """The live session of an enabled user, or None."""
        value = self._cookie(request, SESSION_COOKIE)
        if value is None:
            return None
        return await self.store.get_session(token_hash(value), self.clock.now())

    def _cookie(self, request: Request, name: str) -> str | None:
        value = request.cookies.get(self._name(request, name))
        return value if value is not None and _COOKIE_VALUE.fullmatch(value) else None

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
