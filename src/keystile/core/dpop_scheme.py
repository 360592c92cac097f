"""The DPoP authentication scheme on the resource side (RFC 9449 §7.1): reading
``Authorization: DPoP <token>`` beside ``Bearer``, and the ``DPoP`` challenge.

No JOSE here: the middleware and the gateway read credentials and render errors with it
even where proofs are never checked (the proof itself: ``core/dpop.py``).
"""

from __future__ import annotations

from typing import Literal

from keystile.core.bearer import _B64TOKEN, MAX_TOKEN_LENGTH, _quote, bearer_token
from keystile.errors import InvalidRequest

# What proofs may be signed with (RFC 9449 §5.1 dpop_signing_alg_values_supported, and the
# algs parameter of the challenge, §7.1). EdDSA is also accepted under its RFC 9864 name.
DPOP_ALGS: tuple[str, ...] = ("ES256", "EdDSA", "Ed25519", "RS256")

Scheme = Literal["bearer", "dpop"]


def access_credentials(authorization: str | None) -> tuple[Scheme, str] | None:
    """The scheme and token of an ``Authorization: Bearer`` or ``Authorization: DPoP``
    header (RFC 6750 §2.1, RFC 9449 §7.1); None when the request carries neither.

    A malformed credential is ``invalid_request``, as for Bearer (RFC 6750 §3.1).
    """
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "dpop":  # schemes are case-insensitive (RFC 9110 §11.1)
        bearer = bearer_token(authorization)
        return None if bearer is None else ("bearer", bearer)
    token = token.strip()
    if not token:
        return None
    if len(token) > MAX_TOKEN_LENGTH or not _B64TOKEN.fullmatch(token):
        raise InvalidRequest("malformed DPoP access token")
    return "dpop", token


def dpop_challenge(
    *,
    realm: str | None = None,
    error: str | None = None,
    description: str | None = None,
    algs: tuple[str, ...] = DPOP_ALGS,
) -> str:
    """A ``WWW-Authenticate: DPoP …`` value (RFC 9449 §7.1): ``algs`` always, then the error."""
    params: list[str] = []
    if realm:
        params.append(f"realm={_quote(realm)}")
    params.append(f"algs={_quote(' '.join(algs))}")
    if error:
        params.append(f"error={_quote(error)}")
    if description:
        params.append(f"error_description={_quote(description)}")
    return "DPoP " + ", ".join(params)
