"""Client ID metadata documents (draft-ietf-oauth-client-id-metadata-document): a client_id
that is an https URL names the JSON document describing the client.

Pure rules, no I/O: which ``client_id`` values are Client Identifier URLs (draft §3), which
addresses may be fetched (§8.6, RFC 6890), how long a document may be kept (§5.2, RFC 9111)
and which documents are accepted (§4, §4.1). The fetching lives in
server/client_metadata.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final
from urllib.parse import urlsplit

from keystile.core.registration import ClientMetadata, check_metadata
from keystile.errors import InvalidClientMetadata

# The registration method recorded for clients known through their document.
METADATA_DOCUMENT: Final = "metadata-document"
MAX_URL_LENGTH = 2000
# §4.1: no shared secrets, so only a public client or one proving a key from its document.
DOCUMENT_AUTH_METHODS = ("none", "private_key_jwt")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.?)+", re.ASCII)


class ClientIdUrlError(ValueError):
    """A client_id that starts with https:// but is no valid Client Identifier URL."""


def is_client_id_url(client_id: str) -> bool:
    """Whether a client_id asks to be looked up as a metadata document (draft §3).

    keystile's own client ids (CLI names, ``dcr_…``) never start with ``https://``, as
    draft §7.1 recommends; one that an operator made so is still used as registered.
    """
    return client_id.startswith("https://")


def check_client_id_url(url: str) -> tuple[str, int]:
    """Check a Client Identifier URL against draft §3; answer its (host, port).

    https, a host, a path other than ``/``, no user information, no fragment, no ``.`` or
    ``..`` segments (also percent-encoded), ASCII only (an IDN host must come as its
    A-label). A query is allowed (§3: SHOULD NOT, not MUST NOT).
    """
    if len(url) > MAX_URL_LENGTH:
        raise ClientIdUrlError(f"longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ClientIdUrlError("no whitespace, control or non-ASCII characters")
    if "#" in url:
        raise ClientIdUrlError("must not have a fragment (draft section 3)")
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise ClientIdUrlError("not a valid URL") from None
    if parts.scheme != "https":
        raise ClientIdUrlError("must use the https scheme (draft section 3)")
    if "@" in parts.netloc:
        raise ClientIdUrlError("must not carry user information (draft section 3)")
    host = parts.hostname or ""
    if not host:
        raise ClientIdUrlError("must name a host")
    if not _is_ip(host) and not _HOSTNAME.fullmatch(host):
        raise ClientIdUrlError("the host is not a valid DNS name")
    if not parts.path or parts.path == "/":
        raise ClientIdUrlError("must have a path component (draft section 3)")
    segments = parts.path.split("/")
    if any(s.lower().replace("%2e", ".") in (".", "..") for s in segments):
        raise ClientIdUrlError("must not contain . or .. path segments (draft section 3)")
    if "%" in url and not re.fullmatch(r"([^%]|%[0-9A-Fa-f]{2})*", url):
        raise ClientIdUrlError("has a malformed percent-escape")
    return host.rstrip("."), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_special_use(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether fetching from ``address`` is refused (draft §8.6: special-use addresses of
    RFC 6890, which includes loopback, private, link-local, shared (CGNAT), multicast,
    documentation, benchmarking and reserved ranges). An IPv4-mapped or NAT64-embedded
    IPv6 address is judged by the IPv4 address inside it."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_special_use(address.ipv4_mapped)
        if address in _NAT64:
            return is_special_use(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.sixtofour is not None or address.teredo is not None:
            return True
    return not address.is_global or address.is_multicast or address.is_reserved


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def host_matches(host: str, patterns: list[str]) -> bool:
    """Whether ``host`` is one of ``patterns``: an exact host, or ``*.example.com`` for any
    name below example.com (not example.com itself). Compared case-insensitively."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p.startswith("*."):
            if host.endswith(p[1:]):
                return True
        elif host == p:
            return True
    return False


def cache_lifetime(cache_control: str | None, *, minimum: int, maximum: int) -> int:
    """Seconds a fetched document may be used (draft §5.2: HTTP caching rules, RFC 9111
    §5.2.2, within our own bounds).

    ``no-store``, ``no-cache`` and ``max-age=0`` mean "do not reuse": the lower bound then
    applies, so that one flow (authorize, login, consent, token) does not fetch the document
    again at each step. No header at all also gets the lower bound.
    """
    seconds = 0
    for directive in (cache_control or "").split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name in ("no-store", "no-cache"):
            return minimum
        if name in ("max-age", "s-maxage"):
            try:
                seconds = max(seconds, int(value.strip().strip('"')))
            except ValueError:
                return minimum  # RFC 9111 §4.2.1: an invalid max-age is stale
    return max(minimum, min(maximum, seconds))


def check_document(body: Any, *, url: str, scope_ceiling: frozenset[str]) -> ClientMetadata:
    """Check a fetched document (draft §4, §4.1) with the same rules as dynamic client
    registration (core/registration.py).

    Raises the RFC 7591 §3.2.2 error registration would (``InvalidClientMetadata``,
    ``InvalidRedirectUri``, ``UnapprovedSoftwareStatement``…) saying why.
    """
    if not isinstance(body, dict):
        raise InvalidClientMetadata("the document must be a JSON object (draft section 4)")
    # §4: client_id equals the URL the document was fetched from, by simple string
    # comparison (RFC 3986 §6.2.1): no normalisation, "https://a/x" is not "https://a:443/x".
    if body.get("client_id") != url:
        raise InvalidClientMetadata(
            "the document's client_id must equal its URL exactly (draft section 4)"
        )
    # §4.1: no shared secret can exist between the AS and a self-described client.
    for name in ("client_secret", "client_secret_expires_at"):
        if name in body:
            raise InvalidClientMetadata(f"{name} must not appear (draft section 4.1)")
    method = body.get("token_endpoint_auth_method", "none")
    if method not in DOCUMENT_AUTH_METHODS:
        raise InvalidClientMetadata(
            "token_endpoint_auth_method must be none or private_key_jwt: a metadata "
            "document cannot establish a shared secret (draft section 4.1)"
        )
    if isinstance(body.get("jwks"), dict):
        for key in body["jwks"].get("keys") or []:
            # §4.1: public keys only. parse_client_jwks refuses private keys too; this says
            # why in the words of the draft.
            if isinstance(key, dict) and any(p in key for p in ("d", "p", "q", "k")):
                raise InvalidClientMetadata("jwks must hold public keys only (draft section 4.1)")
    checked = check_metadata(
        {**body, "token_endpoint_auth_method": method},
        # The rules for clients an operator vouches for (any redirect URI scheme the
        # registration rules allow), minus shared secrets, refused above.
        policy="initial-access-token",
        scope_ceiling=scope_ceiling,
    )
    if "authorization_code" not in checked.grant_types:
        raise InvalidClientMetadata(
            "keystile accepts metadata documents for the authorization_code grant only"
        )
    if "client_credentials" in checked.grant_types:
        raise InvalidClientMetadata("client_credentials is not available to such clients")
    return checked
