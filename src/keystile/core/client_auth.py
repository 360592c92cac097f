"""Client authentication (RFC 6749 §2.3): which credentials a request carries, and checking them.

Exactly one method per request (RFC 6749 §2.3: "MUST NOT use more than one authentication
method in each request"). Basic credentials are form-urlencoded before base64 (§2.3.1).
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from keystile.core.models import Client
from keystile.core.tokens import verify_secret
from keystile.errors import InvalidClient, InvalidRequest

BASIC_CHALLENGE = 'Basic realm="keystile", charset="UTF-8"'
MAX_CLIENT_ID = 255


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    secret: str = field(repr=False)
    method: str  # "client_secret_basic" | "client_secret_post"


def invalid_client(description: str = "client authentication failed") -> InvalidClient:
    # RFC 6749 §5.2: 401 with WWW-Authenticate; we challenge on every 401, whichever
    # method was tried, so a caller always learns how to authenticate.
    return InvalidClient(description, headers={"WWW-Authenticate": BASIC_CHALLENGE})


def _parse_basic(header: str) -> tuple[str, str]:
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client("unsupported authorization scheme; use HTTP Basic")
    param = param.strip()
    if not param:
        raise InvalidRequest("malformed Basic credentials")
    try:
        decoded = b64decode(param, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidRequest("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise InvalidRequest("malformed Basic credentials")
    # RFC 6749 §2.3.1: client_id and secret are form-urlencoded before Basic encoding.
    return unquote_plus(user, errors="strict"), unquote_plus(password, errors="strict")


def extract_credentials(
    authorization: str | None, form: dict[str, str]
) -> ClientCredentials | None:
    """The credentials in a request, or None if it carries none.

    ``client_secret`` is taken out of ``form`` so it can never be echoed or logged later.
    """
    post_id = form.get("client_id")
    post_secret = form.pop("client_secret", None)
    if authorization is not None:
        if post_secret is not None:
            raise InvalidRequest("use one client authentication method, not two")
        try:
            client_id, secret = _parse_basic(authorization)
        except UnicodeDecodeError:
            raise InvalidRequest("malformed Basic credentials") from None
        if post_id is not None and post_id != client_id:
            raise InvalidRequest("client_id in the body differs from the authenticated client")
        method = "client_secret_basic"
    elif post_secret is not None:
        if post_id is None:
            raise InvalidRequest("client_secret given without client_id")
        client_id, secret, method = post_id, post_secret, "client_secret_post"
    else:
        return None
    if not client_id or len(client_id) > MAX_CLIENT_ID or not secret:
        raise invalid_client()
    return ClientCredentials(client_id, secret, method)


def check_client(client: Client | None, creds: ClientCredentials) -> Client:
    """Return the client if the credentials are right for it; else raise InvalidClient.

    Every failure reads the same to the caller, so the answer does not reveal whether a
    client id exists.
    """
    if client is None:
        # Spend the same digest work as a real check, so timing says nothing either.
        verify_secret(creds.secret, b"\0" * 32)
        raise invalid_client()
    ok = verify_secret(creds.secret, client.secret_hash)
    if not ok or not client.enabled:
        raise invalid_client()
    if creds.method != client.auth_method:
        raise invalid_client(f"client is registered for {client.auth_method}")
    return client
