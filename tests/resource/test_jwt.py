"""JWT access tokens (RFC 9068) validated locally by the SDK, against a real HTTP server.

The keys are made here and tokens are signed with ``cryptography`` directly, not with
joserfc (which the code under test uses), so a shared bug cannot cancel itself out. The
issuer is a small Starlette app under uvicorn on a loopback port: RFC 8414 metadata, a JWKS
the tests change (rotation), RFC 7662 introspection and an SSE revocation stream.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from keystile.errors import IntrospectionUnavailable, InvalidToken
from keystile.resource import TokenValidator
from keystile.resource.jwt import JWTValidator, looks_like_jwt, metadata_url
from keystile.resource.principal import Principal
from keystile.resource.revoked import RevokedTokens

API = "https://api.example.test"
DROP = object()  # a claim or header member to leave out


# -- keys and tokens, with cryptography only ----------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_bytes(n: int, size: int) -> bytes:
    return n.to_bytes(size, "big")


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK (RFC 7517, RFC 7518 §6)."""
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            n = public.public_numbers()
            xy = {"x": b64url(_int_bytes(n.x, 32)), "y": b64url(_int_bytes(n.y, 32))}
            return {"kty": "EC", "crv": "P-256", **xy, "kid": self.kid, "use": "sig"}
        assert isinstance(public, rsa.RSAPublicKey)
        rn = public.public_numbers()
        return {
            "kty": "RSA",
            "n": b64url(_int_bytes(rn.n, (rn.n.bit_length() + 7) // 8)),
            "e": b64url(_int_bytes(rn.e, 3)),
            "kid": self.kid,
            "alg": "RS256",
            "use": "sig",
        }

    def raw_sign(self, signing_input: bytes) -> bytes:
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            der = self.private.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = utils.decode_dss_signature(der)
            return _int_bytes(r, 32) + _int_bytes(s, 32)  # RFC 7518 §3.4: R || S
        return self.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        """A compact JWS (RFC 7515 §7.1); header members given as DROP are left out."""
        head = {"typ": "at+jwt", "alg": self.alg, "kid": self.kid, **header}
        head = {k: v for k, v in head.items() if v is not DROP}
        signing_input = f"{b64url(json.dumps(head).encode())}.{b64url(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64url(self.raw_sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


# -- the issuer: a real HTTP server on loopback ---------------------------------------------------


@dataclass
class IssuerState:
    """What the fake issuer serves and counts; tests change it between calls."""

    url: str = ""
    keys: list[dict[str, str]] = field(default_factory=list)
    jwks_status: int = 200
    jwks_delay: float = 0.0
    jwks_fetches: int = 0
    metadata_fetches: int = 0
    introspections: int = 0
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    closing: bool = False


def issuer_app(state: IssuerState) -> Starlette:
    async def metadata(request: Request) -> JSONResponse:
        state.metadata_fetches += 1
        return JSONResponse(
            {
                "issuer": state.url,
                "jwks_uri": f"{state.url}/jwks",
                "introspection_endpoint": f"{state.url}/introspect",
                "keystile_events_endpoint": f"{state.url}/events",
            }
        )

    async def jwks(request: Request) -> Response:
        state.jwks_fetches += 1
        if state.jwks_delay:
            await asyncio.sleep(state.jwks_delay)
        if state.jwks_status != 200:
            return JSONResponse({"error": "unavailable"}, status_code=state.jwks_status)
        return JSONResponse({"keys": list(state.keys)})

    async def introspect(request: Request) -> JSONResponse:
        state.introspections += 1
        form = parse_qs((await request.body()).decode())
        assert request.headers.get("authorization", "").startswith("Basic ")
        return JSONResponse(state.answers.get(form["token"][0], {"active": False}))

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            sent = len(state.events)  # live position: no replay
            yield f"id: {sent}\nevent: ready\ndata: {{}}\n\n"
            while not state.closing:
                while sent < len(state.events):
                    kind, data = state.events[sent]
                    sent += 1
                    yield f"id: {sent}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
                await asyncio.sleep(0.005)

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(
        routes=[
            Route("/.well-known/oauth-authorization-server", metadata),
            Route("/jwks", jwks),
            Route("/introspect", introspect, methods=["POST"]),
            Route("/events", events),
        ]
    )


@pytest.fixture(scope="module")
def issuer_server() -> Iterator[IssuerState]:
    """The fake issuer under uvicorn in a thread, on a loopback socket bound here."""
    state = IssuerState()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(
        issuer_app(state),
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "issuer did not start"
        assert time.monotonic() < deadline, "issuer did not start in time"
        time.sleep(0.01)
    yield state
    state.closing = True
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def issuer(issuer_server: IssuerState, ec_key: SigningKey, rsa_key: SigningKey) -> IssuerState:
    """The issuer, reset for one test: both keys published, nothing counted."""
    state = issuer_server
    state.keys = [ec_key.jwk(), rsa_key.jwk()]
    state.jwks_status, state.jwks_delay = 200, 0.0
    state.jwks_fetches = state.metadata_fetches = state.introspections = 0
    state.answers.clear()
    return state


def claims_for(issuer: IssuerState, **overrides: Any) -> dict[str, Any]:
    """RFC 9068 §2.2 claims valid right now; an override of DROP leaves that claim out."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer.url,
        "exp": now + 300,
        "aud": API,
        "sub": "alice",
        "client_id": "app-1",
        "iat": now,
        "jti": uuid.uuid4().hex,
        "scope": "read write",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not DROP}


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def jwt_validator(issuer: IssuerState) -> AsyncIterator[JWTValidator]:
    v = JWTValidator(issuer=issuer.url, audience=API)
    yield v
    await v.close()


async def wait_until(predicate: Any, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# -- the checks of RFC 9068 §4 -------------------------------------------------------------------


class TestChecks:
    @pytest.mark.parametrize("key_name", ["ec_key", "rsa_key"])
    async def test_valid_token_is_accepted(
        self,
        key_name: str,
        request: pytest.FixtureRequest,
        issuer: IssuerState,
        jwt_validator: JWTValidator,
    ) -> None:
        """A well-formed ES256 or RS256 token yields the same Principal introspection would."""
        key: SigningKey = request.getfixturevalue(key_name)
        claims = claims_for(issuer, aud=[API, "https://other.test"])
        principal = await jwt_validator.validate(key.sign(claims))
        assert principal == Principal(
            sub="alice",
            client_id="app-1",
            username=None,
            scopes=frozenset({"read", "write"}),
            aud=(API, "https://other.test"),
            exp=claims["exp"],
            iat=claims["iat"],
            iss=issuer.url,
            jti=claims["jti"],
            claims=claims,
        )
        assert issuer.metadata_fetches == 1
        assert issuer.jwks_fetches == 1

    async def test_media_type_form_of_typ_is_accepted(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """``typ`` may be the full media type, in any case (RFC 9068 §4, RFC 7515 §4.1.9)."""
        token = ec_key.sign(claims_for(issuer), typ="Application/AT+JWT")
        assert (await jwt_validator.validate(token)).sub == "alice"

    @pytest.mark.parametrize("typ", ["JWT", "jwt", DROP, 7])
    async def test_wrong_typ_is_rejected(
        self, typ: Any, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """A token whose header does not say at+jwt is refused (RFC 9068 §4, bullet 1)."""
        with pytest.raises(InvalidToken, match=r"\(typ\)"):
            await jwt_validator.validate(ec_key.sign(claims_for(issuer), typ=typ))

    async def test_alg_none_is_rejected(
        self, issuer: IssuerState, jwt_validator: JWTValidator
    ) -> None:
        """An unsigned token (alg none, empty signature) is refused (RFC 9068 §4)."""
        head = b64url(json.dumps({"typ": "at+jwt", "alg": "none"}).encode())
        body = b64url(json.dumps(claims_for(issuer)).encode())
        token = f"{head}.{body}."
        assert looks_like_jwt(token)
        with pytest.raises(InvalidToken, match="algorithm is not accepted"):
            await jwt_validator.validate(token)

    @pytest.mark.parametrize("secret_form", ["pem", "jwk"])
    async def test_hs256_keyed_with_the_public_key_is_rejected(
        self,
        secret_form: str,
        issuer: IssuerState,
        rsa_key: SigningKey,
        jwt_validator: JWTValidator,
    ) -> None:
        """The algorithm-confusion attack (HS256 with the public key as secret) is refused."""
        public = rsa_key.private.public_key()
        secret = (
            public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if secret_form == "pem"
            else json.dumps(rsa_key.jwk()).encode()
        )
        head = b64url(json.dumps({"typ": "at+jwt", "alg": "HS256", "kid": "rsa-1"}).encode())
        body = b64url(json.dumps(claims_for(issuer)).encode())
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        with pytest.raises(InvalidToken, match="algorithm is not accepted"):
            await jwt_validator.validate(f"{head}.{body}.{b64url(mac)}")

    @pytest.mark.parametrize("alg", ["none", "HS256", "HS512"])
    def test_symmetric_or_no_algorithm_cannot_be_allowed(
        self, alg: str, issuer: IssuerState
    ) -> None:
        """Configuring none or an HMAC algorithm is refused at construction."""
        with pytest.raises(ValueError, match="none and HMAC are refused"):
            JWTValidator(issuer=issuer.url, audience=API, algorithms={"ES256", alg})

    async def test_alg_outside_the_allow_list_is_rejected(
        self, issuer: IssuerState, rsa_key: SigningKey
    ) -> None:
        """A correctly signed RS256 token is refused when only ES256 is allowed."""
        async with JWTValidator(issuer=issuer.url, audience=API, algorithms={"ES256"}) as v:
            with pytest.raises(InvalidToken, match="algorithm is not accepted"):
                await v.validate(rsa_key.sign(claims_for(issuer)))

    async def test_tampered_payload_is_rejected(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """A payload changed after signing (more scope) fails the signature check."""
        head, _, sig = ec_key.sign(claims_for(issuer, scope="read")).split(".")
        forged = b64url(json.dumps(claims_for(issuer, scope="read admin")).encode())
        with pytest.raises(InvalidToken, match="signature does not verify"):
            await jwt_validator.validate(f"{head}.{forged}.{sig}")

    async def test_signature_by_another_key_with_a_known_kid_is_rejected(
        self, issuer: IssuerState, jwt_validator: JWTValidator
    ) -> None:
        """A token signed by an attacker's key that claims the issuer's kid is refused."""
        intruder = SigningKey.ec("ec-1")
        with pytest.raises(InvalidToken, match="signature does not verify"):
            await jwt_validator.validate(intruder.sign(claims_for(issuer)))

    async def test_kid_of_the_wrong_key_type_is_rejected(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """An ES256 token naming the issuer's RSA key finds no usable key."""
        with pytest.raises(InvalidToken, match="no key of the issuer"):
            await jwt_validator.validate(ec_key.sign(claims_for(issuer), kid="rsa-1"))

    async def test_wrong_issuer_is_rejected(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """``iss`` must be exactly the issuer (RFC 9068 §4), not merely similar."""
        for iss in ("https://evil.example", issuer.url + "/"):
            with pytest.raises(InvalidToken, match="another issuer"):
                await jwt_validator.validate(ec_key.sign(claims_for(issuer, iss=iss)))

    @pytest.mark.parametrize("aud", ["https://other.test", ["https://a.test", "https://b.test"]])
    async def test_wrong_audience_is_rejected(
        self, aud: Any, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """A token whose ``aud`` does not contain our identifier is refused (RFC 9068 §4)."""
        with pytest.raises(InvalidToken, match="not meant for this resource"):
            await jwt_validator.validate(ec_key.sign(claims_for(issuer, aud=aud)))

    async def test_expired_token_is_rejected(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """A token past ``exp`` is refused, with no leeway (RFC 7519 §4.1.4)."""
        now = int(time.time())
        token = ec_key.sign(claims_for(issuer, iat=now - 600, exp=now - 1))
        with pytest.raises(InvalidToken, match="expired"):
            await jwt_validator.validate(token)

    async def test_nbf_in_the_future_is_rejected(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """A token not valid before a time beyond the leeway is refused (RFC 7519 §4.1.5)."""
        now = int(time.time())
        with pytest.raises(InvalidToken, match="not valid yet"):
            await jwt_validator.validate(ec_key.sign(claims_for(issuer, nbf=now + 300)))
        # Within the leeway (30 s by default), clock skew is tolerated.
        assert await jwt_validator.validate(ec_key.sign(claims_for(issuer, nbf=now + 10)))

    async def test_iat_in_the_future_is_rejected(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """A token issued beyond the leeway in the future is refused."""
        now = int(time.time())
        with pytest.raises(InvalidToken, match="issued in the future"):
            await jwt_validator.validate(
                ec_key.sign(claims_for(issuer, iat=now + 300, exp=now + 600))
            )

    @pytest.mark.parametrize("claim", ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"])
    async def test_missing_required_claim_is_rejected(
        self, claim: str, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """Each claim RFC 9068 §2.2 requires must be present."""
        with pytest.raises(InvalidToken, match=f"lacks required claims: {claim}$"):
            await jwt_validator.validate(ec_key.sign(claims_for(issuer, **{claim: DROP})))

    @pytest.mark.parametrize(
        "overrides",
        [{"exp": "soon"}, {"iat": True}, {"sub": 42}, {"scope": ["read"]}, {"aud": [API, 1]}],
    )
    async def test_malformed_claim_is_rejected(
        self,
        overrides: dict[str, Any],
        issuer: IssuerState,
        ec_key: SigningKey,
        jwt_validator: JWTValidator,
    ) -> None:
        """Claims of the wrong JSON type fail closed instead of being coerced."""
        with pytest.raises(InvalidToken, match="malformed"):
            await jwt_validator.validate(ec_key.sign(claims_for(issuer, **overrides)))

    @pytest.mark.parametrize("token", ["abc.def", "a.b.c.d", "!!!.e30.", "e30.e30.e30"])
    async def test_garbage_is_rejected(self, token: str, jwt_validator: JWTValidator) -> None:
        """Strings that are not a JWS compact serialization with a JSON header are refused."""
        with pytest.raises(InvalidToken):
            await jwt_validator.validate(token)


# -- the key set ---------------------------------------------------------------------------------


class TestKeySet:
    async def test_keys_are_fetched_once_and_cached(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """Many validations make one metadata read and one JWKS fetch."""
        for _ in range(20):
            await jwt_validator.validate(ec_key.sign(claims_for(issuer)))
        assert (issuer.metadata_fetches, issuer.jwks_fetches) == (1, 1)

    async def test_unknown_kid_triggers_one_refresh(
        self, issuer: IssuerState, ec_key: SigningKey
    ) -> None:
        """A token naming a key published after our fetch is accepted after one refetch."""
        clock = FakeMonotonic()
        async with JWTValidator(issuer=issuer.url, audience=API, monotonic=clock) as v:
            await v.validate(ec_key.sign(claims_for(issuer)))
            new = SigningKey.ec("ec-2")
            issuer.keys.append(new.jwk())
            clock.now += 30  # the previous fetch is refresh_interval old
            assert (await v.validate(new.sign(claims_for(issuer)))).sub == "alice"
            assert issuer.jwks_fetches == 2
            assert issuer.metadata_fetches == 1  # jwks_uri is remembered

    async def test_flood_of_unknown_kids_is_rate_limited(
        self, issuer: IssuerState, ec_key: SigningKey
    ) -> None:
        """Made-up kids, concurrent or not, cause at most one JWKS fetch per interval."""
        clock = FakeMonotonic()
        async with JWTValidator(
            issuer=issuer.url, audience=API, refresh_interval=30, monotonic=clock
        ) as v:
            await v.validate(ec_key.sign(claims_for(issuer)))
            assert issuer.jwks_fetches == 1
            clock.now += 31
            forged = [ec_key.sign(claims_for(issuer), kid=f"x{i}") for i in range(50)]
            results = await asyncio.gather(*(v.validate(t) for t in forged), return_exceptions=True)
            assert all(isinstance(r, InvalidToken) for r in results), results
            for token in forged:
                with pytest.raises(InvalidToken, match="no key of the issuer"):
                    await v.validate(token)
            assert issuer.jwks_fetches == 2
            clock.now += 29
            with pytest.raises(InvalidToken):
                await v.validate(forged[0])
            assert issuer.jwks_fetches == 2
            clock.now += 2
            with pytest.raises(InvalidToken):
                await v.validate(forged[0])
            assert issuer.jwks_fetches == 3
            # Known keys never wait for, nor cause, a fetch.
            await v.validate(ec_key.sign(claims_for(issuer)))
            assert issuer.jwks_fetches == 3

    async def test_key_rotation(self, issuer: IssuerState, ec_key: SigningKey) -> None:
        """After the AS swaps its key, new tokens verify and the retired key stops working."""
        clock = FakeMonotonic()
        async with JWTValidator(issuer=issuer.url, audience=API, monotonic=clock) as v:
            await v.validate(ec_key.sign(claims_for(issuer)))
            successor = SigningKey.ec("ec-next")
            issuer.keys = [successor.jwk()]  # ec-1 retired and withdrawn
            clock.now += 60
            assert (await v.validate(successor.sign(claims_for(issuer)))).sub == "alice"
            with pytest.raises(InvalidToken, match="no key of the issuer"):
                await v.validate(ec_key.sign(claims_for(issuer)))
            assert issuer.jwks_fetches == 2

    async def test_key_set_older_than_max_age_is_refetched(
        self, issuer: IssuerState, ec_key: SigningKey
    ) -> None:
        """A withdrawn key stops working once the cached set is older than max_age."""
        clock = FakeMonotonic()
        async with JWTValidator(issuer=issuer.url, audience=API, max_age=600, monotonic=clock) as v:
            await v.validate(ec_key.sign(claims_for(issuer)))
            issuer.keys = [k for k in issuer.keys if k["kid"] != "ec-1"]
            clock.now += 599
            await v.validate(ec_key.sign(claims_for(issuer)))
            clock.now += 2
            with pytest.raises(InvalidToken, match="no key of the issuer"):
                await v.validate(ec_key.sign(claims_for(issuer)))
            assert issuer.jwks_fetches == 2

    async def test_concurrent_first_validations_share_one_fetch(
        self, issuer: IssuerState, ec_key: SigningKey, jwt_validator: JWTValidator
    ) -> None:
        """50 validations racing a slow first JWKS fetch make one fetch (single-flight)."""
        issuer.jwks_delay = 0.2
        tokens = [ec_key.sign(claims_for(issuer)) for _ in range(50)]
        results = await asyncio.gather(*(jwt_validator.validate(t) for t in tokens))
        assert {p.sub for p in results} == {"alice"}
        assert issuer.jwks_fetches == 1

    async def test_unreachable_key_set_is_unavailable_not_invalid(
        self, issuer: IssuerState, ec_key: SigningKey
    ) -> None:
        """Without any keys, a JWKS error fails closed as IntrospectionUnavailable (503)."""
        issuer.jwks_status = 500
        clock = FakeMonotonic()
        async with JWTValidator(issuer=issuer.url, audience=API, monotonic=clock) as v:
            token = ec_key.sign(claims_for(issuer))
            for _ in range(3):
                with pytest.raises(IntrospectionUnavailable):
                    await v.validate(token)
            assert issuer.jwks_fetches == 1  # failures are rate-limited too (1 s)
            issuer.jwks_status = 200
            clock.now += 1.5
            assert (await v.validate(token)).sub == "alice"

    async def test_explicit_jwks_needs_no_server(self, ec_key: SigningKey) -> None:
        """Keys given as a JWKS are used as they are, with no discovery."""
        async with JWTValidator(
            issuer="https://as.test", audience=API, jwks={"keys": [ec_key.jwk()]}
        ) as v:
            token = ec_key.sign(claims_for(IssuerState(url="https://as.test")))
            assert (await v.validate(token)).client_id == "app-1"
            with pytest.raises(InvalidToken, match="no key"):
                await v.validate(
                    ec_key.sign(claims_for(IssuerState(url="https://as.test")), kid="z")
                )

    def test_metadata_url_for_an_issuer_with_a_path(self) -> None:
        """The well-known segment goes between host and path (RFC 8414 §3.1)."""
        assert metadata_url("https://as.test/tenant/1") == (
            "https://as.test/.well-known/oauth-authorization-server/tenant/1"
        )
        assert metadata_url("https://as.test") == (
            "https://as.test/.well-known/oauth-authorization-server"
        )

    def test_joserfc_is_imported_lazily(self) -> None:
        """Importing the SDK, JWT module included, does not import joserfc (an extra)."""
        code = (
            "import sys, keystile.resource, keystile.resource.jwt;"
            "print([m for m in sys.modules if m.startswith('joserfc')])"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]"

    def test_missing_extra_names_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without joserfc, constructing a JWTValidator names the package and the jwt extra."""
        monkeypatch.setitem(sys.modules, "joserfc", None)
        monkeypatch.setitem(sys.modules, "joserfc.jws", None)
        with pytest.raises(
            ImportError,
            match=r"needs joserfc \(keystile's jwt extra\): pip install 'joserfc>=1\.8'",
        ):
            JWTValidator(issuer="https://as.test", audience=API)


# -- inside TokenValidator: routing, realtime, revocation events -----------------------------------


@pytest.fixture
async def validator(issuer: IssuerState) -> AsyncIterator[TokenValidator]:
    """A TokenValidator with local JWT validation and the issuer's event stream, connected."""
    v = TokenValidator(
        issuer=issuer.url, client_id="rs", client_secret="rs-secret", audience=API, jwt=True
    )
    await v.start()
    await asyncio.wait_for(v.stream.connected.wait(), 5)
    yield v
    await v.close()


class TestTokenValidator:
    async def test_jwt_is_validated_locally_and_cached(
        self, issuer: IssuerState, ec_key: SigningKey, validator: TokenValidator
    ) -> None:
        """A JWT makes no introspection call, and its result is cached under SHA-256(token)."""
        token = ec_key.sign(claims_for(issuer))
        first = await validator.validate(token)
        assert validator.cached(token) == first
        assert await validator.validate(token) is first
        assert (issuer.introspections, validator.introspections) == (0, 0)

    async def test_opaque_token_is_introspected(
        self, issuer: IssuerState, validator: TokenValidator
    ) -> None:
        """A token that is not three base64url segments goes to the introspection endpoint."""
        issuer.answers["ks_at_opaque"] = {"active": True, "sub": "bob", "aud": API}
        assert (await validator.validate("ks_at_opaque")).sub == "bob"
        assert issuer.introspections == 1

    async def test_without_jwt_configured_a_jwt_is_introspected(
        self, issuer: IssuerState, ec_key: SigningKey
    ) -> None:
        """With no JWT validation configured, a JWT is just another token to introspect."""
        token = ec_key.sign(claims_for(issuer))
        issuer.answers[token] = {"active": True, "sub": "carol", "aud": API}
        async with TokenValidator(
            issuer=issuer.url, client_id="rs", client_secret="s", events=False
        ) as v:
            assert (await v.validate(token)).sub == "carol"
        assert (issuer.introspections, issuer.jwks_fetches) == (1, 0)

    async def test_realtime_introspects_even_a_jwt(
        self, issuer: IssuerState, ec_key: SigningKey, validator: TokenValidator
    ) -> None:
        """``realtime=True`` asks the AS, whose "inactive" wins over a valid signature."""
        token = ec_key.sign(claims_for(issuer))
        await validator.validate(token)
        assert issuer.introspections == 0
        issuer.answers[token] = {"active": False}  # revoked, say, with no event seen
        with pytest.raises(InvalidToken, match="not active"):
            await validator.validate(token, realtime=True)
        assert issuer.introspections == 1
        # The AS's fresher answer replaced the cached local result.
        with pytest.raises(InvalidToken):
            await validator.validate(token)
        assert issuer.introspections == 1

    async def test_realtime_answer_for_an_active_jwt(
        self, issuer: IssuerState, ec_key: SigningKey, validator: TokenValidator
    ) -> None:
        """``realtime=True`` on an active JWT returns the introspection answer, every time."""
        token = ec_key.sign(claims_for(issuer))
        issuer.answers[token] = {"active": True, "sub": "alice", "aud": API, "scope": "read"}
        for n in (1, 2):
            principal = await validator.validate(token, realtime=True)
            assert principal.scopes == frozenset({"read"})
            assert issuer.introspections == n

    async def test_revoked_jwt_is_rejected_while_cached(
        self, issuer: IssuerState, ec_key: SigningKey, validator: TokenValidator
    ) -> None:
        """A token_revoked event evicts a cached JWT and keeps it refused, though its
        signature stays valid until exp."""
        claims = claims_for(issuer)
        token = ec_key.sign(claims)
        await validator.validate(token)
        issuer.events.append(
            (
                "token_revoked",
                {
                    "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "jti": claims["jti"],
                    "exp": claims["exp"],
                },
            )
        )
        await wait_until(lambda: len(validator.cache) == 0)
        for _ in range(2):
            with pytest.raises(InvalidToken, match="not active"):
                await validator.validate(token)
        assert issuer.introspections == 0
        other = ec_key.sign(claims_for(issuer))
        assert (await validator.validate(other)).sub == "alice"

    async def test_revocation_by_jti_alone(
        self, issuer: IssuerState, ec_key: SigningKey, validator: TokenValidator
    ) -> None:
        """An event naming only the jti (as for a JWT revoked by cascade) refuses the token."""
        claims = claims_for(issuer)
        token = ec_key.sign(claims)
        await validator.validate(token)
        issuer.events.append(("token_revoked", {"jti": claims["jti"], "exp": claims["exp"]}))
        await wait_until(lambda: len(validator.cache) == 0)
        with pytest.raises(InvalidToken, match="not active"):
            await validator.validate(token)

    async def test_client_disabled_refuses_its_earlier_jwts(
        self, issuer: IssuerState, ec_key: SigningKey, validator: TokenValidator
    ) -> None:
        """client_disabled refuses that client's JWTs issued until then, not later ones."""
        now = int(time.time())
        before = ec_key.sign(claims_for(issuer, iat=now - 5))
        bystander = ec_key.sign(claims_for(issuer, iat=now - 5, client_id="app-2"))
        await validator.validate(before)
        issuer.events.append(("client_disabled", {"client_id": "app-1", "iat": now - 1}))
        await wait_until(lambda: validator.stream.applied >= 2)
        with pytest.raises(InvalidToken, match="not active"):
            await validator.validate(before)
        assert (await validator.validate(bystander)).client_id == "app-2"
        after = ec_key.sign(claims_for(issuer, iat=now))
        assert (await validator.validate(after)).client_id == "app-1"

    async def test_revocation_during_the_key_fetch_wins(
        self, issuer: IssuerState, ec_key: SigningKey
    ) -> None:
        """A revocation recorded while the JWKS is being fetched is honoured, not cached over."""
        issuer.jwks_delay = 0.2
        claims = claims_for(issuer)
        token = ec_key.sign(claims)
        async with TokenValidator(
            issuer=issuer.url,
            client_id="rs",
            client_secret="s",
            audience=API,
            jwt=True,
            events=False,
        ) as v:
            pending = asyncio.create_task(v.validate(token))
            await wait_until(lambda: issuer.jwks_fetches == 1)
            v.revoked.token_revoked({"jti": claims["jti"], "exp": claims["exp"]})
            with pytest.raises(InvalidToken, match="not active"):
                await pending
            assert len(v.cache) == 0

    def test_jwt_true_needs_an_audience(self) -> None:
        """Local validation without an audience to check is refused (RFC 9068 §4)."""
        with pytest.raises(ValueError, match="audience"):
            TokenValidator(issuer="https://as.test", client_id="rs", client_secret="s", jwt=True)


class TestRevokedTokens:
    def test_records_expire_with_the_token(self) -> None:
        """A revocation record is dropped once the token's exp has passed."""
        now = [1000.0]
        revoked = RevokedTokens(wall=lambda: now[0])
        principal = Principal("s", "c", None, frozenset(), (), 1100, iat=900, jti="j1")
        revoked.token_revoked({"jti": "j1", "exp": 1100})
        assert revoked.is_revoked(b"k", principal)
        now[0] = 1100.0
        assert not revoked.is_revoked(b"k", principal)
        assert len(revoked) == 0

    def test_bounded(self) -> None:
        """The set never holds more than max_entries, dropping expired records first."""
        now = [1000.0]
        revoked = RevokedTokens(max_entries=3, wall=lambda: now[0])
        revoked.token_revoked({"jti": "short", "exp": 1001})
        for i in range(2):
            revoked.token_revoked({"jti": f"j{i}", "exp": 5000})
        now[0] = 1002.0
        revoked.token_revoked({"jti": "j2", "exp": 5000})
        revoked.token_revoked({"jti": "j3", "exp": 5000})
        assert len(revoked) == 3
        alive = {
            j
            for j in ("j0", "j1", "j2", "j3")
            if revoked.is_revoked(b"", Principal(None, None, None, frozenset(), (), None, jti=j))
        }
        assert alive == {"j1", "j2", "j3"}
