"""RP-Initiated Logout 1.0: which logout requests are trusted, and where the browser goes after.

Pure rules, no I/O (the page is server/ui_end_session.py). A request names its client by the
``aud`` of its ``id_token_hint`` (§2), by ``client_id``, or both (then they must agree). A
``post_logout_redirect_uri`` is followed only if it is registered for that client, compared
as an exact string (§3.1); anything else gets an error page, never a redirect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import GuestProtocol, Key

from keystile.core.authorization import Params, redirect_location
from keystile.core.jwt_profile import looks_like_jwt
from keystile.core.models import Client
from keystile.core.signing_keys import SIGNING_ALGS, KeyRing, jws_registry

_REGISTRY = jws_registry(SIGNING_ALGS)
# Names a logout request may carry once each (§2); others are ignored.
_SINGLE = ("id_token_hint", "client_id", "post_logout_redirect_uri", "state", "logout_hint")


class LogoutRequestError(Exception):
    """A logout request that cannot be trusted to redirect: shown as an error page."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True, slots=True)
class IdTokenHint:
    """The claims that matter of a verified ``id_token_hint``."""

    sub: str
    client_id: str


@dataclass(frozen=True, slots=True)
class LogoutRequest:
    """A checked logout request: who asks (``client``, None if unnamed), the user the RP
    signed in (``hint``), and where to send the browser afterwards."""

    client: Client | None
    hint: IdTokenHint | None
    post_logout_redirect_uri: str | None
    state: str | None

    def location(self) -> str | None:
        """§3: the registered URI, with ``state`` when the RP sent one."""
        if self.post_logout_redirect_uri is None:
            return None
        if self.state is None:
            return self.post_logout_redirect_uri
        return redirect_location(self.post_logout_redirect_uri, [("state", self.state)])


def verify_id_token_hint(token: str, ring: KeyRing, *, issuer: str, now: int) -> IdTokenHint:
    """An ID token we issued: signed by a key we publish, with our ``iss``, a ``sub`` and a
    single audience. Its ``exp`` may have passed: §2 asks the OP to accept it anyway (an RP
    logs out long after sign-in). LogoutRequestError otherwise."""
    if not looks_like_jwt(token):
        raise LogoutRequestError("id_token_hint is not an ID token")

    def key_for(guest: GuestProtocol) -> Key:
        header = guest.headers()
        key, _ = ring.verification_key(header.get("kid"), header.get("alg"), now)
        return key

    try:
        verified = jws.deserialize_compact(token, key_for, registry=_REGISTRY)
        claims: Any = orjson.loads(verified.payload)
    except (JoseError, ValueError, LookupError, TypeError):
        raise LogoutRequestError("id_token_hint is not an ID token issued here") from None
    if not isinstance(claims, dict) or claims.get("iss") != issuer:
        raise LogoutRequestError("id_token_hint is not an ID token issued here")
    sub, aud = claims.get("sub"), claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if not isinstance(sub, str) or not isinstance(aud, str) or "at_hash" not in claims:
        # at_hash: every ID token we issue has one; an access token JWT does not.
        raise LogoutRequestError("id_token_hint is not an ID token issued here")
    return IdTokenHint(sub=sub, client_id=aud)


def requested_client_id(params: Params, hint: IdTokenHint | None) -> str | None:
    """The client a logout request names (§2): by its hint's ``aud`` and/or ``client_id``."""
    given = _one(params, "client_id")
    if hint is not None and given is not None and given != hint.client_id:
        raise LogoutRequestError("client_id is not the audience of id_token_hint")
    return hint.client_id if hint is not None else given


def check_logout_request(
    params: Params,
    *,
    hint: IdTokenHint | None,
    client: Client | None,
) -> LogoutRequest:
    """§2, §3: ``client`` is the one ``requested_client_id`` names, as found (None if none
    was named or it is unknown)."""
    for name in _SINGLE:
        if len(params.get(name, ())) > 1:
            raise LogoutRequestError(f"{name} is repeated")
    named = requested_client_id(params, hint)
    if named is not None and (client is None or not client.enabled):
        raise LogoutRequestError("unknown or disabled client")
    uri = _one(params, "post_logout_redirect_uri")
    if uri is not None:
        if client is None:
            # §3: a URI can only be checked against the registration of a named client.
            raise LogoutRequestError(
                "post_logout_redirect_uri needs id_token_hint or client_id to name the client"
            )
        if uri not in client.post_logout_redirect_uris:
            raise LogoutRequestError("post_logout_redirect_uri is not registered for this client")
    return LogoutRequest(
        client=client, hint=hint, post_logout_redirect_uri=uri, state=_one(params, "state")
    )


def _one(params: Params, name: str) -> str | None:
    values = params.get(name, ())
    return values[0] if values and values[0] else None
