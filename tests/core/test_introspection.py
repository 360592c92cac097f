"""The introspection decision (keystile.core.introspection, RFC 7662 §2.2, §4)."""

from __future__ import annotations

import pytest

from keystile.core.introspection import introspection_response, may_see
from keystile.core.models import RFC7662_CLAIMS, ResourceServer, TokenRecord

ISS = "https://as.example.test"
API = "https://api.example.test"
NOW = 1_800_000_000


def _record(**changes) -> TokenRecord:
    fields = {
        "token_hash": b"\1" * 32,
        "kind": "access_token",
        "client_id": "app-1",
        "scope": frozenset({"read", "write"}),
        "aud": (API,),
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "exp": NOW + 100,
        "jti": "jti-1",
        "sub": "app-1",
        **changes,
    }
    return TokenRecord(**fields)


def _rs(**changes) -> ResourceServer:
    fields = {"identifier": API, "name": "api", "introspection_clients": frozenset({"rs-1"})}
    return ResourceServer(**{**fields, **changes})


def _answer(record, rs=None, now=NOW):
    return introspection_response(record, caller=rs or _rs(), now=now, issuer=ISS)


class TestResponse:
    def test_active_fields(self):
        """An active visible token shows every claim it has (RFC 7662 §2.2)."""
        assert _answer(_record()) == {
            "active": True,
            "scope": "read write",
            "client_id": "app-1",
            "token_type": "Bearer",
            "exp": NOW + 100,
            "iat": NOW - 10,
            "nbf": NOW - 10,
            "sub": "app-1",
            "aud": API,
            "iss": ISS,
            "jti": "jti-1",
        }

    def test_username_when_present(self):
        """A token with a resource owner carries username (RFC 7662 §2.2)."""
        assert _answer(_record(username="alice"))["username"] == "alice"

    def test_several_audiences_are_a_list(self):
        """Several audiences are an array, one is a string (RFC 7519 §4.1.3)."""
        other = "https://other.example.test"

        assert _answer(_record(aud=(API, other)))["aud"] == [API, other]

    def test_empty_scope_and_aud_omitted(self):
        """Empty scope and audience are left out rather than sent empty."""
        body = _answer(_record(scope=frozenset(), aud=()), rs=_rs(rules=frozenset({"any"})))

        assert "scope" not in body
        assert "aud" not in body

    def test_refresh_token_type(self):
        """A refresh token is reported with token_type refresh_token."""
        assert _answer(_record(kind="refresh_token"))["token_type"] == "refresh_token"

    @pytest.mark.parametrize(
        "record",
        [
            None,
            _record(exp=NOW),
            _record(exp=NOW - 1),
            _record(nbf=NOW + 1),
            _record(revoked_at=NOW - 5),
            _record(aud=("https://other.example.test",)),
        ],
        ids=["unknown", "at-exp", "expired", "not-yet", "revoked", "other-aud"],
    )
    def test_inactive_is_exactly_active_false(self, record):
        """Unknown, expired, not-yet-valid, revoked and invisible tokens read the same (§2.2)."""
        assert _answer(record) == {"active": False}

    def test_active_one_second_before_exp(self):
        """A token is still active the second before exp (RFC 7519 §4.1.4)."""
        assert _answer(_record(exp=NOW + 1))["active"] is True

    def test_claims_allow_list(self):
        """Only allow-listed claims are shown, plus active (RFC 7662 §2.2)."""
        rs = _rs(claims=frozenset({"scope", "exp"}))

        assert _answer(_record(), rs=rs) == {
            "active": True,
            "scope": "read write",
            "exp": NOW + 100,
        }


class TestPolicy:
    def test_audience(self):
        """A resource server sees tokens whose aud names it."""
        assert may_see(_rs(), _record())
        assert not may_see(_rs(), _record(aud=()))

    def test_owner(self):
        """The owner rule shows tokens issued to the resource server's own clients."""
        rs = _rs(rules=frozenset({"audience", "owner"}))

        assert may_see(rs, _record(aud=(), client_id="rs-1"))
        assert not may_see(rs, _record(aud=(), client_id="app-1"))
        assert not may_see(_rs(), _record(aud=(), client_id="rs-1"))

    def test_any(self):
        """The any rule shows every token."""
        rs = _rs(rules=frozenset({"any"}))

        assert may_see(rs, _record(aud=("https://x.example.test",), client_id="z"))

    def test_default_claims_are_rfc7662(self):
        """By default a resource server may see every RFC 7662 §2.2 claim."""
        assert _rs().claims == frozenset(RFC7662_CLAIMS)
