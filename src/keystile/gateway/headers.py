"""Request header names the gateway manages (RFC 9110 §5.1, §7.6): what each incoming one is.

A header name is a case-insensitive token (RFC 9110 §5.1) that may contain ``_``. CGI and WSGI
(RFC 3875 §4.1.18, PEP 3333) hand headers to applications as ``HTTP_`` + the name upper-cased
with ``-`` turned into ``_``, so ``X-Auth-Subject``, ``x_auth_subject`` and ``X_Auth-Subject``
all become ``HTTP_X_AUTH_SUBJECT`` there, and many frameworks do the same folding. A caller
must not reach an upstream under any spelling of a header the gateway sets itself, so names
are compared *folded*: lower-cased, ``_`` read as ``-``.

``HeaderKinds(identity_names)`` sorts a raw (ASGI, lower-case) header name into one kind;
the answer is remembered per name in a bounded dict, so the proxy's per-request loop does one
dict lookup per header instead of folding and comparing each time.
"""

from __future__ import annotations

from collections.abc import Iterable

# What the proxy does with an incoming request header. Plain ints, not an Enum: the proxy
# compares one per header on every request, and module-level ints are the cheapest to load.
PASS = 0  # forwarded as it is
HOP = 1  # hop-by-hop (RFC 9110 §7.6.1): dropped
CONNECTION = 2  # hop-by-hop, and names more hop-by-hop headers
TRANSFER_ENCODING = 3  # hop-by-hop; the body is re-framed (RFC 9112 §6)
IDENTITY = 4  # any spelling of an identity header: never the caller's, always dropped
HOST = 5
FORWARDED_FOR = 6  # x-forwarded-for, exactly so spelled
FORWARDED_PROTO = 7
FORWARDED_HOST = 8
FORWARDED_OTHER = 9  # forwarded, x-forwarded-*, x-real-ip...: kept from a trusted proxy only
SPOOFED = 10  # another spelling of one of those: always dropped
CONTENT_LENGTH = 11
EXPECT = 12  # 100-continue is between the caller and the gateway
AUTHORIZATION = 13


# RFC 9110 §7.6.1 (and the older Keep-Alive, Proxy-Connection still seen in the wild).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_EXACT = {
    b"connection": CONNECTION,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"host": HOST,
    b"content-length": CONTENT_LENGTH,
    b"expect": EXPECT,
    b"authorization": AUTHORIZATION,
    b"x-forwarded-for": FORWARDED_FOR,
    b"x-forwarded-proto": FORWARDED_PROTO,
    b"x-forwarded-host": FORWARDED_HOST,
    b"forwarded": FORWARDED_OTHER,
}
# A caller choosing fresh names can grow the memo no further than this; past it, names are
# sorted without being remembered (a few hundred nanoseconds each).
MAX_REMEMBERED = 4096


def fold(name: bytes) -> bytes:
    """The name as CGI/WSGI sees it, in lower case with ``-``: ``X_Auth-Subject`` →
    ``x-auth-subject``."""
    return name.lower().replace(b"_", b"-")


# Headers in which proxies and CDNs name the client's address besides X-Forwarded-For: nginx's
# X-Real-IP (ngx_http_realip_module), True-Client-IP (Cloudflare, Akamai), X-Client-IP. An
# upstream that logs or rate-limits by one of them must not get the caller's own copy.
CLIENT_ADDRESS = frozenset({b"x-real-ip", b"true-client-ip", b"x-client-ip"})


def _forwarding(folded: bytes) -> bool:
    """Forwarded (RFC 7239), any X-Forwarded-* header, or a client-address header: the
    headers proxies set."""
    return folded == b"forwarded" or folded.startswith(b"x-forwarded-") or folded in CLIENT_ADDRESS


class HeaderKinds:
    """``kinds.of(name)`` → the kind of a raw header name (remembered per name in
    ``memo``, which the proxy reads directly on its hot path)."""

    def __init__(self, identity_names: Iterable[str]) -> None:
        names = [n.lower().encode("ascii") for n in identity_names]
        self.identity = frozenset(fold(n) for n in names)
        self._spelled = frozenset(names)  # as the gateway sends them
        self.memo: dict[bytes, int] = {}

    def of(self, name: bytes) -> int:
        kind = self.memo.get(name)
        if kind is None:
            kind = self._sort(name)
            if len(self.memo) < MAX_REMEMBERED:
                self.memo[name] = kind
        return kind

    def _sort(self, name: bytes) -> int:
        lower = name.lower()
        folded = lower.replace(b"_", b"-")
        if folded in self.identity:
            return IDENTITY
        if _forwarding(folded):
            # Only the dash spelling may come from a trusted proxy: a proxy writes
            # X-Forwarded-For, while X_Forwarded_For can only be the caller's, passed along.
            if lower != folded:
                return SPOOFED
            return _EXACT.get(lower, FORWARDED_OTHER)
        if lower in _EXACT:
            return _EXACT[lower]
        if lower in HOP_BY_HOP:
            return HOP
        return PASS

    def spoofs(self, name: bytes) -> bool:
        """Is this a spelling of an identity or forwarding header other than the one the
        gateway or a proxy writes (``x_auth_subject``, ``x_forwarded_for``)? Case does not
        count: HTTP names are case-insensitive (RFC 9110 §5.1), and proxies match them so."""
        kind = self.of(name)
        if kind == SPOOFED:
            return True
        return kind == IDENTITY and name.lower() not in self._spelled
