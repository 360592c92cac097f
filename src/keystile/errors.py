"""Errors that go back to a caller as OAuth error responses, and operational failures.

The tree::

    Exception
    ├── OAuthError                      rendered as {"error": ..., "error_description": ...}
    │   ├── InvalidRequest              400  RFC 6749 §5.2
    │   │   ├── RequestTooLarge         413  (body over the configured limit)
    │   │   ├── MethodNotAllowed        405  (GET on a POST endpoint)
    │   │   └── NotAcceptable           406  RFC 9701: no acceptable answer (Accept)
    │   ├── InvalidClient               401  RFC 6749 §5.2, always with WWW-Authenticate
    │   ├── UnauthorizedClient          400  RFC 6749 §5.2
    │   ├── IntrospectionForbidden      403  RFC 7662 §2.1: caller is not a resource server
    │   ├── InvalidGrant                400  RFC 6749 §5.2: bad, used or foreign code/refresh token
    │   ├── UnsupportedGrantType        400  RFC 6749 §5.2
    │   ├── InvalidScope                400  RFC 6749 §5.2
    │   ├── InvalidTarget               400  RFC 8707 §2
    │   ├── TooManyRequests             429  failed client authentications throttled
    │   ├── InvalidToken                401  RFC 6750 §3.1
    │   ├── InsufficientScope           403  RFC 6750 §3.1
    │   └── ServerError                 500  never carries internals
    └── KeystileError                   operational, never an OAuth answer
        ├── StoreUnavailable            the store cannot answer: 503, never "inactive"
        ├── IntrospectionUnavailable    (resource side) the AS cannot answer: 503, never 401
        └── ConfigurationError          bad settings or command-line input
"""

from __future__ import annotations

from typing import ClassVar


class OAuthError(Exception):
    """Base for errors that go back to the caller as an OAuth error response."""

    error: ClassVar[str] = "server_error"
    status_code: ClassVar[int] = 500

    def __init__(self, description: str | None = None, *, headers: dict[str, str] | None = None):
        super().__init__(description or self.error)
        self.description = description
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, str]:
        out = {"error": self.error}
        if self.description:
            out["error_description"] = self.description
        return out


class InvalidRequest(OAuthError):
    error, status_code = "invalid_request", 400


class RequestTooLarge(InvalidRequest):
    status_code = 413


class MethodNotAllowed(InvalidRequest):
    status_code = 405


class NotAcceptable(InvalidRequest):
    """No answer the caller accepts (RFC 9110 §15.5.7), e.g. plain JSON to a resource server
    that must receive signed introspection answers (RFC 9701)."""

    status_code = 406


class InvalidClient(OAuthError):
    """Client authentication failed. Always answered with a ``WWW-Authenticate`` challenge."""

    error, status_code = "invalid_client", 401


class UnauthorizedClient(OAuthError):
    error, status_code = "unauthorized_client", 400


class IntrospectionForbidden(OAuthError):
    """An authenticated client that introspects for no resource server (RFC 7662 §2.1, §4)."""

    error, status_code = "unauthorized_client", 403


class InvalidGrant(OAuthError):
    """RFC 6749 §5.2: the code or refresh token is invalid, expired, revoked, used before,
    or bound to another client or redirect URI."""

    error, status_code = "invalid_grant", 400


class UnsupportedGrantType(OAuthError):
    error, status_code = "unsupported_grant_type", 400


class InvalidScope(OAuthError):
    error, status_code = "invalid_scope", 400


class InvalidTarget(OAuthError):
    error, status_code = "invalid_target", 400


class TooManyRequests(OAuthError):
    error, status_code = "too_many_requests", 429

    def __init__(self, retry_after: int, description: str | None = None) -> None:
        super().__init__(
            description or "too many failed client authentications; retry later",
            headers={"Retry-After": str(max(1, retry_after))},
        )
        self.retry_after = retry_after


class InvalidToken(OAuthError):
    error, status_code = "invalid_token", 401


class InsufficientScope(OAuthError):
    error, status_code = "insufficient_scope", 403


class ServerError(OAuthError):
    error, status_code = "server_error", 500


class KeystileError(Exception):
    """Base for operational failures; these never become an OAuth 'inactive' answer."""


class StoreUnavailable(KeystileError):
    """The store could not answer; callers answer 503, never a wrong result."""


class IntrospectionUnavailable(KeystileError):
    """The authorization server could not say whether a token is active (down, timing out,
    refusing our credentials, answering nonsense). Resource servers answer 503: the
    request is still denied, but the caller is not told its token is bad."""


class ConfigurationError(KeystileError):
    """Settings or command-line input that cannot work, with a message saying why."""
