"""Sender-constrained tokens on the resource side: DPoP (RFC 9449 §7) and certificate-bound
tokens (RFC 8705 §3), checked on every request against the token's ``cnf``.

The validator says whether a token is active (from its cache, introspection or a JWT); this
says whether *this request's sender* may use it, and runs on every request, cache hit or
not::

    sender = SenderCheck()                        # needs the jwt extra (joserfc)
    principal = await validator.validate(token)
    sender.check(principal, scheme=scheme, token=token, proof=request.headers.get("dpop"),
                 method=request.method, url=str(request.url))

Rules (``mode``):

- a token bound to a DPoP key (``cnf.jkt``) needs ``Authorization: DPoP`` and a proof signed
  by that key, for this method and URL, with ``ath`` of this token, recent, never seen
  before (RFC 9449 §4.3, §7.1); as ``Bearer`` it is refused (§7.2);
- a token bound to a certificate (``cnf["x5t#S256"]``) needs that certificate on the
  connection (RFC 8705 §3);
- ``"if_bound"`` (default) lets unbound tokens through as bearer tokens; ``"required"``
  refuses them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from keystile.core.dpop_scheme import DPOP_ALGS, Scheme
from keystile.core.dpop_state import MemoryReplayCache, NonceSource
from keystile.errors import InvalidDpopProof, InvalidToken, UseDpopNonce
from keystile.resource.principal import Principal
from keystile.resource.replay import SharedReplayCache

if TYPE_CHECKING:
    from keystile.core.dpop import DpopProof

SenderMode = Literal["if_bound", "required"]
SENDER_MODES: tuple[SenderMode, ...] = ("if_bound", "required")


class DpopProofRefused(InvalidDpopProof):
    """RFC 9449 §7.1: at a resource server, a bad proof is 401 with a DPoP challenge."""

    status_code = 401
    dpop = True


class DpopNonceRequired(UseDpopNonce):
    """RFC 9449 §9: 401, a DPoP challenge and the nonce to use in ``DPoP-Nonce``."""

    status_code = 401
    dpop = True


class SenderRefused(InvalidToken):
    """The token is not usable this way: a bound token as Bearer, a DPoP scheme for an
    unbound token, another certificate; 401 ``invalid_token`` with a DPoP challenge."""

    dpop = True


def confirmation(principal: Principal) -> tuple[str | None, str | None]:
    """``(jkt, x5t#S256)`` of a principal's ``cnf`` claim (RFC 7800 §3.1); a malformed cnf,
    or token_type DPoP without one, is refused: a binding we cannot read is not ignored."""
    cnf = principal.claims.get("cnf")
    if cnf is None:
        if principal.token_type is not None and principal.token_type.lower() == "dpop":
            raise SenderRefused("the access token is DPoP-bound but its key is not known")
        return None, None
    if not isinstance(cnf, Mapping):
        raise SenderRefused("the access token has a malformed cnf claim")
    jkt, x5t = cnf.get("jkt"), cnf.get("x5t#S256")
    if (jkt is not None and not isinstance(jkt, str)) or (
        x5t is not None and not isinstance(x5t, str)
    ):
        raise SenderRefused("the access token has a malformed cnf claim")
    if jkt is None and x5t is None:
        raise SenderRefused("the access token is bound to a key this resource cannot check")
    return jkt, x5t


class SenderCheck:
    """Checks the sender of every request against its token's binding (see the module)."""

    def __init__(
        self,
        *,
        mode: SenderMode = "if_bound",
        max_age: int = 60,
        replay_cache: MemoryReplayCache | None = None,
        shared_replay: SharedReplayCache | None = None,
        nonces: NonceSource | None = None,
        clock: Callable[[], float] = time.time,
        algorithms: tuple[str, ...] = DPOP_ALGS,
    ) -> None:
        try:
            from keystile.core import dpop
        except ImportError as exc:  # pragma: no cover - only without the extra
            raise ImportError(
                "checking DPoP proofs needs joserfc: pip install 'keystile[jwt]'"
            ) from exc
        if mode not in SENDER_MODES:
            raise ValueError(f"mode must be one of {', '.join(SENDER_MODES)}")
        self._dpop = dpop
        self.mode = mode
        self.max_age = max_age
        self.replay = replay_cache if replay_cache is not None else MemoryReplayCache()
        # Several instances (gateways, API processes) share one through Redis: a proof is
        # then accepted once by all of them (only checked by acheck, which may await).
        self.shared_replay = shared_replay
        self.nonces = nonces
        self.clock = clock
        self.algorithms = algorithms

    def check(
        self,
        principal: Principal,
        *,
        scheme: Scheme,
        token: str,
        proof: str | None,
        method: str,
        url: str,
        certificate_x5t: str | None = None,
    ) -> None:
        """Raise unless this request's sender may use ``principal``'s token; no I/O (the
        replay check is this process's only)."""
        checked = self._verify(
            principal,
            scheme=scheme,
            token=token,
            proof=proof,
            method=method,
            url=url,
            certificate_x5t=certificate_x5t,
        )
        if checked is not None:
            self._first_use_here(checked)

    async def acheck(
        self,
        principal: Principal,
        *,
        scheme: Scheme,
        token: str,
        proof: str | None,
        method: str,
        url: str,
        certificate_x5t: str | None = None,
    ) -> None:
        """``check``, then the replay check shared with other instances (``shared_replay``)."""
        checked = self._verify(
            principal,
            scheme=scheme,
            token=token,
            proof=proof,
            method=method,
            url=url,
            certificate_x5t=certificate_x5t,
        )
        if checked is None:
            return
        self._first_use_here(checked)
        if self.shared_replay is not None and not await self.shared_replay.first_use(
            checked.replay_key, checked.replay_expiry(self.max_age), int(self.clock())
        ):
            raise DpopProofRefused("the DPoP proof was used before")

    def _first_use_here(self, checked: DpopProof) -> None:
        now = int(self.clock())
        if not self.replay.first_use(checked.replay_key, checked.replay_expiry(self.max_age), now):
            raise DpopProofRefused("the DPoP proof was used before")

    def _verify(
        self,
        principal: Principal,
        *,
        scheme: Scheme,
        token: str,
        proof: str | None,
        method: str,
        url: str,
        certificate_x5t: str | None,
    ) -> DpopProof | None:
        """Every check but replay; the verified proof, or None when the token needs none."""
        jkt, x5t = confirmation(principal)
        if x5t is not None and certificate_x5t != x5t:
            # RFC 8705 §3: the certificate of the connection must be the one bound.
            raise SenderRefused("the access token is bound to another client certificate")
        if jkt is None:
            if scheme == "dpop":
                # RFC 9449 §7.1: the DPoP scheme is for DPoP-bound tokens only.
                raise SenderRefused("the access token is not DPoP-bound: use Bearer")
            if x5t is None and self.mode == "required":
                raise SenderRefused("this resource needs a sender-constrained access token")
            return None
        if scheme != "dpop":
            # RFC 9449 §7.2: a DPoP-bound token presented as Bearer is refused.
            raise SenderRefused("the access token is DPoP-bound: use the DPoP scheme")
        if proof is None:
            raise DpopProofRefused("a DPoP proof is required")
        now = int(self.clock())
        nonces = self.nonces
        try:
            checked = self._dpop.verify_proof(
                proof,
                htm=method,
                htu=url,
                now=now,
                access_token=token,
                nonce_ok=None if nonces is None else (lambda n: nonces.is_current(n, now)),
                max_age=self.max_age,
                algorithms=self.algorithms,
            )
        except UseDpopNonce:
            assert nonces is not None  # only raised when nonces are configured
            raise DpopNonceRequired(
                "a current DPoP nonce is required", headers={"DPoP-Nonce": nonces.current(now)}
            ) from None
        except InvalidDpopProof as exc:
            raise DpopProofRefused(exc.description) from None
        if checked.jkt != jkt:
            # RFC 9449 §4.3 item 12: the proof's key must be the one the token is bound to.
            raise DpopProofRefused("the DPoP proof is signed by another key than the token's")
        return checked


def request_url(scope: Mapping[str, Any], origin: str | None = None) -> str:
    """The URL an ASGI request was made to, for ``htu``: ``origin`` (scheme and host the
    clients use, e.g. ``https://api.example.com`` behind a TLS proxy) or the scope's
    scheme and Host header, then root_path and path. No query: htu has none (§4.3)."""
    root, path = str(scope.get("root_path", "")), str(scope.get("path", "/"))
    if root and not path.startswith(root):
        # Servers differ: uvicorn's path includes root_path, the ASGI spec's does not.
        path = root + path
    if origin is not None:
        return origin.rstrip("/") + path
    host = None
    for key, value in scope.get("headers", ()):
        if key == b"host":
            host = value.decode("latin-1")
            break
    if host is None:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}{path}"
