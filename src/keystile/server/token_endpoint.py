"""The token endpoint (RFC 6749 §3.2, §4.1.3, §4.4, §5, §6; RFC 9068 JWT access tokens)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from keystile.core.issuance import TokenGrant, client_credentials_grant, new_token_record
from keystile.core.jwt_profile import published_until, sign_access_token, sign_jwt
from keystile.core.models import Client, Grant, TokenRecord
from keystile.core.oidc import ID_TOKEN_TYP, OPENID, id_token_claims
from keystile.core.scope import format_scope
from keystile.core.tokens import new_access_token, new_refresh_token, token_hash, token_kind
from keystile.core.user_grants import (
    BAD_CODE,
    BAD_REFRESH,
    TokenShape,
    access_record,
    check_code,
    refresh_record,
    token_shape,
)
from keystile.errors import (
    InvalidDpopProof,
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from keystile.server.client_authentication import ClientAuthentication
from keystile.server.endpoint_base import Call, Result
from keystile.server.sender_binding import Binding, SenderBinding
from keystile.store.base import NewToken

log = logging.getLogger("keystile.server")


class TokenEndpoint(ClientAuthentication, SenderBinding):
    """Issues tokens: client_credentials, authorization_code (PKCE) and refresh_token."""

    async def token(self, call: Call) -> Result:
        """Token endpoint (RFC 6749 §3.2, §4.1.3, §4.4, §5, §6)."""
        form = call.form
        grant_type = form.get("grant_type")
        # Public clients may redeem codes and refresh tokens (bound to them, and to a PKCE
        # verifier); only confidential clients get client_credentials tokens.
        user_grant = grant_type in ("authorization_code", "refresh_token")
        client = await self.authenticate(call, allow_public=user_grant)
        if grant_type is None:
            raise InvalidRequest("missing parameter: grant_type")
        if grant_type == "authorization_code":
            return await self._code_grant(call, client)
        if grant_type == "refresh_token":
            return await self._refresh_grant(call, client)
        if grant_type != "client_credentials":
            raise UnsupportedGrantType(
                "grant_type must be authorization_code, refresh_token or client_credentials"
            )
        grant = client_credentials_grant(
            client,
            requested_scope=form.get("scope"),
            resources=form.getall("resource"),
            known_resources=await self.store.known_resources(),
        )
        binding = await self.sender_binding(call, client)  # RFC 9449 §5
        now = self.clock.now()
        if client.token_format == "jwt":  # noqa: S105 - a format name, not a secret
            return await self._issue_jwt(client, grant, now, binding)  # RFC 9068
        value = new_access_token()
        record = _access_token_record(client, grant, now, token_hash(value), binding)
        await self.store.insert_token(record)
        self.metrics.tokens_issued.labels("client_credentials").inc()
        log.info(
            "token issued",
            extra={
                "client_id": client.client_id,
                "jti": record.jti,
                "scope": format_scope(grant.scope),
                "aud": list(grant.aud),
                "cnf_jkt": binding.jkt,
            },
        )
        return 200, token_response(value, grant.ttl, grant.scope, token_type=_type(binding))

    # -- people: authorization code and refresh token grants (issue 3) -----------------------

    async def _code_grant(self, call: Call, client: Client) -> Result:
        """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.5): a code is good exactly once."""
        if "authorization_code" not in client.grant_types:
            raise UnauthorizedClient("client is not allowed to use the authorization_code grant")
        form = call.form
        code = form.get("code")
        redirect_uri = form.get("redirect_uri")
        verifier = form.get("code_verifier")
        # A malformed request does not use up the code: check what is missing first.
        if code is None:
            raise InvalidRequest("missing parameter: code")
        if redirect_uri is None:
            raise InvalidRequest("missing parameter: redirect_uri")
        if verifier is None:
            raise InvalidRequest("missing parameter: code_verifier (PKCE is required)")
        if token_kind(code) != "authorization_code":
            raise InvalidGrant(BAD_CODE)
        # Before the code is used up: a request with a bad proof leaves it redeemable.
        binding = await self.sender_binding(call, client)  # RFC 9449 §5
        now = self.clock.now()
        found = await self.store.redeem_authorization_code(token_hash(code), now)
        if found.outcome == "replayed":
            # §4.1.2: the tokens issued from it are revoked now (the store did it, with
            # events, in the same transaction).
            grant_id = found.code.grant_id if found.code else None
            self._replayed("authorization_code", client, grant_id, source=call.source)
            raise InvalidGrant(BAD_CODE)
        if found.outcome != "ok" or found.code is None or found.grant is None:
            raise InvalidGrant(BAD_CODE)
        check_code(found.code, client, redirect_uri=redirect_uri, verifier=verifier)
        if found.code.dpop_jkt is not None and binding.jkt != found.code.dpop_jkt:
            # RFC 9449 §10: the authorization request named the key that must redeem it.
            if binding.jkt is None:
                raise InvalidDpopProof("this authorization code is bound to a DPoP key (dpop_jkt)")
            raise InvalidGrant(BAD_CODE)
        grant = found.grant
        # RFC 8707 §2.2: resource here narrows the token's audience to part of what was
        # authorized (MCP clients send it in both requests); one outside the grant is
        # invalid_target, never a token for an audience the client did not ask for. The
        # code is spent by then, as with a wrong verifier.
        shape = token_shape(grant, requested_scope=None, resources=form.getall("resource"))
        return await self._issue_user_tokens(
            client, grant, shape, now, binding, rotate=None, nonce=found.code.nonce
        )

    async def _refresh_grant(self, call: Call, client: Client) -> Result:
        """RFC 6749 §6 with rotation: every use gives a new refresh token and retires the
        old one; presenting a retired one revokes the grant (RFC 9700 §4.14.2)."""
        if "refresh_token" not in client.grant_types:
            raise UnauthorizedClient("client is not allowed to use the refresh_token grant")
        form = call.form
        value = form.get("refresh_token")
        if value is None:
            raise InvalidRequest("missing parameter: refresh_token")
        if token_kind(value) != "refresh_token":
            raise InvalidGrant(BAD_REFRESH)
        digest = token_hash(value)
        old = await self.store.find_token(digest)
        # Bound to the client it was issued to (§6); another client's refresh token is
        # refused without touching it.
        if (
            old is None
            or old.kind != "refresh_token"
            or old.grant_id is None
            or old.client_id != client.client_id
        ):
            raise InvalidGrant(BAD_REFRESH)
        grant = await self.store.get_grant(old.grant_id)
        if grant is None:
            raise InvalidGrant(BAD_REFRESH)
        binding = await self.sender_binding(call, client, refresh=old)  # RFC 9449 §5
        shape = token_shape(
            grant, requested_scope=form.get("scope"), resources=form.getall("resource")
        )
        now = self.clock.now()
        return await self._issue_user_tokens(client, grant, shape, now, binding, rotate=digest)

    def _replayed(self, kind: str, client: Client, grant_id: str | None, **extra: Any) -> None:
        """A code or refresh token presented again: the store revoked its grant (with
        events, in the same transaction); wake the event bus, count it, log it."""
        self.on_event()
        self.metrics.replays.labels(kind).inc()
        log.warning(
            f"{kind.replace('_', ' ')} replayed; its grant is revoked",
            extra={"client_id": client.client_id, "grant_id": grant_id, **extra},
        )

    async def _issue_user_tokens(
        self,
        client: Client,
        grant: Grant,
        shape: TokenShape,
        now: int,
        binding: Binding,
        *,
        rotate: bytes | None,
        nonce: str | None = None,
    ) -> Result:
        """Access token (opaque or RFC 9068 JWT) plus, for clients with the refresh_token
        grant, a refresh token, and for openid grants an ID token (OIDC Core §3.1.3.3,
        §12.2); stored in one transaction that re-checks the grant. Access and refresh
        tokens are bound as ``binding`` says, the refresh token only for public clients
        (RFC 9449 §5: a confidential client's refresh tokens are bound by its authentication
        already)."""
        tokens: list[NewToken] = []
        if client.token_format == "jwt":  # noqa: S105 - a format name, not a secret
            if not shape.aud:
                raise InvalidTarget(
                    "a JWT access token needs an audience: send resource, or give the client a "
                    "default audience"
                )
            signer = await self.signing.signer()
            draft = _bound(access_record(client, grant, shape, now, b""), binding)
            access = sign_access_token(
                draft, issuer=self.issuer, signer=signer, auth_time=grant.auth_time
            )
            record = replace(draft, token_hash=token_hash(access))
            self.signing.ring.remember(record.token_hash, signer.kid)
            tokens.append(NewToken(record, signer.kid, published_until(record.exp)))
        else:
            access = new_access_token()
            record = _bound(access_record(client, grant, shape, now, token_hash(access)), binding)
            tokens.append(NewToken(record))
        id_token = None
        if OPENID in grant.scope:
            id_token = await self._id_token(client, grant, now, access, nonce)
        refresh: str | None = None
        if "refresh_token" in client.grant_types:
            refresh = new_refresh_token()
            next_refresh = refresh_record(client, grant, now, token_hash(refresh))
            if next_refresh is None:  # the grant's absolute lifetime is over
                if rotate is not None:
                    raise InvalidGrant(BAD_REFRESH)
                refresh = None
            else:
                if client.is_public:
                    next_refresh = _bound(next_refresh, binding)
                tokens.append(NewToken(next_refresh))
        if rotate is None:
            if not await self.store.issue_grant_tokens(grant.grant_id, tokens, now):
                raise InvalidGrant(BAD_CODE)
            grant_type = "authorization_code"
        else:
            rotation = await self.store.rotate_refresh_token(rotate, tokens, now)
            if rotation.outcome == "replayed":
                self._replayed(
                    "refresh_token", client, grant.grant_id, tokens_revoked=rotation.tokens_revoked
                )
                raise InvalidGrant(BAD_REFRESH)
            if rotation.outcome != "ok":
                raise InvalidGrant(BAD_REFRESH)
            grant_type = "refresh_token"
        self.metrics.tokens_issued.labels(grant_type).inc()
        log.info(
            "token issued",
            extra={
                "client_id": client.client_id,
                "grant_type": grant_type,
                "grant_id": grant.grant_id,
                "sub": grant.user_id,
                "jti": record.jti,
                "scope": format_scope(shape.scope),
                "aud": list(shape.aud),
                "cnf_jkt": binding.jkt,
            },
        )
        return 200, token_response(
            access,
            client.access_token_ttl,
            shape.scope,
            refresh,
            id_token=id_token,
            token_type=_type(binding),
        )

    async def _id_token(
        self, client: Client, grant: Grant, now: int, access_token: str, nonce: str | None
    ) -> str:
        """The ID token (OIDC Core §2), signed with the active key, or with an ID-token key
        of the client's id_token_signed_response_alg when that is another algorithm."""
        user = await self.store.get_user(grant.user_id)
        if user is None or not user.enabled:
            # Disabling or deleting a user revokes its grants; this is the race in between.
            raise InvalidGrant(BAD_REFRESH if nonce is None else BAD_CODE)
        signer = await self.signing.id_token_signer(client.id_token_signed_response_alg)
        claims = id_token_claims(
            issuer=self.issuer,
            client=client,
            grant=grant,
            user=user,
            now=now,
            alg=signer.alg,
            access_token=access_token,
            nonce=nonce,
            ttl=self.settings.id_token_ttl,
        )
        return sign_jwt(claims, signer, typ=ID_TOKEN_TYP)

    # -- JWT access tokens, signed introspection answers, private_key_jwt (issue 4) ----------

    async def _issue_jwt(
        self, client: Client, grant: TokenGrant, now: int, binding: Binding
    ) -> Result:
        """An RFC 9068 JWT access token, recorded by digest and jti like an opaque one."""
        if not grant.aud:
            # RFC 9068 §2.2: aud is REQUIRED; a JWT for nobody in particular is refused.
            raise InvalidTarget(
                "a JWT access token needs an audience: send resource, or give the client a "
                "default audience"
            )
        signer = await self.signing.signer()
        draft = _access_token_record(client, grant, now, b"", binding)  # hash set once signed
        value = sign_access_token(draft, issuer=self.issuer, signer=signer)
        record = replace(draft, token_hash=token_hash(value))
        # We signed these very bytes: this process need not verify them at introspection.
        self.signing.ring.remember(record.token_hash, signer.kid)
        # The key stays published until this token expires (rounded up; see the migration).
        await self.store.insert_jwt_token(record, signer.kid, published_until(record.exp))
        self.metrics.tokens_issued.labels("client_credentials").inc()
        log.info(
            "token issued",
            extra={
                "client_id": client.client_id,
                "jti": record.jti,
                "scope": format_scope(grant.scope),
                "aud": list(grant.aud),
                "kid": signer.kid,
                "cnf_jkt": binding.jkt,
            },
        )
        return 200, token_response(value, grant.ttl, grant.scope, token_type=_type(binding))


def token_response(
    access_token: str,
    ttl: int,
    scope: frozenset[str],
    refresh_token: str | None = None,
    *,
    id_token: str | None = None,
    token_type: str = "Bearer",  # noqa: S107 - a token type name, not a secret
) -> dict[str, Any]:
    """RFC 6749 §5.1: the successful token response (scope only when there is one), with
    an ID token for OpenID Connect (OIDC Core §3.1.3.3); ``token_type`` is ``DPoP`` for a
    DPoP-bound access token (RFC 9449 §5.1)."""
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": token_type,
        "expires_in": ttl,
    }
    if scope:
        body["scope"] = format_scope(scope)
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    if id_token is not None:
        body["id_token"] = id_token
    return body


def _type(binding: Binding) -> str:
    return "DPoP" if binding.jkt is not None else "Bearer"


def _bound(record: TokenRecord, binding: Binding) -> TokenRecord:
    """``record`` bound to the sender's key (RFC 9449 §6), or as it is for a bearer token."""
    if binding.jkt is None and binding.x5t is None:
        return record
    return replace(record, cnf_jkt=binding.jkt, cnf_x5t=binding.x5t)


def _access_token_record(
    client: Client, grant: TokenGrant, now: int, digest: bytes, binding: Binding
) -> TokenRecord:
    """What an access token from the client_credentials grant carries, opaque or JWT."""
    record = new_token_record(
        "access_token",
        client.client_id,
        grant.scope,
        grant.aud,
        now=now,
        exp=now + grant.ttl,
        digest=digest,
        sub=client.client_id,  # client_credentials: the client acts for itself
    )
    return _bound(record, binding)
