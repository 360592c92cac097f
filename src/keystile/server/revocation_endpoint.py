"""The revocation endpoint (RFC 7009 §2)."""

from __future__ import annotations

import logging

from keystile.core.jwt_profile import looks_like_jwt
from keystile.core.tokens import token_hash, token_kind
from keystile.errors import InvalidRequest
from keystile.server.client_authentication import ClientAuthentication
from keystile.server.endpoint_base import _NO_BODY, Call, Result

log = logging.getLogger("keystile.server")


class RevocationEndpoint(ClientAuthentication):
    """Revokes a client's own tokens; the store cascades and writes the events."""

    async def revoke(self, call: Call) -> Result:
        """Revocation endpoint (RFC 7009 §2). Public clients name themselves (§2.1)."""
        client = await self.authenticate(call, allow_public=True)
        form = call.form
        token = form.get("token")
        if token is None:
            raise InvalidRequest("missing parameter: token")
        # §2.2: an invalid or unknown token is not an error. A token of another client is
        # left alone and also answered 200 (§2.1 lets us refuse; answering the same as for an
        # unknown token tells a caller nothing about tokens that are not its own).
        kind = token_kind(token)
        # A JWT access token is revoked by its digest like an opaque token: only a token in
        # our store, issued to this client, is affected, so no signature check is needed.
        revocable = kind in ("access_token", "refresh_token") or looks_like_jwt(token)
        if revocable and await self.store.revoke_token(
            token_hash(token), client.client_id, self.clock.now()
        ):
            self.metrics.revocations.inc()
            self.on_event()
            log.info(
                "token revoked",
                extra={
                    "client_id": client.client_id,
                    "token_sha256": token_hash(token).hex()[:16],
                },
            )
        return 200, _NO_BODY
