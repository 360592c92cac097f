"""Introspection from the resource side (RFC 7662 §2, RFC 8414 §3): requests and answers.

Pure helpers, no I/O, shared by the async ``TokenValidator`` and the thread-based
``SyncTokenValidator``: what to send, and what an answer means. Each validator does its own
HTTP with its own client and calls these on either side of it.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import quote_plus

import httpx

from keystile.errors import InsufficientScope, IntrospectionUnavailable
from keystile.resource.principal import Principal

log = logging.getLogger("keystile.resource")

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
METADATA_PATH = "/.well-known/oauth-authorization-server"


def basic_authorization(client_id: str, client_secret: str) -> str:
    """client_secret_basic, with the RFC 6749 §2.3.1 form-encoding before base64."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode("ascii")


def tls_verify(ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for calls to the AS: the default trust store (certifi), or only the
    PEM CA certificates in ``ca_file`` (an AS behind a private CA). Raises ValueError, naming
    the file, when they cannot be loaded."""
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ValueError(f"cannot load CA certificates from {ca_file}: {reason}") from exc


def metadata_url(issuer: str) -> str:
    """Where an issuer publishes its RFC 8414 metadata (issuer without a trailing slash)."""
    return issuer + METADATA_PATH


def discovered_endpoints(
    meta: Any,
    *,
    issuer: str,
    url: str,
    introspection_endpoint: str | None,
    events_endpoint: str | None,
) -> tuple[str, str | None]:
    """The introspection and events endpoints after reading a metadata document.

    Endpoints given explicitly win; the document fills in the rest. Raises
    IntrospectionUnavailable when the document cannot be trusted or names no
    introspection endpoint.
    """
    # RFC 8414 §3.3: the metadata must name the issuer it was fetched for.
    if not isinstance(meta, dict) or str(meta.get("issuer", "")).rstrip("/") != issuer:
        raise IntrospectionUnavailable(f"AS metadata at {url} names another issuer")
    if introspection_endpoint is None:
        endpoint = meta.get("introspection_endpoint")
        if not isinstance(endpoint, str):
            raise IntrospectionUnavailable("the AS metadata has no introspection_endpoint")
        introspection_endpoint = endpoint
    events = meta.get("keystile_events_endpoint")
    if events_endpoint is None and isinstance(events, str):
        events_endpoint = events
    return introspection_endpoint, events_endpoint


def introspection_request(
    token: str, *, client_id: str, client_secret: str, auth_method: AuthMethod
) -> tuple[dict[str, str], dict[str, str]]:
    """The form and headers of one introspection call (RFC 7662 §2.1)."""
    data = {"token": token, "token_type_hint": "access_token"}
    headers = {"accept": "application/json"}
    if auth_method == "client_secret_post":
        data.update(client_id=client_id, client_secret=client_secret)
    else:
        headers["authorization"] = basic_authorization(client_id, client_secret)
    return data, headers


def principal_from_response(r: httpx.Response) -> Principal | None:
    """What an introspection answer means: a Principal, None when inactive (RFC 7662 §2.2).

    Raises IntrospectionUnavailable for anything that is not a well-formed 200 answer.
    """
    if r.status_code != 200:
        # 401/403 means our own credentials or registration are wrong; 5xx the AS is
        # in trouble. Either way we cannot tell whether the token is good.
        log.error("introspection refused", extra={"status": r.status_code})
        raise IntrospectionUnavailable(f"introspection answered HTTP {r.status_code}")
    try:
        body = r.json()
    except ValueError as exc:
        raise IntrospectionUnavailable("introspection answered invalid JSON") from exc
    if not isinstance(body, dict) or not isinstance(body.get("active"), bool):
        raise IntrospectionUnavailable("introspection answer has no boolean 'active'")
    return Principal.from_introspection(body)


def check_scopes(principal: Principal, scopes: Iterable[str] = ()) -> None:
    """Raise InsufficientScope (403, RFC 6750 §3.1) unless every scope was granted."""
    needed = frozenset(scopes)
    if not principal.scopes.issuperset(needed):
        raise InsufficientScope(" ".join(sorted(needed)))
