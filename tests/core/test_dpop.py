"""DPoP proof checks (keystile.core.dpop, RFC 9449 §4.3) and their state (core.dpop_state)."""

from __future__ import annotations

import base64
import json

import pytest

from keystile.core.dpop import (
    MAX_AGE,
    access_token_hash,
    jwk_thumbprint,
    normalize_htu,
    verify_proof,
)
from keystile.core.dpop_state import MemoryReplayCache, NonceSource
from keystile.errors import InvalidDpopProof, UseDpopNonce
from tests.dpop_support import DpopKey, ath

NOW = 1_800_000_000
URL = "https://as.example.test/oauth2/token"


@pytest.fixture(scope="module")
def key() -> DpopKey:
    return DpopKey("ES256")


def _check(proof: str, **kw: object) -> object:
    args: dict[str, object] = {"htm": "POST", "htu": URL, "now": NOW}
    args.update(kw)
    return verify_proof(proof, **args)  # type: ignore[arg-type]


def _b64(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class TestAccepted:
    @pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
    def test_each_algorithm(self, alg):
        """Proofs signed with ES256, RS256 and EdDSA verify and name their key's RFC 7638
        thumbprint as jkt (RFC 9449 §4.3, §6.1)."""
        k = DpopKey(alg)
        proof = verify_proof(k.proof("POST", URL, NOW), htm="POST", htu=URL, now=NOW)

        assert proof.jkt == k.jkt
        assert proof.htm == "POST"
        assert proof.iat == NOW

    def test_thumbprint_matches_hand_computed(self, key):
        """jwk_thumbprint is the RFC 7638 SHA-256 thumbprint, base64url."""
        assert jwk_thumbprint(key.public_jwk) == key.jkt

    def test_htu_without_query_and_fragment(self, key):
        """htu is compared without query and fragment (RFC 9449 §4.3 item 9)."""
        proof = key.proof("GET", "https://api.example.test/orders", NOW)

        verify_proof(proof, htm="GET", htu="https://api.example.test/orders?x=1#f", now=NOW)

    def test_htu_normalized(self, key):
        """Scheme and host case, default port and percent-encoding case are normalized
        (RFC 3986 §6.2.2, §6.2.3)."""
        proof = key.proof("GET", "HTTPS://API.Example.test:443/a%7eb/%2f", NOW)

        verify_proof(proof, htm="GET", htu="https://api.example.test/a~b/%2F", now=NOW)

    def test_iat_window_edges(self, key):
        """A proof MAX_AGE seconds old and one a few seconds ahead are accepted (§11.1)."""
        _check(key.proof("POST", URL, NOW - MAX_AGE))
        _check(key.proof("POST", URL, NOW + 5))

    def test_ath_checked_when_token_given(self, key):
        """With an access token, ath must be its SHA-256 (RFC 9449 §4.3 item 12)."""
        proof = _check(
            key.proof("GET", URL, NOW, access_token="tok"), htm="GET", access_token="tok"
        )

        assert proof.ath == ath("tok") == access_token_hash("tok")  # type: ignore[attr-defined]


class TestRefused:
    def test_garbage(self):
        """Something that is not a compact JWS is invalid_dpop_proof."""
        for value in ("", "a.b", "a.b.c", "x" * 9000):
            with pytest.raises(InvalidDpopProof):
                _check(value)

    def test_wrong_typ(self, key):
        """typ must be dpop+jwt (§4.3 item 4)."""
        with pytest.raises(InvalidDpopProof, match="typ"):
            _check(key.proof("POST", URL, NOW, header={"typ": "JWT"}))

    def test_no_jwk(self, key):
        """A proof without a jwk header is refused (§4.3 item 7)."""
        proof = key.proof("POST", URL, NOW)
        head, body, sig = proof.split(".")
        header = json.loads(base64.urlsafe_b64decode(head + "=="))
        del header["jwk"]
        with pytest.raises(InvalidDpopProof, match="jwk"):
            _check(".".join([_b64(header), body, sig]))

    def test_private_key_in_jwk(self, key):
        """A jwk with private members is refused (§4.3 item 7)."""
        jwk = {**key.public_jwk, "d": "AAAA"}
        with pytest.raises(InvalidDpopProof, match="public"):
            _check(key.proof("POST", URL, NOW, header={"jwk": jwk}))

    def test_hmac_and_none(self, key):
        """Symmetric algorithms and none are refused (§4.2)."""
        import jwt as pyjwt

        hs = pyjwt.encode(
            {"jti": "j", "htm": "POST", "htu": URL, "iat": NOW},
            "s" * 32,
            algorithm="HS256",
            headers={"typ": "dpop+jwt", "jwk": key.public_jwk},
        )
        none = (
            _b64({"alg": "none", "typ": "dpop+jwt", "jwk": key.public_jwk})
            + "."
            + _b64({"jti": "j", "htm": "POST", "htu": URL, "iat": NOW})
            + "."
        )
        for proof in (hs, none):
            with pytest.raises(InvalidDpopProof):
                _check(proof)

    def test_alg_not_fitting_key(self, key):
        """The alg must fit the jwk's key type."""
        rsa = DpopKey("RS256")
        with pytest.raises(InvalidDpopProof, match="fit"):
            _check(rsa.proof("POST", URL, NOW, header={"jwk": key.public_jwk}))

    def test_wrong_key_signature(self, key):
        """A proof carrying one key but signed by another fails the signature (§4.3 item 8)."""
        other = DpopKey("ES256")
        with pytest.raises(InvalidDpopProof, match="signature"):
            _check(other.proof("POST", URL, NOW, header={"jwk": key.public_jwk}))

    def test_tampered_payload(self, key):
        """A payload changed after signing fails the signature."""
        head, _, sig = key.proof("POST", URL, NOW).split(".")
        body = _b64({"jti": "x", "htm": "POST", "htu": URL, "iat": NOW})
        with pytest.raises(InvalidDpopProof, match="signature"):
            _check(f"{head}.{body}.{sig}")

    def test_wrong_htm(self, key):
        """htm must be the request's method (§4.3 item 9)."""
        with pytest.raises(InvalidDpopProof, match="htm"):
            _check(key.proof("GET", URL, NOW))

    @pytest.mark.parametrize(
        "htu",
        [
            "https://as.example.test/oauth2/introspect",
            "http://as.example.test/oauth2/token",
            "https://as.example.test:8443/oauth2/token",
            "https://evil.example.test/oauth2/token",
            "not a url",
        ],
    )
    def test_wrong_htu(self, key, htu):
        """htu must be the request's URL, scheme, host, port and path (§4.3 item 9)."""
        with pytest.raises(InvalidDpopProof, match="htu"):
            _check(key.proof("POST", htu, NOW))

    def test_stale_iat(self, key):
        """A proof older than the window is refused (§4.3 item 11)."""
        with pytest.raises(InvalidDpopProof, match="old"):
            _check(key.proof("POST", URL, NOW - MAX_AGE - 1))

    def test_future_iat(self, key):
        """A proof from the future (past the leeway) is refused."""
        with pytest.raises(InvalidDpopProof, match="future"):
            _check(key.proof("POST", URL, NOW + 60))

    @pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
    def test_missing_claim(self, key, claim):
        """jti, htm, htu and iat are required (§4.2)."""
        with pytest.raises(InvalidDpopProof):
            _check(key.proof("POST", URL, NOW, drop=(claim,)))

    def test_boolean_iat(self, key):
        """iat must be a number, not a boolean."""
        with pytest.raises(InvalidDpopProof, match="iat"):
            _check(key.proof("POST", URL, NOW, claims={"iat": True}))

    def test_wrong_or_missing_ath(self, key):
        """With an access token, a missing or different ath is refused (§4.3 item 12)."""
        with pytest.raises(InvalidDpopProof, match="ath"):
            _check(key.proof("GET", URL, NOW), htm="GET", access_token="tok")
        with pytest.raises(InvalidDpopProof, match="ath"):
            _check(key.proof("GET", URL, NOW, access_token="other"), htm="GET", access_token="tok")

    def test_short_rsa_key(self):
        """RSA keys under 2048 bits are refused."""
        from cryptography.hazmat.primitives.asymmetric import rsa

        k = DpopKey("RS256")
        k.private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
        with pytest.warns(UserWarning, match="1024 bits"):  # PyJWT warns when signing
            proof = k.proof("POST", URL, NOW)
        with pytest.raises(InvalidDpopProof):
            _check(proof)


class TestNonces:
    def test_nonce_required(self, key):
        """Without a nonce where one is required: use_dpop_nonce (RFC 9449 §8, §9)."""
        nonces = NonceSource(b"k" * 32)
        with pytest.raises(UseDpopNonce):
            _check(key.proof("POST", URL, NOW), nonce_ok=lambda n: nonces.is_current(n, NOW))

    def test_current_nonce_accepted(self, key):
        """A current nonce passes, and the proof reports it."""
        nonces = NonceSource(b"k" * 32)
        value = nonces.current(NOW)
        proof = _check(
            key.proof("POST", URL, NOW, nonce=value), nonce_ok=lambda n: nonces.is_current(n, NOW)
        )
        assert proof.nonce == value  # type: ignore[attr-defined]

    def test_nonce_windows(self):
        """A nonce is good in its window and the next, not later, and only under its secret."""
        nonces = NonceSource(b"k" * 32, window=60)
        value = nonces.current(NOW)

        assert nonces.is_current(value, NOW + 60)
        assert not nonces.is_current(value, NOW + 180)
        assert not NonceSource(b"j" * 32).is_current(value, NOW)
        assert not nonces.is_current(None, NOW)
        assert not nonces.is_current("short", NOW)

    def test_shared_secret_shares_nonces(self):
        """Two processes with one secret accept each other's nonces."""
        a, b = NonceSource(b"s" * 32), NonceSource(b"s" * 32)
        assert b.is_current(a.current(NOW), NOW)


class TestReplayCache:
    def test_first_use_only(self):
        """A jti is accepted once until it expires (RFC 9449 §11.1)."""
        cache = MemoryReplayCache()
        assert cache.first_use("k:1", NOW + 65, NOW)
        assert not cache.first_use("k:1", NOW + 65, NOW + 10)
        assert cache.first_use("k:1", NOW + 200, NOW + 65)  # expired: forgotten

    def test_bounded(self):
        """Past max_entries the oldest entry goes and is counted."""
        cache = MemoryReplayCache(max_entries=3)
        for i in range(5):
            assert cache.first_use(f"k:{i}", NOW + 65, NOW)
        assert len(cache) == 3
        assert cache.evicted_early == 2

    def test_expired_dropped_as_new_arrive(self):
        """Expired entries are dropped from the front: memory follows the live window."""
        cache = MemoryReplayCache()
        for i in range(100):
            cache.first_use(f"a:{i}", NOW + 65, NOW)
        cache.first_use("b:1", NOW + 200, NOW + 100)
        assert len(cache) == 1


class TestNormalizeHtu:
    def test_shape(self):
        """normalize_htu keeps scheme, host, port and path only."""
        assert normalize_htu("HTTP://X.test:8080/a?b#c") == "http://x.test:8080/a"
        assert normalize_htu("https://x.test") == "https://x.test/"
        with pytest.raises(ValueError, match="absolute"):
            normalize_htu("ftp://x.test/")


def test_replay_cache_threads_admit_one():
    """Threads presenting one proof at once (Flask): exactly one first use."""
    from concurrent.futures import ThreadPoolExecutor

    cache = MemoryReplayCache()
    for round_ in range(50):
        key = f"k:{round_}"
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _, k=key: cache.first_use(k, NOW + 65, NOW), range(8)))
        assert results.count(True) == 1
