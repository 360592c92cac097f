"""JWT access tokens (RFC 9068) validated locally, against the keys the AS publishes (JWKS).

    jwt = JWTValidator(issuer="https://auth.example.com", audience="https://api.example.com")
    principal = await jwt.validate(token)              # raises InvalidToken

The checks of RFC 9068 §4: the header's ``typ`` is ``at+jwt``; ``alg`` is in an allow-list of
asymmetric algorithms; the signature verifies with the issuer's key named by ``kid``; ``iss``
is exactly the issuer; ``aud`` contains our audience; ``exp`` has not passed; ``nbf`` and
``iat`` are not in the future (beyond ``leeway``); and ``iss exp aud sub client_id iat jti``
are all present.

The key set (RFC 7517) is read from the ``jwks_uri`` of the AS metadata (RFC 8414 §2), from
an explicit ``jwks_uri``, or given as ``jwks``. It is cached. A ``kid`` we do not know (the AS
may have rotated its keys) makes one refetch, at most once per ``refresh_interval`` and shared
by concurrent callers, so a flood of made-up ``kid`` values is not a flood of fetches; a set
older than ``max_age`` is refetched. Needs the ``jwt`` extra (joserfc).

Local validation cannot see a revocation by itself: ``TokenValidator`` pairs it with the
revocation event stream (``revoked.py``), or introspects when a route asks for ``realtime``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import httpx

from keystile.errors import IntrospectionUnavailable, InvalidToken
from keystile.resource.principal import Principal

if TYPE_CHECKING:
    from joserfc.jwk import Key
    from joserfc.jws import JWSRegistry

log = logging.getLogger("keystile.resource")

MISSING_EXTRA = (
    "validating JWT access tokens needs joserfc (keystile's jwt extra): pip install 'joserfc>=1.8'"
)

# alg -> the key type (kty) it needs. Asymmetric algorithms only: the JWKS is public, so an
# HMAC algorithm would let anyone holding the "public key as secret" forge tokens.
KEY_TYPES: Mapping[str, str] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "ES256K": "EC",
    "Ed25519": "OKP",
    "Ed448": "OKP",
    "EdDSA": "OKP",
}
# RS256 must be supported (RFC 9068 §4). "EdDSA" is left for callers to opt into, being
# deprecated in favour of "Ed25519" by RFC 9864.
DEFAULT_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "Ed25519"}
)
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")  # RFC 9068 §2.2
JWT_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §2.1; case-insensitive
METADATA_PATH = "/.well-known/oauth-authorization-server"
FAILED_FETCH_RETRY = 1.0  # seconds before trying again after a failed JWKS fetch
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments: a JWS compact serialization (RFC 7515 §7.1), not opaque."""
    return token.count(".") == 2 and _JWT_SHAPE.fullmatch(token) is not None


def metadata_url(issuer: str) -> str:
    """Where an issuer publishes its metadata (RFC 8414 §3.1: before the issuer's path)."""
    parts = urlsplit(issuer)
    return urlunsplit((parts.scheme, parts.netloc, METADATA_PATH + parts.path.rstrip("/"), "", ""))


class JWTValidator:
    """Validates RFC 9068 JWT access tokens locally, with a cached, self-refreshing JWKS."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_uri: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        metadata_url: str | None = None,
        algorithms: Collection[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        refresh_interval: float = 30.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
        http: httpx.AsyncClient | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            from joserfc.jws import JWSRegistry
        except ImportError as exc:
            raise ImportError(MISSING_EXTRA) from exc
        unusable = sorted(set(algorithms) - set(KEY_TYPES))
        if unusable:
            raise ValueError(
                f"not asymmetric signature algorithms (none and HMAC are refused): {unusable}"
            )
        if not algorithms:
            raise ValueError("give at least one signature algorithm")
        if not audience:
            raise ValueError("RFC 9068 §4: the audience this resource server answers to")
        self.issuer = issuer
        self.audience = audience
        self.jwks_uri = jwks_uri
        self.metadata_url = metadata_url
        self.algorithms = frozenset(algorithms)
        self.leeway = leeway
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self._wall = wall
        self._monotonic = monotonic
        self._registry: JWSRegistry = JWSRegistry(
            algorithms=sorted(self.algorithms), strict_check_header=False
        )
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)), trust_env=False
        )
        self._by_kid: dict[str, list[Key]] = {}
        self._keys: list[Key] = []
        self._loaded_at: float | None = None
        self._static = jwks is not None
        self._next_fetch = -math.inf
        self._fetching: asyncio.Task[IntrospectionUnavailable | None] | None = None
        self._last_error = "the issuer's keys have not been fetched"
        self.fetches = 0  # JWKS fetches attempted, for tests and metrics
        if jwks is not None:
            self._install(jwks)

    async def close(self) -> None:
        fetching = self._fetching
        if fetching is not None:
            fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetching
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> JWTValidator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- validation -------------------------------------------------------------------------

    async def validate(self, token: str) -> Principal:
        """The principal of a valid JWT access token; InvalidToken otherwise.

        Raises IntrospectionUnavailable when the issuer's keys cannot be fetched at all.
        """
        if not looks_like_jwt(token):
            raise InvalidToken("the access token is not a well-formed JWT")
        header = _segment_json(token.split(".", 1)[0], "header")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in JWT_TYPES:
            raise InvalidToken("the access token is not an RFC 9068 JWT (typ)")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("the access token's signature algorithm is not accepted")
        if "crit" in header:
            # RFC 7515 §4.1.11: extensions we do not understand make the JWS invalid.
            raise InvalidToken("the access token needs header extensions we do not support")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("the access token is not a well-formed JWT")
        keys = await self._keys_for(kid, alg)
        claims = _payload_json(self._verify(token, alg, keys))
        return principal_from_claims(
            claims,
            issuer=self.issuer,
            audience=self.audience,
            now=self._wall(),
            leeway=self.leeway,
        )

    def _verify(self, token: str, alg: str, keys: list[Key]) -> bytes:
        from joserfc.errors import JoseError
        from joserfc.jws import deserialize_compact

        if not keys:
            raise InvalidToken("no key of the issuer matches the access token")
        for key in keys:
            try:
                obj = deserialize_compact(token, key, algorithms=[alg], registry=self._registry)
            except (JoseError, ValueError):
                continue
            assert obj.payload is not None
            return obj.payload
        raise InvalidToken("the access token's signature does not verify")

    # -- the key set --------------------------------------------------------------------------

    async def _keys_for(self, kid: str | None, alg: str) -> list[Key]:
        if not self._static:
            if self._loaded_at is None or self._monotonic() - self._loaded_at >= self.max_age:
                await self.refresh()
            if kid is not None and kid not in self._by_kid:
                await self.refresh()  # the AS may have rotated its keys since we fetched
        kty = KEY_TYPES[alg]
        candidates = self._by_kid.get(kid, []) if kid is not None else self._keys
        return [k for k in candidates if k.key_type == kty and k.alg in (None, alg)]

    async def refresh(self) -> None:
        """Fetch the key set again, unless fetched within ``refresh_interval``.

        Concurrent callers share one fetch. A failed fetch keeps the keys we had; with none
        at all, it raises IntrospectionUnavailable (fail closed, and honest).
        """
        if self._static:
            return
        task = self._fetching
        if task is None:
            now = self._monotonic()
            if now < self._next_fetch:
                if self._loaded_at is None:
                    raise IntrospectionUnavailable(self._last_error)
                return  # rate-limited: keep the keys we have
            # Set before the first await, so callers arriving meanwhile join this fetch.
            self._next_fetch = now + self.refresh_interval
            task = self._fetching = asyncio.create_task(self._fetch(), name="keystile-jwks")
        # The fetch is its own task: a caller cancelled mid-fetch does not cancel it for all.
        error = await asyncio.shield(task)
        if error is not None and self._loaded_at is None:
            raise IntrospectionUnavailable(str(error))

    async def _fetch(self) -> IntrospectionUnavailable | None:
        self.fetches += 1
        try:
            if self.jwks_uri is None:
                self.jwks_uri = await self._discover()
            r = await self.http.get(self.jwks_uri, headers={"accept": "application/json"})
            if r.status_code != 200:
                raise IntrospectionUnavailable(f"the JWKS answered HTTP {r.status_code}")
            self._install(r.json())
        except (httpx.HTTPError, ValueError, IntrospectionUnavailable) as exc:
            error = (
                exc
                if isinstance(exc, IntrospectionUnavailable)
                else IntrospectionUnavailable(f"cannot fetch the JWKS: {type(exc).__name__}")
            )
            self._last_error = str(error)
            self._next_fetch = min(self._next_fetch, self._monotonic() + FAILED_FETCH_RETRY)
            log.warning("JWKS fetch failed", extra={"error": str(error)})
            return error
        finally:
            self._fetching = None
        return None

    async def _discover(self) -> str:
        url = self.metadata_url or metadata_url(self.issuer)
        r = await self.http.get(url, headers={"accept": "application/json"})
        if r.status_code != 200:
            raise IntrospectionUnavailable(f"the AS metadata at {url} answered {r.status_code}")
        meta = r.json()
        # RFC 8414 §3.3: the metadata must name the issuer it was fetched for.
        if not isinstance(meta, dict) or str(meta.get("issuer", "")).rstrip(
            "/"
        ) != self.issuer.rstrip("/"):
            raise IntrospectionUnavailable(f"the AS metadata at {url} names another issuer")
        jwks_uri = meta.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IntrospectionUnavailable(f"the AS metadata at {url} has no jwks_uri")
        return jwks_uri

    def _install(self, jwks: Any) -> None:
        from joserfc.errors import JoseError
        from joserfc.jwk import JWKRegistry

        if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
            raise IntrospectionUnavailable("the JWKS has no 'keys' list")
        by_kid: dict[str, list[Key]] = {}
        keys: list[Key] = []
        for entry in jwks["keys"]:
            # Signing keys of an asymmetric type only; a symmetric key in a public set is
            # never usable for verification (and never should have been published).
            if (
                not isinstance(entry, Mapping)
                or entry.get("kty") not in ("RSA", "EC", "OKP")
                or entry.get("use", "sig") != "sig"
            ):
                continue
            public = {k: v for k, v in entry.items() if k not in _PRIVATE_MEMBERS}
            try:
                key = JWKRegistry.import_key(public)
            except (JoseError, ValueError, TypeError) as exc:
                log.warning("JWKS key skipped", extra={"kid": entry.get("kid"), "error": str(exc)})
                continue
            keys.append(key)
            if isinstance(key.kid, str):
                by_kid.setdefault(key.kid, []).append(key)
        self._by_kid, self._keys = by_kid, keys
        self._loaded_at = self._monotonic()


def principal_from_claims(
    claims: Mapping[str, Any], *, issuer: str, audience: str, now: float, leeway: float
) -> Principal:
    """The principal of an RFC 9068 payload whose signature has been checked (§4 checks).

    Raises InvalidToken naming what is wrong.
    """
    missing = [name for name in REQUIRED_CLAIMS if name not in claims]
    if missing:
        raise InvalidToken(f"the access token lacks required claims: {' '.join(missing)}")
    if claims["iss"] != issuer:
        raise InvalidToken("the access token is from another issuer")
    aud = claims["aud"]
    if isinstance(aud, str):
        auds: tuple[str, ...] = (aud,)
    elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        auds = tuple(aud)
    else:
        raise InvalidToken("the access token has a malformed aud claim")
    if audience not in auds:
        raise InvalidToken("the access token is not meant for this resource")
    exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf")
    if not _is_number(exp) or not _is_number(iat) or (nbf is not None and not _is_number(nbf)):
        raise InvalidToken("the access token has a malformed time claim")
    # No leeway on exp: the cache and the AS treat exp as a hard end too.
    if now >= exp:
        raise InvalidToken("the access token has expired")
    if nbf is not None and nbf > now + leeway:
        raise InvalidToken("the access token is not valid yet")
    if iat > now + leeway:
        raise InvalidToken("the access token was issued in the future")
    sub, client_id, jti = claims["sub"], claims["client_id"], claims["jti"]
    scope = claims.get("scope")
    if not (isinstance(sub, str) and isinstance(client_id, str) and isinstance(jti, str)):
        raise InvalidToken("the access token has a malformed sub, client_id or jti claim")
    if scope is not None and not isinstance(scope, str):
        raise InvalidToken("the access token has a malformed scope claim")
    username = claims.get("username")
    return Principal(
        sub=sub,
        client_id=client_id,
        username=username if isinstance(username, str) else None,
        scopes=frozenset(scope.split()) if scope else frozenset(),
        aud=auds,
        exp=math.floor(exp),
        iat=math.floor(iat),
        iss=issuer,
        jti=jti,
        claims=dict(claims),
    )


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except ValueError as exc:  # binascii.Error and JSONDecodeError are ValueErrors
        raise InvalidToken("the access token is not a well-formed JWT") from exc
    if not isinstance(value, dict):
        raise InvalidToken(f"the access token's {what} is not a JSON object")
    return value


def _payload_json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise InvalidToken("the access token's payload is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken("the access token's payload is not a JSON object")
    return value


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
