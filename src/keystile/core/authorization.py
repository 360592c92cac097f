"""Authorization requests (RFC 6749 §4.1.1): validated before anyone is asked to sign in.

Two kinds of failure, as RFC 6749 §4.1.2.1 demands:

- ``AuthorizationPageError``: the client or the redirect URI cannot be trusted (unknown or
  disabled client, no authorization_code grant, missing or unregistered redirect_uri).
  The server MUST NOT redirect: it shows the person an error page.
- ``AuthorizationRedirectError``: everything after that goes back to the client's
  redirect URI as ``error``, ``error_description``, ``state`` and ``iss`` (RFC 9207).

PKCE with S256 is required of every client (RFC 7636; RFC 9700 §2.1.1), and resource
indicators (RFC 8707) name registered resource servers only, as at the token endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote_plus, urlencode

from keystile.core.issuance import requested_audience
from keystile.core.models import Client
from keystile.core.oidc import (
    OidcRequestError,
    parse_claims_request,
    parse_max_age,
    parse_nonce,
    parse_prompt,
)
from keystile.core.pkce import S256, valid_challenge
from keystile.core.scope import parse_scope
from keystile.errors import InvalidScope, InvalidTarget

# A parsed query or form: every value of every name, in order (empty values included, so
# that "a=&a=x" is still seen as a repetition).
Params = Mapping[str, Sequence[str]]

MAX_PARAMS = 64
# RFC 8707 §2: resource may be given several times; RFC 6749 §3.1: nothing else may.
REPEATABLE = frozenset({"resource"})
# Names that may be echoed in an error description; anything else a caller sent may hold
# anything (even a secret pasted into the wrong place), and descriptions are logged.
_KNOWN = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "code_challenge",
        "code_challenge_method",
        "nonce",
        "prompt",
        "max_age",
        "login_hint",
        "claims",
        "dpop_jkt",
    }
)

_JKT = re.compile(r"[A-Za-z0-9_-]{43}")

# RFC 6749 §4.1.2.1 and RFC 7636 §4.4.1 error codes.
INVALID_REQUEST = "invalid_request"
UNSUPPORTED_RESPONSE_TYPE = "unsupported_response_type"
ACCESS_DENIED = "access_denied"


class AuthorizationPageError(Exception):
    """The request names no trustworthy client and redirect URI (RFC 6749 §4.1.2.1): show
    the person an error page, never redirect."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class AuthorizationRedirectError(Exception):
    """An error to send back to the client at its (verified) redirect URI (§4.1.2.1)."""

    def __init__(
        self, error: str, description: str, *, redirect_uri: str, state: str | None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state

    def location(self, issuer: str) -> str:
        return error_location(
            self.redirect_uri, self.error, self.description, state=self.state, issuer=issuer
        )


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    """A valid authorization request: what the person is asked to allow."""

    client: Client
    redirect_uri: str
    scope: frozenset[str]
    aud: tuple[str, ...]
    state: str | None
    code_challenge: str  # S256
    # OpenID Connect (OIDC Core §3.1.2.1, §5.5); prompt, max_age and login_hint apply to
    # plain OAuth requests too.
    nonce: str | None = None
    prompt: frozenset[str] = frozenset()
    max_age: int | None = None
    login_hint: str | None = None
    claims: str = ""  # normalised (core/oidc.py); "" for none

    @property
    def openid(self) -> bool:
        """An OpenID Connect authentication request (OIDC Core §3.1.2.1: scope openid)."""
        return "openid" in self.scope

    dpop_jkt: str | None = None  # RFC 9449 §10: the code is bound to this DPoP key


def parse_params(text: str) -> dict[str, list[str]]:
    """Parse a query string or form body (``application/x-www-form-urlencoded``).

    Percent-escapes must be UTF-8; a field without ``=`` counts as sent without a value.
    """
    out: dict[str, list[str]] = {}
    if not text:
        return out
    if not text.isascii():
        raise AuthorizationPageError("the request is not properly URL-encoded")
    fields = text.split("&")
    if len(fields) > MAX_PARAMS:
        raise AuthorizationPageError(f"too many request parameters (at most {MAX_PARAMS})")
    for field in fields:
        if not field:
            continue
        name, _, value = field.partition("=")
        try:
            name = unquote_plus(name, encoding="utf-8", errors="strict")
            value = unquote_plus(value, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise AuthorizationPageError("request parameters must be UTF-8") from None
        if name:
            out.setdefault(name, []).append(value)
    return out


def encode_params(params: Params) -> str:
    """The request as a query string again, to carry it through sign-in and consent."""
    return urlencode([(k, v) for k, vs in params.items() for v in vs if v], quote_via=quote)


def signed_in(params: Params) -> dict[str, list[str]]:
    """The request to resume once the person has signed in: without ``login`` in its
    ``prompt`` and without ``max_age`` (OIDC Core §3.1.2.1), which that sign-in satisfied.
    (Kept, max_age=0 would ask again whenever the clock ticked between sign-in and resume;
    the ID token carries auth_time either way.)"""
    out = {k: list(v) for k, v in params.items() if k != "max_age"}
    if "prompt" in out:
        rest = [" ".join(p for p in v.split() if p != "login") for v in out["prompt"]]
        out["prompt"] = [v for v in rest if v]
        if not out["prompt"]:
            del out["prompt"]
    return out


def requested_client_id(params: Params) -> str:
    """The client_id of the request, which the caller then looks up (RFC 6749 §4.1.1)."""
    values = params.get("client_id", ())
    if len(values) > 1:
        raise AuthorizationPageError("client_id is repeated")
    if not values or not values[0]:
        raise AuthorizationPageError("the request has no client_id")
    return values[0]


def validate_authorization_request(
    params: Params, client: Client | None, *, known_resources: frozenset[str]
) -> AuthorizationRequest:
    """Check an authorization request (RFC 6749 §4.1.1, §3.1.2; RFC 7636 §4.3; RFC 8707 §2).

    ``client`` is the client ``requested_client_id(params)`` names, as found in the store.
    Raises AuthorizationPageError or AuthorizationRedirectError.
    """
    if client is None or not client.enabled:
        raise AuthorizationPageError("unknown or disabled client")
    if "authorization_code" not in client.grant_types:
        raise AuthorizationPageError("this client may not use the authorization code flow")
    uris = params.get("redirect_uri", ())
    if len(uris) > 1:
        raise AuthorizationPageError("redirect_uri is repeated")
    # Always required, even with one registered URI (RFC 9700 §2.1: exact matching), and
    # compared as exact strings: no normalisation, no prefix or pattern matching.
    if not uris or not uris[0]:
        raise AuthorizationPageError("the request has no redirect_uri")
    redirect_uri = uris[0]
    if "#" in redirect_uri or redirect_uri not in client.redirect_uris:
        raise AuthorizationPageError("redirect_uri is not registered for this client")

    # From here on the redirect URI is trusted: errors go back to the client.
    states = params.get("state", ())
    state = states[0] if len(states) == 1 and states[0] else None

    def fail(error: str, description: str) -> AuthorizationRedirectError:
        return AuthorizationRedirectError(
            error, description, redirect_uri=redirect_uri, state=state
        )

    for name, values in params.items():
        if len(values) > 1 and name not in REPEATABLE:
            shown = f"'{name}'" if name in _KNOWN else "a parameter"
            raise fail(INVALID_REQUEST, f"{shown} is repeated (RFC 6749 section 3.1)")

    response_type = _one(params, "response_type")
    if response_type is None:
        raise fail(INVALID_REQUEST, "missing parameter: response_type")
    if response_type != "code":
        raise fail(UNSUPPORTED_RESPONSE_TYPE, "only response_type=code is supported")

    challenge = _one(params, "code_challenge")
    if challenge is None:
        raise fail(INVALID_REQUEST, "code_challenge is required (PKCE, RFC 7636)")
    # A missing method means "plain" (RFC 7636 §4.3), which protects nothing if the
    # request leaks: refused like any method but S256.
    if _one(params, "code_challenge_method") != S256:
        raise fail(INVALID_REQUEST, "PKCE with S256 is required")
    if not valid_challenge(challenge):
        raise fail(INVALID_REQUEST, "malformed code_challenge (RFC 7636 section 4.2)")

    # RFC 9449 §10: a SHA-256 JWK thumbprint, base64url (43 characters).
    dpop_jkt = _one(params, "dpop_jkt")
    if dpop_jkt is not None and not _JKT.fullmatch(dpop_jkt):
        raise fail(INVALID_REQUEST, "malformed dpop_jkt (RFC 9449 section 10)")

    try:
        requested = parse_scope(_one(params, "scope"))
    except InvalidScope as exc:
        raise fail(exc.error, exc.description or exc.error) from None
    if not requested:
        scope = client.scopes  # §3.3: the server may apply a pre-defined default
    elif requested - client.scopes:
        # Not echoing the extra values: request input may hold anything.
        raise fail(InvalidScope.error, "requested scope exceeds what this client may have")
    else:
        scope = requested

    try:
        aud = requested_audience(
            client, [r for r in params.get("resource", ()) if r], known_resources
        )
    except InvalidTarget as exc:
        raise fail(exc.error, exc.description or exc.error) from None

    try:
        prompt = parse_prompt(_one(params, "prompt"))
        max_age = parse_max_age(_one(params, "max_age"))
        nonce = parse_nonce(_one(params, "nonce"))
        claims = parse_claims_request(_one(params, "claims")) if "openid" in scope else ""
    except OidcRequestError as exc:
        raise fail(INVALID_REQUEST, str(exc)) from None

    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        scope=scope,
        aud=aud,
        state=state,
        code_challenge=challenge,
        nonce=nonce if "openid" in scope else None,
        prompt=prompt,
        max_age=max_age,
        login_hint=_one(params, "login_hint"),
        claims=claims,
        dpop_jkt=dpop_jkt,
    )


def _one(params: Params, name: str) -> str | None:
    values = params.get(name, ())
    # RFC 6749 §3.1: a parameter sent without a value is treated as omitted.
    return values[0] if values and values[0] else None


def redirect_location(redirect_uri: str, params: Iterable[tuple[str, str]]) -> str:
    """The redirect URI with ``params`` added to its query (RFC 6749 §3.1.2: keep the
    registered query; §4.1.2: response parameters in the query, never in a fragment)."""
    base = redirect_uri.split("#", 1)[0]  # registered URIs have none; never send one
    query = urlencode(list(params), quote_via=quote)
    if "?" not in base:
        return f"{base}?{query}"
    if base.endswith(("?", "&")):
        return base + query
    return f"{base}&{query}"


def code_location(request: AuthorizationRequest, code: str, *, issuer: str) -> str:
    """The authorization response (RFC 6749 §4.1.2) with ``iss`` (RFC 9207 §2)."""
    params = [("code", code)]
    if request.state is not None:
        params.append(("state", request.state))
    params.append(("iss", issuer))
    return redirect_location(request.redirect_uri, params)


def error_location(
    redirect_uri: str, error: str, description: str, *, state: str | None, issuer: str
) -> str:
    """An error response (RFC 6749 §4.1.2.1) with ``iss`` (RFC 9207 §2)."""
    params = [("error", error), ("error_description", description)]
    if state is not None:
        params.append(("state", state))
    params.append(("iss", issuer))
    return redirect_location(redirect_uri, params)
