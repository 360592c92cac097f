"""The sign-in and sign-out pages (the login form), and how every page is rendered."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from keystile.core.authorization import (
    AuthorizationPageError,
    AuthorizationRedirectError,
    AuthorizationRequest,
    Params,
    encode_params,
    parse_params,
    requested_client_id,
    signed_in,
    validate_authorization_request,
)
from keystile.core.client_metadata_document import is_client_id_url
from keystile.core.metadata import AUTHORIZATION_PATH
from keystile.core.models import Session, User
from keystile.core.oidc import identity_claims
from keystile.core.passwords import (
    PasswordPolicyError,
    hash_password,
    needs_rehash,
    verify_password,
)
from keystile.core.tokens import token_hash
from keystile.errors import InvalidRequest, StoreUnavailable
from keystile.server.client_metadata import DocumentUnavailable
from keystile.server.http import ClientDisconnected
from keystile.server.ui_sessions import (
    _TEMPLATES,
    CSRF_COOKIE,
    SESSION_COOKIE,
    UiBase,
    _Forbidden,
    _source,
)

log = logging.getLogger("keystile.server")

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
CONSENT_PATH = "/oauth2/consent"

WRONG_CREDENTIALS = "Wrong username or password."
OTHER_USER_REQUESTED = "This application asked for another account: sign in as that user."
# The identity claims (OIDC Core §5.1) in plain words, for the consent page.
CLAIM_DESCRIPTIONS: Mapping[str, str] = {
    "name": "Your name",
    "preferred_username": "Your username",
    "email": "Your email address",
    "email_verified": "Whether your email address is verified",
}
MAX_USERNAME = 128  # admin.check_username allows no longer names

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


class LoginPages(UiBase):
    """Sign-in and sign-out, the authorization requests they carry, and page rendering."""

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
        account, address = "lu:" + username[: MAX_USERNAME + 1], "la:" + source
        # People's passwords can be guessed, so an account takes at most login_failures
        # wrong ones per window, from anywhere: past that it is refused before any password
        # work, the right password included, until its window ends (docs/users.md).
        wait = self.throttle.retry_after(account)
        if wait:
            return self._throttled(request, wait, source)
        if not username or not password:
            return await self._login_page(
                request, carried=carried, areq=areq, username=typed, error=True
            )
        user = (
            await self.store.get_user_by_name(username) if len(username) <= MAX_USERNAME else None
        )
        # An address over its limit does not lock out the other people behind it (an office,
        # a carrier's NAT): their right passwords still get in. Its attempts are checked one
        # at a time, so it holds at most one argon2 slot, and its wrong ones get 429.
        crowded = self.throttle.retry_after(address) > 0
        address_turn = self._attempts.hold(address) if crowded else contextlib.nullcontext()
        # One check at a time per username, and the throttle asked again once it is this
        # attempt's turn: guesses sent at once all passed the check above before any of
        # them had failed, and would otherwise all be tried.
        failed = False
        async with self._attempts.hold(account), address_turn, self._hashing:
            wait = self.throttle.retry_after(account)
            if not wait:
                # An unknown username costs the same argon2 work as a known one
                # (verify_password with None), so timing does not tell which exist.
                ok = await asyncio.to_thread(
                    verify_password, user.password_hash if user is not None else None, password
                )
                failed = user is None or not ok or not user.enabled
                if failed:
                    wait = self.throttle.retry_after(address)
                    self.throttle.failed(account, address)
        if wait and not failed:
            return self._throttled(request, wait, source)
        if failed or user is None:
            # Log a user id only for an existing user: an unknown "username" may be a
            # password typed into the wrong field, so it is logged as a short digest keyed
            # by the server key (a plain hash would let anyone with the logs test guesses).
            who = (
                {"user_id": user.user_id}
                if user is not None
                else {"unknown_user_hmac": await self._log_digest(username)}
            )
            log.warning("sign-in failed", extra={**who, "source": source})
            if wait:  # a wrong password from an address over its limit
                return self._throttled(request, wait, source)
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
        # OIDC Core §3.1.2.1 prompt=login is satisfied now: resume without it, or the
        # request would ask for a sign-in again and again.
        resumed = encode_params(signed_in(parse_params(carried))) if carried else None
        location = f"{AUTHORIZATION_PATH}?{resumed}" if resumed else LOGIN_PATH
        response = self._redirect(location, 303)
        self._set_cookie(response, request, SESSION_COOKIE, value, max_age=ttl)
        return response

    def _throttled(self, request: Request, wait: int, source: str) -> Response:
        # A locked account is refused before any password check, so its guesses learn
        # nothing; an address over its limit gets this for its wrong passwords only.
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
        self._clear_cookie(response, request, SESSION_COOKIE)
        return response

    # -- authorization requests -------------------------------------------------------------

    async def _validate(self, params: Params) -> AuthorizationRequest:
        try:
            client = await self.clients.get_client(requested_client_id(params))
        except DocumentUnavailable as exc:
            # draft-ietf-oauth-client-id-metadata-document §5.1: abort; no redirect URI is
            # known to be the client's, so the person is told (RFC 6749 §4.1.2.1).
            raise AuthorizationPageError(
                f"the client's metadata document cannot be used: {exc.reason}"
            ) from None
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

    # -- pages --------------------------------------------------------------------------------

    async def _login_page(
        self,
        request: Request,
        *,
        carried: str | None,
        areq: AuthorizationRequest | None,
        username: str = "",
        error: bool = False,
        message: str | None = None,
    ) -> Response:
        """The sign-in form; ``error``: wrong credentials (401), ``message``: why the person
        is asked to sign in (e.g. as another user)."""
        csrf_cookie, new = self._csrf_cookie_or_new(request)
        response = self._page(
            "login.html",
            status=401 if error else 200,
            csrf=await self._csrf_token(csrf_cookie, "login", b""),
            carried=carried,
            client_name=areq.client.name if areq is not None else None,
            username=username,
            error=WRONG_CREDENTIALS if error else message,
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
            # draft §8.5: a client named by its URL shows the host it lives at.
            client_host=urlsplit(areq.client.client_id).hostname
            if is_client_id_url(areq.client.client_id)
            else None,
            username=user.username,
            scopes=[
                _ScopeItem(name, self.scope_descriptions.get(name)) for name in sorted(areq.scope)
            ],
            audiences=list(areq.aud),
            # OIDC Core §5.4, §5.5: the facts about the person the client will learn.
            claims=[
                _ScopeItem(name, CLAIM_DESCRIPTIONS.get(name))
                for name in identity_claims(areq.scope, areq.claims)
            ],
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
