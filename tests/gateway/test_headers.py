"""How the gateway sorts incoming header names (RFC 9110 §5.1: names are case-insensitive)."""

from __future__ import annotations

from keystile.gateway import headers as h
from keystile.gateway.headers import MAX_REMEMBERED, HeaderKinds, fold

IDENTITY = ("X-Auth-Subject", "X-Auth-Client-Id", "X-Auth-Username", "X-Auth-Scope")


class TestHeaderKinds:
    def test_fold_is_what_wsgi_reads(self):
        """Folding lower-cases and reads '_' as '-', like CGI/WSGI's HTTP_ names."""
        assert fold(b"X_Auth-Subject") == b"x-auth-subject"
        assert fold(b"x_auth_subject") == fold(b"X-AUTH_SUBJECT") == b"x-auth-subject"

    def test_every_spelling_of_an_identity_header_is_identity(self):
        """Any spelling of a configured identity header is one, whatever the case or '_'."""
        kinds = HeaderKinds(IDENTITY)
        for name in (b"x-auth-subject", b"x_auth-subject", b"x_auth_client_id", b"X-AUTH_SCOPE"):
            assert kinds.of(name) == h.IDENTITY, name
        assert kinds.of(b"x-auth-subjects") == h.PASS

    def test_forwarding_headers(self):
        """The dash spelling of Forwarded/X-Forwarded-*/X-Real-IP... is for trusted proxies;
        any other spelling is the caller's and always dropped."""
        kinds = HeaderKinds(IDENTITY)
        assert kinds.of(b"x-forwarded-for") == h.FORWARDED_FOR
        assert kinds.of(b"x-forwarded-prefix") == h.FORWARDED_OTHER
        assert kinds.of(b"forwarded") == h.FORWARDED_OTHER
        for name in (b"x_forwarded_for", b"x-forwarded_host", b"x_forwarded-prefix"):
            assert kinds.of(name) == h.SPOOFED, name
        for name in (b"x-real-ip", b"X-Real-IP", b"true-client-ip", b"x-client-ip"):
            assert kinds.of(name) == h.FORWARDED_OTHER, name
        for name in (b"x_real_ip", b"X_Real-IP", b"true_client_ip", b"x-client_ip"):
            assert kinds.of(name) == h.SPOOFED, name
        assert kinds.of(b"x-real-ips") == h.PASS

    def test_spoofs_is_any_other_spelling(self):
        """``spoofs``: an identity or forwarding header not spelled as the gateway or a proxy
        would spell it; the exact spelling is not (the proxy in front replaces it)."""
        kinds = HeaderKinds(("X_User", *IDENTITY[1:]))
        assert kinds.spoofs(b"x-user")
        assert not kinds.spoofs(b"x_user")
        assert kinds.spoofs(b"x_auth_scope")
        assert not kinds.spoofs(b"x-auth-scope")
        assert kinds.spoofs(b"x_forwarded_for")
        assert not kinds.spoofs(b"x-forwarded-for")
        assert not kinds.spoofs(b"content_type")

    def test_memo_is_bounded(self):
        """A caller inventing header names cannot grow the memo past its bound; names past
        it are still sorted right."""
        kinds = HeaderKinds(IDENTITY)
        for i in range(MAX_REMEMBERED + 100):
            kinds.of(b"x-made-up-%d" % i)
        assert len(kinds.memo) == MAX_REMEMBERED
        assert kinds.of(b"x_auth_subject") == h.IDENTITY
        assert kinds.of(b"x-made-up-9999999") == h.PASS
