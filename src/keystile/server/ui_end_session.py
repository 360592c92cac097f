"""RP-initiated logout (RP-Initiated Logout 1.0 §2, §3): GET|POST /oauth2/logout.

An RP sends the browser here with ``id_token_hint``, ``post_logout_redirect_uri`` and
``state``. When the hint names the user signed in in this browser, the session ends at once;
otherwise (no hint, another user, an unknown RP) the person is asked first, on a page with a
CSRF token, so that a link on any site cannot sign people out (§2: the OP SHOULD ask). Ending
the session also revokes the client's grants for that user when the client is set so
(``--logout-revokes-grants``). Then the browser goes to the registered
``post_logout_redirect_uri`` (exact match) with ``state``, or sees a "signed out" page.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import Response

from keystile.core.authorization import AuthorizationPageError, encode_params, parse_params
from keystile.core.forms import Form
from keystile.core.logout import (
    IdTokenHint,
    LogoutRequest,
    LogoutRequestError,
    check_logout_request,
    requested_client_id,
    verify_id_token_hint,
)
from keystile.core.metadata import END_SESSION_PATH
from keystile.core.models import Session, User
from keystile.server.keys import SigningKeys
from keystile.server.ui_authorize import AuthorizationPages
from keystile.server.ui_pages import LOGOUT_PATH
from keystile.server.ui_sessions import CSRF_COOKIE, SESSION_COOKIE, _source
from keystile.store.base import RP_LOGOUT

log = logging.getLogger("keystile.server")

_PURPOSE = "end_session"


class EndSessionPages(AuthorizationPages):
    """The pages of ``ui.py`` plus the end-session endpoint."""

    _signing: SigningKeys | None = None

    @property
    def signing(self) -> SigningKeys:
        # The published keys verify id_token_hint; the ring follows key changes in any
        # process (server/keys.py).
        if self._signing is None:
            self._signing = SigningKeys(self.settings, self.store, self.clock)
        return self._signing

    async def end_session(self, request: Request) -> Response:
        if request.method == "HEAD":
            return self._message(
                request,
                "Method not allowed",
                "Use GET or POST.",
                status=405,
                headers={"Allow": "GET, POST"},
            )
        try:
            if request.method == "POST":
                params = parse_params(await self._body_text(request))
                if "csrf" in params:  # the confirmation page's form, not an RP's request
                    return await self._confirmed(request, params)
            else:
                params = parse_params(request.scope["query_string"].decode("latin-1"))
            logout = await self._check(params)
        except (AuthorizationPageError, LogoutRequestError) as exc:
            return self._refused_logout(request, exc.description)
        found = await self._session(request)
        if found is not None and logout.hint is not None and logout.hint.sub == found[1].user_id:
            # The RP proves it signed this very user in: no need to ask (§2).
            return await self._end(request, logout, found)
        if found is None:
            # Nothing to end: go back at once (§3), nobody to ask.
            return self._after(request, logout)
        return await self._confirm_page(request, logout, encode_params(params), found)

    async def _check(self, params: dict[str, list[str]]) -> LogoutRequest:
        hint: IdTokenHint | None = None
        hints = params.get("id_token_hint", ())
        if len(hints) == 1 and hints[0]:
            ring = await self.signing.ready()
            hint = verify_id_token_hint(hints[0], ring, issuer=self.issuer, now=self.clock.now())
        client_id = requested_client_id(params, hint)
        client = await self.store.get_client(client_id) if client_id is not None else None
        return check_logout_request(params, hint=hint, client=client)

    async def _confirmed(self, request: Request, params: dict[str, list[str]]) -> Response:
        form = Form()
        form.update({k: v[0] for k, v in params.items() if v})
        found = await self._session(request)
        session_hash = found[0].session_hash if found is not None else b""
        await self._check_csrf(request, form, _PURPOSE, session_hash)
        try:
            logout = await self._check(parse_params(form.get("request", "")))
        except (AuthorizationPageError, LogoutRequestError) as exc:
            return self._refused_logout(request, exc.description)
        if form.get("decision") != "logout":
            return self._message(request, "Still signed in", "You are still signed in.")
        if found is None:
            return self._after(request, logout)
        return await self._end(request, logout, found)

    async def _end(
        self, request: Request, logout: LogoutRequest, found: tuple[Session, User]
    ) -> Response:
        session, user = found
        await self.store.delete_session(session.session_hash)
        revoked = 0
        client = logout.client
        if client is not None and client.logout_revokes_grants:
            revoked = await self.store.revoke_user_client_grants(
                user.user_id, client.client_id, self.clock.now(), RP_LOGOUT
            )
        log.info(
            "user signed out by the client",
            extra={
                "user_id": user.user_id,
                "client_id": client.client_id if client is not None else None,
                "tokens_revoked": revoked,
                "source": _source(request),
            },
        )
        response = self._after(request, logout)
        self._clear_cookie(response, request, SESSION_COOKIE)
        return response

    def _after(self, request: Request, logout: LogoutRequest) -> Response:
        location = logout.location()
        if location is not None:
            return self._redirect(location, 303 if request.method == "POST" else 302)
        return self._message(request, "Signed out", "You are signed out.")

    async def _confirm_page(
        self,
        request: Request,
        logout: LogoutRequest,
        carried: str,
        found: tuple[Session, User],
    ) -> Response:
        csrf_cookie, new = self._csrf_cookie_or_new(request)
        client = logout.client
        response = self._page(
            "end_session.html",
            csrf=await self._csrf_token(csrf_cookie, _PURPOSE, found[0].session_hash),
            carried=carried,
            client_name=(client.name or client.client_id) if client is not None else None,
            username=found[1].username,
            end_session_path=END_SESSION_PATH,
        )
        if new:
            self._set_cookie(response, request, CSRF_COOKIE, csrf_cookie)
        return response

    def _refused_logout(self, request: Request, description: str) -> Response:
        # §3: never redirect to a URI that is not registered for the named client.
        log.info(
            "logout request refused",
            extra={"description": description, "source": _source(request)},
        )
        return self._message(
            request,
            "Invalid request",
            f"This sign-out request cannot be completed: {description}.",
            status=400,
            link=("Sign out here instead", LOGOUT_PATH),
        )
