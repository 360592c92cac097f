"""Dynamic client registration (RFC 7591, RFC 7592): which client metadata is accepted.

Pure rules, no I/O: the endpoint (server/registration_endpoint.py) parses the JSON body,
calls :func:`check_metadata` and stores what comes back. Every refusal is an RFC 7591
§3.2.2 error: ``invalid_redirect_uri``, ``invalid_client_metadata``,
``invalid_software_statement`` or ``unapproved_software_statement``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from keystile.core.models import AUTH_METHODS, GRANT_TYPES, AuthMethod
from keystile.core.scope import is_scope_token
from keystile.core.signing_keys import SIGNING_ALGS
from keystile.errors import (
    InvalidClientMetadata,
    InvalidRedirectUri,
    InvalidSoftwareStatement,
    UnapprovedSoftwareStatement,
)

RegistrationPolicy = Literal["off", "initial-access-token", "open"]

# Hosts a native app's plain-http redirect may name (RFC 8252 §7.3, §8.3).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
MAX_REDIRECT_URI_LENGTH = 2000
MAX_REDIRECT_URIS = 20
MAX_TEXT = 200  # client_name, software_id, software_version, each contact
MAX_CONTACTS = 10
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# RFC 7591 §2: the human-readable and URL fields we keep and echo back.
_URL_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri")
_TEXT_FIELDS = ("client_name", "software_id", "software_version")
# RFC 7592 §2.2: set by the server; a client must not send them in an update.
SERVER_FIELDS = (
    "registration_access_token",
    "registration_client_uri",
    "client_secret_expires_at",
    "client_id_issued_at",
)


def redirect_uri_problem(value: str) -> str | None:
    """Why a redirect URI may not be registered, or None (RFC 6749 §3.1.2; RFC 9700 §2.1;
    RFC 8252 §7).

    Matched exactly at the authorization endpoint, so only what can be matched safely:
    absolute, no fragment, ASCII without whitespace; https anywhere, plain http only to a
    loopback host (a native app's local listener), or a private-use scheme in reverse
    domain form such as ``com.example.app:/cb``.
    """
    if not value.isascii() or any(ch.isspace() or not ch.isprintable() for ch in value):
        return "no whitespace, control or non-ASCII characters (percent-encode them)"
    if len(value) > MAX_REDIRECT_URI_LENGTH:
        return f"at most {MAX_REDIRECT_URI_LENGTH} characters"
    if "#" in value:
        return "must not have a fragment (RFC 6749 section 3.1.2)"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "not a valid URI"
    scheme = parts.scheme.lower()
    if not scheme or not _SCHEME.fullmatch(scheme):
        return "must be an absolute URI"
    if scheme in ("http", "https"):
        if not parts.hostname:
            return "must be an absolute URI with a host"
        if parts.username is not None or parts.password is not None:
            return "must not carry user information"
        if scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
            return (
                "plain http only to a loopback host (127.0.0.1, [::1] or localhost; "
                "RFC 8252 section 7.3); use https"
            )
        return None
    if "." not in scheme or not parts.path.startswith("/") or parts.netloc:
        return (
            "use https, http to a loopback host, or a private-use scheme in reverse domain "
            "form such as com.example.app:/callback (RFC 8252 section 7.1)"
        )
    return None


@dataclass(frozen=True, slots=True)
class ClientMetadata:
    """Registered client metadata (RFC 7591 §2), checked; ``extra`` holds the descriptive
    fields (client_name, URLs, contacts, software_id, software_version) as given."""

    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: AuthMethod
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    scope: frozenset[str]
    jwks: str | None
    extra: dict[str, Any]
    # OIDC Registration §2 and RP-Initiated Logout §3.1 (docs/oidc.md).
    id_token_signed_response_alg: str | None = None
    post_logout_redirect_uris: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The wire form, as echoed in RFC 7591 §3.2.1 and RFC 7592 §3 answers."""
        body: dict[str, Any] = {
            "redirect_uris": list(self.redirect_uris),
            "token_endpoint_auth_method": self.token_endpoint_auth_method,
            "grant_types": list(self.grant_types),
            "response_types": list(self.response_types),
            "scope": " ".join(sorted(self.scope)),
            **self.extra,
        }
        if self.jwks is not None:
            body["jwks"] = json.loads(self.jwks)
        if self.id_token_signed_response_alg is not None:
            body["id_token_signed_response_alg"] = self.id_token_signed_response_alg
        if self.post_logout_redirect_uris:
            body["post_logout_redirect_uris"] = list(self.post_logout_redirect_uris)
        return body

    def stored(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


def check_metadata(
    body: Any,
    *,
    policy: RegistrationPolicy,
    scope_ceiling: frozenset[str],
    software_statements: bool = False,
) -> ClientMetadata:
    """Check a registration (RFC 7591 §3.1) or update (RFC 7592 §2.2) request body.

    Unknown fields are ignored (RFC 7591 §2: "MUST ignore any client metadata ... that it
    does not understand"). Under the ``open`` policy only public clients (``none``) with
    https or loopback-http redirect URIs are accepted.
    """
    if not isinstance(body, dict):
        raise InvalidClientMetadata("the request body must be a JSON object")
    _software_statement(body.get("software_statement"), allowed=software_statements)
    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHODS:
        raise InvalidClientMetadata(
            "token_endpoint_auth_method must be one of " + ", ".join(AUTH_METHODS)
        )
    if policy == "open" and method != "none":
        raise InvalidClientMetadata(
            "open registration is for public clients only: token_endpoint_auth_method "
            "must be none (ask the operator for an initial access token)"
        )
    redirect_uris = _redirect_uris(body.get("redirect_uris", []), open_policy=policy == "open")
    grant_types = _string_list(body, "grant_types", default=["authorization_code"])
    for grant in grant_types:
        if grant not in GRANT_TYPES:
            raise InvalidClientMetadata(
                f"grant type {grant!r} is not supported (supported: {', '.join(GRANT_TYPES)})"
            )
    code_flow = "authorization_code" in grant_types
    response_types = _string_list(body, "response_types", default=["code"] if code_flow else [])
    for response_type in response_types:
        if response_type != "code":
            raise InvalidClientMetadata(f"response type {response_type!r} is not supported")
    # RFC 7591 §2.1: grant_types and response_types must agree.
    if code_flow != ("code" in response_types):
        raise InvalidClientMetadata(
            "grant_types and response_types disagree: authorization_code goes with the "
            "code response type and the other way round (RFC 7591 section 2.1)"
        )
    if code_flow and not redirect_uris:
        raise InvalidRedirectUri("the authorization_code grant needs at least one redirect URI")
    if "refresh_token" in grant_types and not code_flow:
        raise InvalidClientMetadata(
            "the refresh_token grant needs the authorization_code grant "
            "(refresh tokens come only from it)"
        )
    if method == "none" and "client_credentials" in grant_types:
        raise InvalidClientMetadata(
            "a public client (token_endpoint_auth_method none) cannot use client_credentials"
        )
    if not grant_types:
        raise InvalidClientMetadata("grant_types must name at least one grant type")
    scope = _scope(body.get("scope"), scope_ceiling)
    jwks = _jwks(body, method)
    extra = _descriptive(body)
    return ClientMetadata(
        redirect_uris=redirect_uris,
        token_endpoint_auth_method=method,
        grant_types=tuple(sorted(set(grant_types))),
        response_types=tuple(sorted(set(response_types))),
        scope=scope,
        jwks=jwks,
        extra=extra,
        id_token_signed_response_alg=_id_token_alg(body.get("id_token_signed_response_alg")),
        post_logout_redirect_uris=_post_logout_uris(
            body.get("post_logout_redirect_uris", []), open_policy=policy == "open"
        ),
    )


def _id_token_alg(value: Any) -> str | None:
    """OIDC Registration §2 ``id_token_signed_response_alg``: one of the algorithms our keys
    sign with (never ``none``: ID tokens are always signed here). Omitted: the active key's
    (ES256 unless the operator chose otherwise), where the spec says RS256; docs/oidc.md
    says why."""
    if value is None:
        return None
    if value not in SIGNING_ALGS:
        raise InvalidClientMetadata(
            "id_token_signed_response_alg must be one of " + ", ".join(SIGNING_ALGS)
        )
    return str(value)


def _post_logout_uris(value: Any, *, open_policy: bool) -> tuple[str, ...]:
    """RP-Initiated Logout §3.1 ``post_logout_redirect_uris``: held to the redirect URI
    rules, since they are followed the same way (exact match, then a redirect)."""
    try:
        return _redirect_uris(value, open_policy=open_policy)
    except InvalidRedirectUri as exc:
        raise InvalidClientMetadata(f"post_logout_redirect_uris: {exc.description}") from None


def _software_statement(value: Any, *, allowed: bool) -> None:
    """RFC 7591 §2.3, §3.1.1: a signed JWT vouching for the software. None is approved
    here (no statement issuer is configured), so a well-formed one is unapproved."""
    if value is None:
        return
    if not isinstance(value, str) or not _JWS.fullmatch(value):
        raise InvalidSoftwareStatement("software_statement must be a signed JWT")
    if not allowed:
        raise UnapprovedSoftwareStatement("software statements are not accepted here")


def _string_list(body: dict[str, Any], name: str, *, default: list[str]) -> list[str]:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidClientMetadata(f"{name} must be an array of strings")
    return value


def _redirect_uris(value: Any, *, open_policy: bool) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRedirectUri("redirect_uris must be an array of strings")
    if len(value) > MAX_REDIRECT_URIS:
        raise InvalidRedirectUri(f"at most {MAX_REDIRECT_URIS} redirect URIs")
    out: list[str] = []
    for uri in value:
        problem = redirect_uri_problem(uri)
        if problem is None and open_policy:
            # Open registration: nobody vouches for a private-use scheme, so only URIs
            # whose owner the network can tell (https) or this device (RFC 8252 §7.3).
            scheme = urlsplit(uri).scheme.lower()
            if scheme not in ("https", "http"):
                problem = "open registration accepts only https or loopback http redirect URIs"
        if problem is not None:
            raise InvalidRedirectUri(f"redirect URI {uri!r}: {problem}")
        if uri not in out:
            out.append(uri)
    return tuple(out)


def _scope(value: Any, ceiling: frozenset[str]) -> frozenset[str]:
    """RFC 7591 §2 ``scope``: within the configured ceiling; omitted, the whole ceiling."""
    if value is None:
        return ceiling
    if not isinstance(value, str):
        raise InvalidClientMetadata("scope must be a space-separated string")
    scopes = frozenset(s for s in value.split(" ") if s)
    bad = sorted(s for s in scopes if not is_scope_token(s))
    if bad:
        raise InvalidClientMetadata("scope contains characters RFC 6749 section 3.3 forbids")
    beyond = sorted(scopes - ceiling)
    if beyond:
        raise InvalidClientMetadata(
            "scope beyond what registered clients may have: " + " ".join(beyond)
        )
    return scopes


def _jwks(body: dict[str, Any], method: str) -> str | None:
    """RFC 7591 §2: ``jwks`` and ``jwks_uri`` are exclusive; private_key_jwt needs keys.
    Keys by value only: fetching a ``jwks_uri`` would make the AS fetch URLs a stranger
    names, so it is refused."""
    if "jwks" in body and "jwks_uri" in body:
        raise InvalidClientMetadata("jwks and jwks_uri must not both be present")
    if "jwks_uri" in body:
        raise InvalidClientMetadata("jwks_uri is not supported: give the keys as jwks")
    value = body.get("jwks")
    if value is None:
        if method == "private_key_jwt":
            raise InvalidClientMetadata("private_key_jwt needs the client's public keys (jwks)")
        return None
    from keystile.core.client_assertion import parse_client_jwks

    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    try:
        parse_client_jwks(text)
    except ValueError as exc:
        raise InvalidClientMetadata(f"jwks: {exc}") from None
    return text


def _descriptive(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
            raise InvalidClientMetadata(f"{name} must be a string of 1..{MAX_TEXT} characters")
        if not value.isprintable():
            raise InvalidClientMetadata(f"{name} must not hold control characters")
        out[name] = value
    for name in _URL_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str) or not _web_url(value):
            raise InvalidClientMetadata(f"{name} must be an https URL")
        out[name] = value
    contacts = body.get("contacts")
    if contacts is not None:
        if (
            not isinstance(contacts, list)
            or len(contacts) > MAX_CONTACTS
            or not all(isinstance(c, str) and 0 < len(c) <= MAX_TEXT for c in contacts)
        ):
            raise InvalidClientMetadata(
                f"contacts must be an array of at most {MAX_CONTACTS} strings"
            )
        out["contacts"] = contacts
    return out


def _web_url(value: str) -> bool:
    """An https URL (http to loopback for development): a page shown to people, so never
    ``javascript:`` or ``data:``."""
    if len(value) > MAX_REDIRECT_URI_LENGTH or not value.isascii():
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
