"""Binding tokens to their sender at the token endpoint: DPoP (RFC 9449 §5) and client
certificates (RFC 8705 §3).

The token endpoint asks ``sender_binding`` once per request, after client authentication:

- a ``DPoP`` header is checked (``core.dpop.verify_proof``: ``htm`` POST, ``htu`` this
  server's token endpoint, the ``iat`` window, the nonce when ``dpop_nonce`` is on), its
  ``jti`` is recorded in the store (shared by every process on the database, so a proof is
  accepted once, RFC 9449 §11.1), and the tokens are bound to its key (``cnf.jkt``);
- a client that must use DPoP (``require_dpop``) and sends no proof is refused;
- a refresh token bound to a key (public clients, RFC 9449 §5) needs a proof by that key;
- a client certificate, from the TLS connection keystile terminates (``tls_client_ca``) or
  from ``tls_client_certificate_header`` sent by a trusted proxy, binds the tokens to it
  (``cnf["x5t#S256"]``, RFC 8705 §3.1).
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from functools import cached_property

from keystile.core.dpop import verify_proof
from keystile.core.dpop_state import MemoryReplayCache, NonceSource
from keystile.core.metadata import TOKEN_PATH
from keystile.core.models import Client, TokenRecord
from keystile.core.mtls import der_thumbprint, forwarded_thumbprint
from keystile.core.user_grants import BAD_REFRESH
from keystile.errors import InvalidDpopProof, InvalidGrant, UseDpopNonce
from keystile.server.endpoint_base import Call, EndpointBase
from keystile.server.tls_peer import PEER_ADDRESS, PEER_CERTIFICATE


@dataclass(frozen=True, slots=True)
class Binding:
    """What the tokens of one token response are bound to (None: nothing, a bearer token)."""

    jkt: str | None = None
    x5t: str | None = None


UNBOUND = Binding()


def dpop_header(call: Call) -> str | None:
    """The request's ``DPoP`` header; two of them is an invalid proof (RFC 9449 §4.3 item 1)."""
    found: str | None = None
    for key, value in call.scope["headers"]:
        if key == b"dpop":
            if found is not None:
                raise InvalidDpopProof("send one DPoP header")
            try:
                found = value.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidDpopProof("the DPoP proof is not a signed JWT") from None
    return found


class SenderBinding(EndpointBase):
    """The token endpoint's DPoP checks; ``self.nonces`` is set when nonces are required."""

    _nonces: NonceSource | None = None
    _seen_proofs: MemoryReplayCache | None = None

    @property
    def nonces(self) -> NonceSource | None:
        if not self.settings.dpop_nonce:
            return None
        if self._nonces is None:
            secret = self.settings.dpop_nonce_secret
            self._nonces = NonceSource(_secret_bytes(secret) if secret else None)
        return self._nonces

    async def sender_binding(
        self, call: Call, client: Client, *, refresh: TokenRecord | None = None
    ) -> Binding:
        """Check the DPoP proof of a token request, if any; what its tokens are bound to."""
        x5t = self.client_certificate(call)
        if refresh is not None and refresh.cnf_x5t not in (None, x5t):
            # RFC 8705 §4: a public client's refresh token bound to its certificate is good
            # only on a connection with that certificate.
            raise InvalidGrant(BAD_REFRESH)
        proof_value = dpop_header(call)
        if proof_value is None:
            if client.require_dpop:
                # RFC 9449 §5: the client is registered to use DPoP; no proof, no token.
                raise InvalidDpopProof("this client must send a DPoP proof (RFC 9449)")
            if refresh is not None and refresh.cnf_jkt is not None:
                # RFC 9449 §5: a bound refresh token needs a proof by its key.
                raise InvalidDpopProof("this refresh token is bound to a DPoP key")
            return UNBOUND if x5t is None else Binding(x5t=x5t)
        now = self.clock.now()
        nonces = self.nonces
        try:
            proof = verify_proof(
                proof_value,
                htm="POST",
                htu=self.issuer + TOKEN_PATH,
                now=now,
                nonce_ok=None if nonces is None else (lambda n: nonces.is_current(n, now)),
                max_age=self.settings.dpop_max_age,
            )
        except (InvalidDpopProof, UseDpopNonce) as exc:
            if nonces is not None:
                # RFC 9449 §8: the nonce to use next, with every DPoP error.
                exc.headers["DPoP-Nonce"] = nonces.current(now)
            raise
        if refresh is not None and refresh.cnf_jkt not in (None, proof.jkt):
            # The refresh token is bound to another key: whoever sends it does not hold it.
            raise InvalidGrant(BAD_REFRESH)
        # RFC 9449 §11.1: each proof once. This process's memory refuses its own replays
        # without a write; the store's unique key, shared by every AS process, decides.
        expiry = proof.replay_expiry(self.settings.dpop_max_age)
        if self._seen_proofs is None:
            self._seen_proofs = MemoryReplayCache()
        if not self._seen_proofs.first_use(
            proof.replay_key, expiry, now
        ) or not await self.store.record_dpop_jti(proof.jkt, proof.jti, expiry):
            raise InvalidDpopProof("the DPoP proof was used before")
        return Binding(jkt=proof.jkt, x5t=x5t)

    def client_certificate(self, call: Call) -> str | None:
        """``x5t#S256`` of the client's certificate (RFC 8705 §3.1): from the TLS connection
        we terminate, else from the configured header of a trusted proxy; None without."""
        state = call.scope.get("state") or {}
        der = state.get(PEER_CERTIFICATE)
        if der:
            return der_thumbprint(der)
        name = self.settings.tls_client_certificate_header
        if name is None:
            return None
        # The socket's own peer (uvicorn rewrites "client" from X-Forwarded-For).
        peer = state.get(PEER_ADDRESS) or call.source
        if not self._trusted_proxy(peer):
            return None  # anyone may send the header: only a proxy we trust is believed
        wanted = name.lower().encode("latin-1")
        for key, value in call.scope["headers"]:
            if key == wanted:
                return forwarded_thumbprint(value.decode("latin-1"))
        return None

    @cached_property
    def _proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        out = []
        for item in self.settings.trusted_proxies:
            try:
                out.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                continue  # uvicorn's "*" and names: not for believing certificates
        return out

    def _trusted_proxy(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in net for net in self._proxy_networks)


def _secret_bytes(secret: str) -> bytes:
    try:
        return base64.b64decode(secret, validate=True)
    except ValueError:
        return secret.encode("utf-8")
