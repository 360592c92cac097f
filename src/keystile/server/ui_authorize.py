"""The authorization endpoint (RFC 6749 §3.1, §4.1.1) and the consent decision."""

from __future__ import annotations

import logging
import secrets

from starlette.requests import Request
from starlette.responses import Response

from keystile.core.authorization import (
    ACCESS_DENIED,
    INVALID_REQUEST,
    AuthorizationPageError,
    AuthorizationRedirectError,
    AuthorizationRequest,
    code_location,
    encode_params,
    error_location,
    parse_params,
)
from keystile.core.models import AuthorizationCode, Grant, Session, User
from keystile.core.oidc import (
    CONSENT_REQUIRED,
    INTERACTION_REQUIRED,
    LOGIN_REQUIRED,
    identity_claims,
    requested_subject,
    scope_claims,
)
from keystile.core.scope import format_scope
from keystile.core.tokens import new_authorization_code, token_hash
from keystile.server.ui_pages import OTHER_USER_REQUESTED, LoginPages
from keystile.store.base import Conflict

log = logging.getLogger("keystile.server")


class AuthorizationPages(LoginPages):
    """GET|POST /oauth2/authorize and POST /oauth2/consent."""

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
        silent = "none" in areq.prompt

        def interaction(error: str, description: str) -> Response:
            # OIDC Core §3.1.2.6: prompt=none and the person would have to be asked.
            exc = AuthorizationRedirectError(
                error, description, redirect_uri=areq.redirect_uri, state=areq.state
            )
            return self._redirect_error(request, exc, redirect_status)

        # OIDC Core §3.1.2.3: sign in again for prompt=login, or when the sign-in is older
        # than max_age (the login handler drops "login" from the prompt it resumes with).
        if found is None or "login" in areq.prompt or self._too_old(found[0], areq.max_age):
            if silent:
                return interaction(LOGIN_REQUIRED, "the user must sign in")
            return await self._login_page(
                request, carried=carried, areq=areq, username=areq.login_hint or ""
            )
        session, user = found
        wanted = requested_subject(areq.claims)
        if wanted is not None and wanted != user.user_id:
            # OIDC Core §5.5.1: the RP asked for this user only; never answer for another.
            if silent:
                return interaction(LOGIN_REQUIRED, "the requested user is not signed in")
            return await self._login_page(
                request, carried=carried, areq=areq, message=OTHER_USER_REQUESTED
            )
        if silent and areq.login_hint and not _is_hinted(user, areq.login_hint):
            # Signed in as someone else than the RP expects: only the person can sort it out.
            return interaction(INTERACTION_REQUIRED, "another user is signed in")
        remembered = await self.store.get_consent(user.user_id, areq.client.client_id)
        # Remembered consent covers the scopes it named, for the client's own audience: a
        # request naming another resource server (RFC 8707) asks again, since the consent
        # page showed where the access would be used. So does prompt=consent (OIDC Core
        # §3.1.2.1), and a claims request asking for more than the scopes name (§5.5).
        if (
            remembered is not None
            and "consent" not in areq.prompt
            and areq.scope <= remembered
            and set(areq.aud) <= set(areq.client.default_audience)
            and set(identity_claims(areq.scope, areq.claims)) <= set(scope_claims(areq.scope))
        ):
            return await self._issue_or_sign_in(
                request, areq, carried, session, user, redirect_status
            )
        if silent:
            return interaction(CONSENT_REQUIRED, "the user must consent")
        return await self._consent_page(request, areq, carried, session, user)

    def _too_old(self, session: Session, max_age: int | None) -> bool:
        return max_age is not None and self.clock.now() - session.created_at > max_age

    async def _issue_or_sign_in(
        self,
        request: Request,
        areq: AuthorizationRequest,
        carried: str,
        session: Session,
        user: User,
        status: int,
    ) -> Response:
        """Issue a code, or sign in again if the session ended meanwhile. A nonce replayed
        while a code carrying it lives is refused (OIDC Core §15.5.2)."""
        try:
            issued = await self._issue_code(areq, session, user, status)
        except Conflict:
            exc = AuthorizationRedirectError(
                INVALID_REQUEST,
                "this nonce was used already",
                redirect_uri=areq.redirect_uri,
                state=areq.state,
            )
            return self._redirect_error(request, exc, status)
        return issued or await self._login_page(request, carried=carried, areq=areq)

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
        return await self._issue_or_sign_in(
            request, areq, encode_params(params), session, user, 303
        )

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
            claims=areq.claims,
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
                dpop_jkt=areq.dpop_jkt,
                created_at=now,
                expires_at=now + self.settings.authorization_code_ttl,
                nonce=areq.nonce,
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


def _is_hinted(user: User, hint: str) -> bool:
    """OIDC Core §3.1.2.1 login_hint: the user's id, username or email address."""
    hint = hint.strip()
    return hint in (user.user_id, user.email) or hint.lower() == user.username
