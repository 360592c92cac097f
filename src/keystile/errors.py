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
    │   ├── InvalidDpopProof            400  RFC 9449 §5, §7.1 (resource servers: 401)
    │   ├── UseDpopNonce                400  RFC 9449 §8, §9 (resource servers: 401)
    │   ├── InvalidRedirectUri          400  RFC 7591 §3.2.2
    │   ├── InvalidClientMetadata       400  RFC 7591 §3.2.2
    │   ├── InvalidSoftwareStatement    400  RFC 7591 §3.2.2
    │   ├── UnapprovedSoftwareStatement 400  RFC 7591 §3.2.2
    │   ├── InsufficientScope           403  RFC 6750 §3.1
    │   └── ServerError                 500  never carries internals
    └── KeystileError                   operational, never an OAuth answer
        ├── StoreUnavailable            the store cannot answer: 503, never "inactive"
        ├── IntrospectionUnavailable    (resource side) the AS cannot answer: 503, never 401
        │   └── SignedAnswersUnavailable  a phantom_token route gets no RFC 9701 answers: 503
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


class InvalidDpopProof(OAuthError):
    """RFC 9449 §5 (token endpoint, 400) and §7.1 (resource servers answer 401 with a
    ``DPoP`` challenge): the DPoP proof is missing, malformed or does not fit the request."""

    error, status_code = "invalid_dpop_proof", 400


class UseDpopNonce(OAuthError):
    """RFC 9449 §8 (token endpoint, 400) and §9 (resource servers, 401): retry with the
    nonce given in the ``DPoP-Nonce`` header."""

    error, status_code = "use_dpop_nonce", 400


class InvalidRedirectUri(OAuthError):
    """RFC 7591 §3.2.2: a requested redirect URI is invalid or not allowed here."""

    error, status_code = "invalid_redirect_uri", 400


class InvalidClientMetadata(OAuthError):
    """RFC 7591 §3.2.2: a client metadata field is invalid or not allowed here."""

    error, status_code = "invalid_client_metadata", 400


class InvalidSoftwareStatement(OAuthError):
    error, status_code = "invalid_software_statement", 400


class UnapprovedSoftwareStatement(OAuthError):
    error, status_code = "unapproved_software_statement", 400


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

    # What the refused caller is told (error_description of the 503).
    public_description: ClassVar[str] = "the authorization server cannot be reached"


class SignedAnswersUnavailable(IntrospectionUnavailable):
    """The AS is up but answers this gateway's introspection in plain JSON, so a
    ``phantom_token`` route has no signed answer (RFC 9701) to forward: a setup error, still
    a 503 (fail closed) but never reported as an unreachable AS."""

    public_description: ClassVar[str] = (
        "this route needs signed introspection answers (RFC 9701), and the authorization"
        " server does not give them to the gateway's resource server"
    )


class ConfigurationError(KeystileError):
    """Settings or command-line input that cannot work, with a message saying why."""
