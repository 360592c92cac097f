"""Client authentication at the OAuth endpoints (RFC 6749 §2.3, RFC 7523 §2.2), with
throttling of repeated failures.

The rules (THREAT_MODEL.md, "Lockout and denial of service"):

- The credentials are checked first, and a request whose credentials verify is never
  refused by the throttle, whoever failed before it and from wherever. Client secrets are
  256-bit random values and assertions are signed: there is nothing to guess, so refusing
  the right credential would only hand anyone who knows a client id (it is no secret: it is
  in every introspection answer and JWT) a way to cut that client off.
- Only failures consult and feed the throttle, under two keys: the (client id, address)
  pair and the address alone. An unknown client id counts against the address only, so
  made-up ids never touch a registered client's count (nor fill the table with keys).
- Over the limit, a failing attempt gets 429 with Retry-After instead of 401, for the
  price of the check itself: one indexed read and a SHA-256 compare for a secret; for an
  assertion, cheap claim checks and then at most one signature verification.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

from keystile.core.client_assertion import (
    LEEWAY,
    extract_assertion,
    has_assertion,
    parse_client_jwks,
    verify_assertion,
)
from keystile.core.client_auth import check_client, extract_credentials, invalid_client
from keystile.core.metadata import TOKEN_PATH
from keystile.core.models import Client
from keystile.core.tokens import token_hash
from keystile.errors import InvalidClient, OAuthError, TooManyRequests
from keystile.server.client_metadata import DocumentUnavailable
from keystile.server.endpoint_base import Call, EndpointBase

log = logging.getLogger("keystile.server")


def failure_keys(client: Client | None, source: str) -> tuple[str, ...]:
    """The throttle keys a failed authentication counts under: (client id, address) for a
    registered client, and the address alone."""
    address = "a:" + source
    if client is None:
        return (address,)
    return ("ca:" + client.client_id + "\0" + source, address)


class ClientAuthentication(EndpointBase):
    """Who is calling: client secrets (Basic or form) and private_key_jwt assertions."""

    async def authenticate(self, call: Call, *, allow_public: bool = False) -> Client:
        """RFC 6749 §2.3: authenticate the calling client; repeated failures are throttled,
        a verifying credential never is.

        With ``allow_public``, a request without credentials may name a public client by
        ``client_id`` (RFC 6749 §3.2.1, RFC 7009 §2.1); a confidential client must always
        authenticate.
        """
        if has_assertion(call.form):
            return await self._authenticate_assertion(call)  # RFC 7523 §2.2
        creds = extract_credentials(call.authorization, call.form)
        if creds is None:
            client_id = call.form.get("client_id")
            if allow_public and client_id:
                public = await self._named_client(client_id)
                if public is not None and public.is_public and public.enabled:
                    return public
            raise invalid_client("client authentication required")
        # Verify first: one indexed read and a digest compare (256-bit secrets need no slow
        # hash, ARCHITECTURE.md §2), cheaper than anything the throttle could spare us.
        client = await self.store.get_client(creds.client_id)
        try:
            return check_client(client, creds)
        except InvalidClient as exc:
            self._failed(call, client, creds.client_id, exc)

    async def _named_client(self, client_id: str) -> Client | None:
        """The client a public request or an assertion names: registered, or known by its
        client ID metadata document (draft-ietf-oauth-client-id-metadata-document §5.1: a
        document that cannot be fetched or used fails the request)."""
        try:
            return await self.clients.get_client(client_id)
        except DocumentUnavailable as exc:
            raise invalid_client(f"client metadata document: {exc.reason}") from None

    def _failed(
        self, call: Call, client: Client | None, client_id: str, exc: OAuthError, **extra: str
    ) -> NoReturn:
        """A failed authentication: 429 if one of its keys is over the limit already, else
        counted and answered with ``exc`` (401)."""
        keys = failure_keys(client, call.source)
        # Log a client id only if it is registered: an unknown "id" may be a secret sent in
        # the wrong field, so it is logged as a short digest instead.
        who = (
            {"client_id": client.client_id}
            if client is not None
            else {"unknown_client_sha256": token_hash(client_id).hex()[:16]}
        )
        wait = self.throttle.retry_after(*keys)
        if wait:
            # Not counted again: the window is fixed, and the request log has the 429.
            raise TooManyRequests(wait) from None
        self.throttle.failed(*keys)
        # The reason, also when the answer hides it (an unverified assertion's claims).
        cause = exc.__cause__
        reason = cause.description if isinstance(cause, OAuthError) else exc.description
        log.warning(
            "client authentication failed",
            extra={**who, "source": call.source, "reason": reason, **extra},
        )
        raise exc

    async def _authenticate_assertion(self, call: Call) -> Client:
        """private_key_jwt (RFC 7523 §2.2): never cached, since each assertion is single-use.

        A flood of bad assertions costs a bounded amount each: the size, shape, ``iss``,
        ``sub``, ``aud``, ``exp``, ``nbf``, ``iat`` and ``jti`` are checked before any
        cryptography (core/client_assertion.py), then at most one signature verification
        (the key named by ``kid``, or the only one), and only a verified assertion reaches
        the store's single-use ``jti`` record. Each failure counts like a wrong secret.
        """
        try:
            assertion = extract_assertion(call.authorization, call.form)
        except InvalidClient as exc:
            # Not even a JWT naming a client: counted against the address only.
            self._failed(call, None, "", exc, method="private_key_jwt")
        try:
            client = await self._named_client(assertion.client_id)
        except InvalidClient as exc:
            self._failed(call, None, assertion.client_id, exc, method="private_key_jwt")
        try:
            if (
                client is None
                or not client.enabled
                or client.auth_method != "private_key_jwt"
                or client.jwks is None
            ):
                raise invalid_client()
            verified = verify_assertion(
                assertion,
                client,
                self._client_keys(client),
                audiences=self._assertion_audiences(call),
                now=self.clock.now(),
            )
            # RFC 7523 §3 item 7: one use per jti; kept until the assertion could not pass
            # the exp check anyway. The store's unique key settles concurrent replays.
            if not await self.store.record_assertion_jti(
                client.client_id, verified.jti, verified.exp + LEEWAY
            ):
                raise invalid_client("client assertion was used before (RFC 7523 section 3)")
        except InvalidClient as exc:
            self._failed(call, client, assertion.client_id, exc, method="private_key_jwt")
        return client

    def _client_keys(self, client: Client) -> Any:
        """The client's registered JWK Set, parsed once per distinct document."""
        text = client.jwks or ""
        keys = self._client_jwks.get(text)
        if keys is None:
            try:
                keys = parse_client_jwks(text)
            except ValueError as exc:
                log.error(
                    "registered JWKS unusable",
                    extra={"client_id": client.client_id, "error": str(exc)},
                )
                raise invalid_client() from None
            if len(self._client_jwks) >= 1024:
                self._client_jwks.clear()
            self._client_jwks[text] = keys
        return keys

    def _assertion_audiences(self, call: Call) -> frozenset[str]:
        # RFC 7523 §3 item 3: the issuer identifies us; the token endpoint URL may; and so
        # does the URL of the endpoint being called (common for introspection, revocation).
        base = self.issuer.rstrip("/")
        return frozenset({self.issuer, base + TOKEN_PATH, base + str(call.scope["path"])})
