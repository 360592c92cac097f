"""The browser side of the authorization code flow: authorization endpoint (RFC 6749 §4.1),
sign-in, consent and sign-out pages, over HTTP against the real app and a real SQLite file."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import logging
import re
import sqlite3
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from keystile import admin
from keystile.core.models import User
from keystile.core.passwords import needs_rehash, verify_password
from keystile.core.pkce import s256
from keystile.core.tokens import new_authorization_code, token_hash
from keystile.server.app import KeystileApp, create_app
from keystile.server.demo import first_start
from keystile.settings import ServerSettings
from keystile.store.sqlite import SQLiteStore
from tests.conftest import API, ISSUER, OTHER_API

AUTHORIZE = "/oauth2/authorize"
CONSENT = "/oauth2/consent"
LOGIN = "/login"
LOGOUT = "/logout"

CLIENT_ID = "web-1"
REDIRECT = "https://client.example.test/cb"
REDIRECT_WITH_QUERY = "https://client.example.test/cb2?tenant=a%20b"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = s256(VERIFIER)
STATE = "af0ifjsldkj & ü"
USERNAME = "alice"
PASSWORD = "correct horse battery staple"
LIMIT = 3


@pytest.fixture
def settings(db_path) -> ServerSettings:
    return ServerSettings(
        db=str(db_path),
        issuer=ISSUER,
        purge_interval=0,
        access_log=False,
        login_failures=LIMIT,
        login_window=300,
    )


@pytest.fixture
async def web(register_client, register_resource) -> None:
    """A confidential web client with two redirect URIs, and two resource servers."""
    await register_client(
        CLIENT_ID,
        name="Example Web",
        redirect_uris=[REDIRECT, REDIRECT_WITH_QUERY],
        default_audience=[API],
        scopes=["read", "write", "photos:upload"],
    )
    await register_resource(API, [])
    await register_resource(OTHER_API, [])


@pytest.fixture
async def user(store: SQLiteStore, clock) -> User:
    return await admin.create_user(store, clock, username=USERNAME, password=PASSWORD)


def request_params(**changes: str | None) -> dict[str, str]:
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "scope": "read",
        "state": STATE,
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
    }
    params.update(changes)
    return {k: v for k, v in params.items() if v is not None}


_HIDDEN = re.compile(r'<input type="hidden" name="([a-z]+)" value="([^"]*)">')


def hidden(page: str) -> dict[str, str]:
    """The hidden fields of a page's form, unescaped."""
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


def location(r: httpx.Response) -> tuple[str, dict[str, list[str]]]:
    """The redirect target without its query, and the query's parameters."""
    parts = urlsplit(r.headers["location"])
    assert parts.fragment == ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query)


async def sign_in(http: httpx.AsyncClient, params: dict[str, str] | None = None) -> httpx.Response:
    """Open the authorization request, sign in on the login page, follow the 303 back."""
    r = await http.get(AUTHORIZE, params=params or request_params())
    assert r.status_code == 200, r.text
    assert 'action="/login"' in r.text
    fields = hidden(r.text)
    r = await http.post(LOGIN, data={**fields, "username": USERNAME, "password": PASSWORD})
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith(AUTHORIZE + "?")
    return await http.get(r.headers["location"])


async def decide(
    http: httpx.AsyncClient, consent_page: httpx.Response, decision: str, **extra: str
) -> httpx.Response:
    assert consent_page.status_code == 200, consent_page.text
    assert 'action="/oauth2/consent"' in consent_page.text
    return await http.post(
        CONSENT, data={**hidden(consent_page.text), "decision": decision, **extra}
    )


def session_cookie(http: httpx.AsyncClient) -> str | None:
    return http.cookies.get("__Host-ks_session")


class TestAuthorizationCodeFlow:
    async def test_sign_in_consent_allow(self, http, web, user, store, clock):
        """Login page, sign-in, consent, Allow: 303 to the redirect URI with code, state and
        iss (RFC 6749 §4.1.2, RFC 9207 §2); the code is stored bound to client, redirect URI
        and PKCE challenge (RFC 7636 §4.4)."""
        page = await sign_in(http)
        assert "Example Web" in page.text
        r = await decide(http, page, "allow")

        assert r.status_code == 303
        target, query = location(r)
        assert target == REDIRECT
        assert query["state"] == [STATE]
        assert query["iss"] == [ISSUER]
        assert set(query) == {"code", "state", "iss"}
        code = query["code"][0]
        assert code.startswith("ks_ac_")
        found = await store.redeem_authorization_code(token_hash(code), clock.now())
        assert found.outcome == "ok"
        assert found.code is not None
        assert found.grant is not None
        assert found.code.client_id == CLIENT_ID
        assert found.code.redirect_uri == REDIRECT
        assert found.code.code_challenge == CHALLENGE
        assert found.code.expires_at == clock.now() + 60
        assert found.grant.user_id == user.user_id
        assert found.grant.username == USERNAME
        assert found.grant.scope == frozenset({"read"})
        assert found.grant.aud == (API,)
        assert found.grant.auth_time == clock.now()
        assert found.grant.grant_id.startswith("gr_")

    async def test_no_scope_means_all_of_the_clients(self, http, web, user, store, clock):
        """RFC 6749 §3.3: without scope, the client's registered scopes are requested."""
        page = await sign_in(http, request_params(scope=None))
        for words in ("Read your data", "Change your data", "photos:upload"):
            assert words in page.text
        _, query = location(await decide(http, page, "allow"))
        found = await store.redeem_authorization_code(token_hash(query["code"][0]), clock.now())
        assert found.grant is not None
        assert found.grant.scope == frozenset({"read", "write", "photos:upload"})

    async def test_resources_become_the_audience(self, http, web, user, store, clock):
        """RFC 8707 §2: each resource names a registered resource server; all form the aud."""
        params = request_params()
        query = [*params.items(), ("resource", API), ("resource", OTHER_API)]
        r = await http.get(AUTHORIZE, params=query)
        assert r.status_code == 200
        fields = hidden(r.text)
        r = await http.post(LOGIN, data={**fields, "username": USERNAME, "password": PASSWORD})
        page = await http.get(r.headers["location"])
        assert OTHER_API in page.text
        _, query = location(await decide(http, page, "allow"))
        found = await store.redeem_authorization_code(token_hash(query["code"][0]), clock.now())
        assert found.grant is not None
        assert found.grant.aud == (API, OTHER_API)

    async def test_redirect_uri_query_is_kept(self, http, web, user):
        """RFC 6749 §3.1.2: the registered query stays; the response is appended with '&'."""
        page = await sign_in(http, request_params(redirect_uri=REDIRECT_WITH_QUERY))
        r = await decide(http, page, "allow")
        assert r.headers["location"].startswith(REDIRECT_WITH_QUERY + "&code=ks_ac_")
        _, query = location(r)
        assert query["tenant"] == ["a b"]

    async def test_post_authorization_request(self, http, web, user):
        """RFC 6749 §3.1: the authorization endpoint also takes a POSTed form."""
        r = await http.post(AUTHORIZE, data=request_params())
        assert r.status_code == 200
        fields = hidden(r.text)
        r = await http.post(LOGIN, data={**fields, "username": USERNAME, "password": PASSWORD})
        page = await http.get(r.headers["location"])
        r = await decide(http, page, "allow")
        assert r.status_code == 303
        assert location(r)[1]["state"] == [STATE]

    async def test_remembered_consent_skips_the_page(self, http, web, user, store):
        """Consent remembered for a client covers later requests within those scopes; a
        request for more scopes asks again."""
        page = await sign_in(http, request_params(scope="read write"))
        r = await decide(http, page, "allow", remember="yes")
        assert r.status_code == 303
        assert await store.get_consent(user.user_id, CLIENT_ID) == frozenset({"read", "write"})

        r = await http.get(AUTHORIZE, params=request_params(scope="read"))
        assert r.status_code == 302
        target, query = location(r)
        assert target == REDIRECT
        assert query["code"][0].startswith("ks_ac_")
        assert query["state"] == [STATE]
        assert query["iss"] == [ISSUER]

        r = await http.get(AUTHORIZE, params=request_params(scope="read photos:upload"))
        assert r.status_code == 200
        assert 'action="/oauth2/consent"' in r.text

    async def test_remembered_consent_is_for_the_clients_audience(self, http, web, user, store):
        """Consent remembered for the client's default audience does not stretch to another
        resource server named with resource (RFC 8707 §2): that request asks again."""
        page = await sign_in(http, request_params(scope="read"))
        assert (await decide(http, page, "allow", remember="yes")).status_code == 303

        r = await http.get(AUTHORIZE, params=request_params(scope="read", resource=API))
        assert r.status_code == 302  # the default audience, named: still remembered
        r = await http.get(AUTHORIZE, params=request_params(scope="read", resource=OTHER_API))
        assert r.status_code == 200
        assert 'action="/oauth2/consent"' in r.text
        assert OTHER_API in r.text  # the page says where the access would be used

    async def test_head_issues_no_code(self, http, web, user, store):
        """HEAD is refused (405): with consent remembered it would issue a code that no one
        receives."""

        def codes() -> int:
            with sqlite3.connect(store.path) as conn:
                count = conn.execute("SELECT count(*) FROM authorization_codes").fetchone()[0]
            conn.close()
            return int(count)

        page = await sign_in(http, request_params(scope="read"))
        assert (await decide(http, page, "allow", remember="yes")).status_code == 303
        assert codes() == 1

        r = await http.head(AUTHORIZE, params=request_params(scope="read"))

        assert r.status_code == 405
        assert r.headers["allow"] == "GET, POST"
        assert "location" not in r.headers
        assert codes() == 1
        assert (await http.get(AUTHORIZE, params=request_params(scope="read"))).status_code == 302
        assert codes() == 2  # positive control: GET does issue one

    async def test_not_remembered_without_the_checkbox(self, http, web, user, store):
        """Allow without "Remember this decision" stores no consent: the next request asks."""
        await decide(http, await sign_in(http), "allow")
        assert await store.get_consent(user.user_id, CLIENT_ID) is None
        r = await http.get(AUTHORIZE, params=request_params())
        assert r.status_code == 200
        assert 'action="/oauth2/consent"' in r.text

    async def test_deny(self, http, web, user, store):
        """Deny redirects with error=access_denied, state and iss (RFC 6749 §4.1.2.1)."""
        page = await sign_in(http)
        r = await decide(http, page, "deny", remember="yes")
        assert r.status_code == 303
        target, query = location(r)
        assert target == REDIRECT
        assert query["error"] == ["access_denied"]
        assert query["state"] == [STATE]
        assert query["iss"] == [ISSUER]
        assert "code" not in query
        assert await store.get_consent(user.user_id, CLIENT_ID) is None

    async def test_sign_in_without_a_request(self, http, web, user):
        """Signing in from /login alone leads to a small "signed in" page."""
        r = await http.get(LOGIN)
        assert r.status_code == 200
        r = await http.post(
            LOGIN, data={**hidden(r.text), "username": USERNAME, "password": PASSWORD}
        )
        assert r.status_code == 303
        assert r.headers["location"] == LOGIN
        r = await http.get(LOGIN)
        assert r.status_code == 200
        assert "signed in as alice" in r.text

    async def test_username_ignores_case(self, http, web, user):
        """Usernames are stored lower-cased, so sign-in ignores the case typed."""
        r = await http.get(LOGIN)
        r = await http.post(
            LOGIN, data={**hidden(r.text), "username": " Alice ", "password": PASSWORD}
        )
        assert r.status_code == 303

    async def test_code_expires(self, store, clock, web, user, http):
        """A code expires after authorization_code_ttl (RFC 6749 §4.1.2: short-lived)."""
        page = await sign_in(http)
        _, query = location(await decide(http, page, "allow"))
        clock.advance(61)
        found = await store.redeem_authorization_code(token_hash(query["code"][0]), clock.now())
        assert found.outcome == "expired"


class TestRequestsThatMustNotRedirect:
    """RFC 6749 §4.1.2.1: without a valid client and redirect URI, tell the person, never
    redirect."""

    @pytest.mark.parametrize(
        "params",
        [
            pytest.param({}, id="no-parameters"),
            pytest.param(request_params(client_id=None), id="no-client_id"),
            pytest.param(request_params(client_id="nobody"), id="unknown-client"),
            pytest.param(request_params(client_id="cc-only"), id="no-authorization_code-grant"),
            pytest.param(request_params(client_id="disabled"), id="disabled-client"),
            pytest.param(request_params(redirect_uri=None), id="no-redirect_uri"),
            pytest.param(
                request_params(redirect_uri="https://evil.example.test/cb"), id="unregistered"
            ),
            pytest.param(request_params(redirect_uri=REDIRECT + "/"), id="trailing-slash"),
            pytest.param(request_params(redirect_uri=REDIRECT + "?x=1"), id="extra-query"),
            pytest.param(
                request_params(redirect_uri=REDIRECT.replace("client", "CLIENT")), id="case"
            ),
            pytest.param(request_params(redirect_uri=REDIRECT + "#f"), id="fragment"),
            pytest.param(
                request_params(redirect_uri="https://evil.example.test/cb", response_type="token"),
                id="unregistered-and-other-errors",
            ),
        ],
    )
    async def test_error_page(self, http, web, register_client, store, clock, params):
        """Each gives a 400 page and no Location (RFC 6749 §4.1.2.1, §3.1.2)."""
        await register_client("cc-only", grant_types=["client_credentials"])
        await register_client("disabled", redirect_uris=[REDIRECT])
        await store.set_client_enabled("disabled", False, clock.now())
        r = await http.get(AUTHORIZE, params=params)
        assert r.status_code == 400
        assert "location" not in r.headers
        assert r.headers["content-type"].startswith("text/html")
        assert 'role="alert"' in r.text

    @pytest.mark.parametrize("name", ["client_id", "redirect_uri"])
    async def test_repeated_client_id_or_redirect_uri(self, http, web, name):
        """A repeated client_id or redirect_uri leaves nothing to trust: an error page."""
        query = [*request_params().items(), (name, request_params()[name])]
        r = await http.get(AUTHORIZE, params=query)
        assert r.status_code == 400
        assert "location" not in r.headers

    async def test_no_parameters_at_all(self, http):
        """GET /oauth2/authorize with no parameters is a 400 page (not JSON, no redirect)."""
        r = await http.get(AUTHORIZE)
        assert r.status_code == 400
        assert r.headers["content-type"].startswith("text/html")
        assert "client_id" in r.text


class TestErrorsSentToTheClient:
    """RFC 6749 §4.1.2.1: once client and redirect URI are verified, errors go back there,
    with state and iss (RFC 9207 §2)."""

    @pytest.mark.parametrize(
        ("changes", "error"),
        [
            pytest.param({"response_type": "token"}, "unsupported_response_type", id="token"),
            pytest.param({"response_type": None}, "invalid_request", id="no-response_type"),
            pytest.param({"code_challenge": None}, "invalid_request", id="no-pkce"),
            pytest.param({"code_challenge_method": None}, "invalid_request", id="no-method"),
            pytest.param({"code_challenge_method": "plain"}, "invalid_request", id="plain"),
            pytest.param({"code_challenge_method": "s256"}, "invalid_request", id="s256-case"),
            pytest.param({"code_challenge": "too-short"}, "invalid_request", id="bad-challenge"),
            pytest.param({"code_challenge": CHALLENGE + "="}, "invalid_request", id="padded"),
            pytest.param({"scope": "read admin"}, "invalid_scope", id="scope-not-allowed"),
            pytest.param({"scope": 'read "x"'}, "invalid_scope", id="scope-bad-characters"),
        ],
    )
    async def test_error_redirect(self, http, web, changes, error):
        """Each error redirects (302) with error, error_description, state and iss."""
        r = await http.get(AUTHORIZE, params=request_params(**changes))
        assert r.status_code == 302
        target, query = location(r)
        assert target == REDIRECT
        assert query["error"] == [error]
        assert query["error_description"][0]
        assert query["state"] == [STATE]
        assert query["iss"] == [ISSUER]
        assert "code" not in query

    async def test_pkce_messages(self, http, web):
        """Missing or non-S256 PKCE says S256 is required (RFC 7636 §4.4.1; RFC 9700)."""
        r = await http.get(AUTHORIZE, params=request_params(code_challenge_method="plain"))
        assert location(r)[1]["error_description"] == ["PKCE with S256 is required"]

    @pytest.mark.parametrize(
        "resource",
        [
            pytest.param("https://unknown.example.test", id="unregistered"),
            pytest.param(API + "#frag", id="fragment"),
            pytest.param("not a uri", id="not-a-uri"),
        ],
    )
    async def test_bad_resource(self, http, web, resource):
        """RFC 8707 §2: an unknown or malformed resource is invalid_target."""
        r = await http.get(AUTHORIZE, params=[*request_params().items(), ("resource", resource)])
        assert r.status_code == 302
        _, query = location(r)
        assert query["error"] == ["invalid_target"]
        assert query["state"] == [STATE]
        assert query["iss"] == [ISSUER]

    @pytest.mark.parametrize("name", ["scope", "response_type", "code_challenge", "nonce"])
    async def test_repeated_parameter(self, http, web, name):
        """RFC 6749 §3.1: parameters must not be repeated (resource excepted)."""
        query = [*request_params().items(), (name, "x"), (name, "y")]
        r = await http.get(AUTHORIZE, params=query)
        assert r.status_code == 302
        _, query_out = location(r)
        assert query_out["error"] == ["invalid_request"]
        assert query_out["state"] == [STATE]

    async def test_repeated_state_is_not_echoed(self, http, web):
        """A repeated state is invalid_request, sent back without any state."""
        query = [*request_params().items(), ("state", "other")]
        r = await http.get(AUTHORIZE, params=query)
        _, query_out = location(r)
        assert query_out["error"] == ["invalid_request"]
        assert "state" not in query_out
        assert query_out["iss"] == [ISSUER]

    async def test_no_state(self, http, web):
        """Without state, the error carries none (RFC 6749 §4.1.2.1: only if present)."""
        r = await http.get(AUTHORIZE, params=request_params(state=None, response_type="token"))
        _, query = location(r)
        assert "state" not in query
        assert query["iss"] == [ISSUER]

    async def test_post_errors_redirect_with_303(self, http, web):
        """A POSTed request's error redirect is a 303, so the browser follows with GET."""
        r = await http.post(AUTHORIZE, data=request_params(response_type="token"))
        assert r.status_code == 303
        assert location(r)[1]["error"] == ["unsupported_response_type"]


class TestCsrf:
    """Every form carries a signed double-submit token (OWASP); without it, 403 and no change."""

    @pytest.mark.parametrize("token", [None, "", "x" * 43, "é"])
    async def test_login(self, http, web, user, token):
        """A sign-in without the right token is refused before any password check."""
        r = await http.get(AUTHORIZE, params=request_params())
        fields = hidden(r.text)
        data = {**fields, "username": USERNAME, "password": PASSWORD}
        if token is None:
            del data["csrf"]
        else:
            data["csrf"] = token
        r = await http.post(LOGIN, data=data)
        assert r.status_code == 403
        assert session_cookie(http) is None
        assert "location" not in r.headers

    async def test_login_without_the_cookie(self, http, web, user):
        """The field alone is not enough: the CSRF cookie must come with it."""
        r = await http.get(AUTHORIZE, params=request_params())
        fields = hidden(r.text)
        http.cookies.clear()
        r = await http.post(LOGIN, data={**fields, "username": USERNAME, "password": PASSWORD})
        assert r.status_code == 403
        assert session_cookie(http) is None

    async def test_login_token_from_another_browser(self, http, http_from, web, user):
        """A token minted for one browser's CSRF cookie fails with another's cookie."""
        other = http_from("198.51.100.9")
        r = await other.get(LOGIN)
        foreign = hidden(r.text)["csrf"]
        await http.get(LOGIN)
        r = await http.post(
            LOGIN, data={"csrf": foreign, "username": USERNAME, "password": PASSWORD}
        )
        assert r.status_code == 403

    @pytest.mark.parametrize("token", [None, "wrong"])
    async def test_consent(self, http, web, user, store, token):
        """A consent POST without the right token changes nothing and issues no code."""
        page = await sign_in(http)
        data = {**hidden(page.text), "decision": "allow", "remember": "yes"}
        if token is None:
            del data["csrf"]
        else:
            data["csrf"] = token
        r = await http.post(CONSENT, data=data)
        assert r.status_code == 403
        assert "location" not in r.headers
        assert await store.get_consent(user.user_id, CLIENT_ID) is None

    async def test_consent_token_is_bound_to_the_session(self, http, web, user):
        """A consent token from an earlier session does not work in a new one."""
        r = await http.get(AUTHORIZE, params=request_params())
        login_fields = hidden(r.text)
        credentials = {"username": USERNAME, "password": PASSWORD}
        r = await http.post(LOGIN, data={**login_fields, **credentials})
        old_fields = hidden((await http.get(r.headers["location"])).text)
        first = session_cookie(http)
        # Signing in again (the login form is still open in another tab) makes a new session.
        r = await http.post(LOGIN, data={**login_fields, **credentials})
        assert r.status_code == 303
        assert session_cookie(http) != first
        r = await http.post(CONSENT, data={**old_fields, "decision": "allow"})
        assert r.status_code == 403

    @pytest.mark.parametrize("token", [None, "wrong"])
    async def test_logout(self, http, web, user, token):
        """A sign-out POST without the right token leaves the session alone."""
        await sign_in(http)
        r = await http.get(LOGOUT)
        data = hidden(r.text)
        if token is None:
            del data["csrf"]
        else:
            data["csrf"] = token
        r = await http.post(LOGOUT, data=data)
        assert r.status_code == 403
        r = await http.get(LOGIN)
        assert "signed in as alice" in r.text


class TestSignIn:
    async def _post(self, http, username: str, password: str) -> httpx.Response:
        r = await http.get(AUTHORIZE, params=request_params())
        return await http.post(
            LOGIN, data={**hidden(r.text), "username": username, "password": password}
        )

    async def test_wrong_password(self, http, web, user):
        """A wrong password gives the login page again (401) with one generic message,
        the username kept and focus on the password field."""
        r = await self._post(http, USERNAME, "not the password")
        assert r.status_code == 401
        assert "Wrong username or password." in r.text
        assert 'id="login-error" class="error" role="alert"' in r.text
        assert 'value="alice"' in r.text
        password_input = re.search(r'<input id="password"[^>]*>', r.text)
        assert password_input is not None
        assert "autofocus" in password_input.group(0)
        assert 'aria-describedby="login-error"' in password_input.group(0)
        assert session_cookie(http) is None
        # The request is still carried, so the next try resumes it.
        assert hidden(r.text)["request"]

    async def test_weak_hash_is_upgraded_at_sign_in(self, http, web, store, clock):
        """A password hashed with weaker argon2 parameters than today's is rehashed when
        its owner signs in, the one moment the password is at hand (RFC 9106 §4)."""
        from argon2 import PasswordHasher

        weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
        created = await admin.create_user(store, clock, username="bob", password=PASSWORD)
        await store.update_user(replace(created, password_hash=weak))
        assert needs_rehash((await store.get_user_by_name("bob")).password_hash)

        r = await self._post(http, "bob", PASSWORD)

        assert r.status_code == 303
        stored = (await store.get_user_by_name("bob")).password_hash
        assert stored != weak
        assert not needs_rehash(stored)
        assert verify_password(stored, PASSWORD)

    async def test_unknown_user_gets_the_same_answer(self, http, web, user):
        """An unknown username is answered exactly like a wrong password."""
        wrong = await self._post(http, USERNAME, "not the password")
        unknown = await self._post(http, "mallory", "not the password")
        assert unknown.status_code == wrong.status_code == 401
        assert unknown.text.replace("mallory", USERNAME) == wrong.text

    async def test_missing_password(self, http, web, user):
        """An empty password is the same generic failure."""
        r = await self._post(http, USERNAME, "")
        assert r.status_code == 401
        assert "Wrong username or password." in r.text

    async def test_throttled_per_username(self, http, http_from, web, user, clock):
        """After login_failures failures a username gets 429 with Retry-After, even from
        another address and with the right password; the window's end lifts it."""
        for _ in range(LIMIT):
            assert (await self._post(http, USERNAME, "wrong password")).status_code == 401
        other = http_from("198.51.100.20")
        r = await self._post(other, USERNAME, PASSWORD)
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 300
        assert "Too many failed sign-in attempts" in r.text
        assert other.cookies.get("__Host-ks_session") is None

        clock.advance(300)
        r = await self._post(other, USERNAME, PASSWORD)
        assert r.status_code == 303

    async def test_address_over_limit_refuses_wrong_passwords_only(self, http, web, user):
        """After login_failures failures from one address, a wrong password for any other
        username there gets 429 with Retry-After, but a right one still signs in: the people
        behind one address are not locked out by someone else's failures (issue 11)."""
        for name in ("u1", "u2", "u3"):
            assert (await self._post(http, name, "wrong password")).status_code == 401
        r = await self._post(http, "u4", "wrong password")
        assert r.status_code == 429
        assert "retry-after" in r.headers

        r = await self._post(http, USERNAME, PASSWORD)
        assert r.status_code == 303
        assert session_cookie(http) is not None

    async def test_locked_account_does_not_lock_the_address(self, http, web, user, store, clock):
        """A username locked by failures from one address: its right password is refused
        there until the window ends, another person's right password from the same address
        signs in at once, and the locked one's right password signs in after the window."""
        await admin.create_user(store, clock, username="bob", password=PASSWORD + " bob")
        for _ in range(LIMIT):
            assert (await self._post(http, USERNAME, "wrong password")).status_code == 401
        assert (await self._post(http, USERNAME, PASSWORD)).status_code == 429
        assert session_cookie(http) is None

        r = await self._post(http, "bob", PASSWORD + " bob")
        assert r.status_code == 303
        assert session_cookie(http) is not None

        http.cookies.clear()  # signed out: the next GET shows the login form again
        clock.advance(300)
        assert (await self._post(http, USERNAME, PASSWORD)).status_code == 303

    async def test_concurrent_guesses_are_throttled_too(self, http, web, user):
        """Guesses sent at once do not slip past the throttle: each waits its turn and is
        checked again then, so no more than login_failures passwords are tried."""
        r = await http.get(AUTHORIZE, params=request_params())
        fields = hidden(r.text)
        guesses = [f"wrong password {i}" for i in range(4 * LIMIT)]
        responses = await asyncio.gather(
            *(
                http.post(LOGIN, data={**fields, "username": USERNAME, "password": guess})
                for guess in [*guesses, PASSWORD]
            )
        )
        statuses = [r.status_code for r in responses]
        assert statuses.count(401) == LIMIT
        assert statuses.count(429) == len(statuses) - LIMIT
        assert session_cookie(http) is None

    async def test_disabled_user_cannot_sign_in(self, http, web, user, store, clock):
        """A disabled user gets the generic failure, right password or not."""
        await admin.set_user_enabled(store, clock, USERNAME, False)
        r = await self._post(http, USERNAME, PASSWORD)
        assert r.status_code == 401
        assert "Wrong username or password." in r.text
        assert session_cookie(http) is None

    async def test_disabled_users_session_stops_working(self, http, web, user, store, clock):
        """Disabling a user ends their session: the next request shows the login page."""
        await sign_in(http)
        assert session_cookie(http) is not None
        await admin.set_user_enabled(store, clock, USERNAME, False)
        r = await http.get(AUTHORIZE, params=request_params())
        assert r.status_code == 200
        assert 'action="/login"' in r.text

    @pytest.mark.parametrize("how", ["disable", "revoke-sessions"])
    async def test_no_code_for_a_user_cut_off_mid_request(
        self, http, web, user, store, clock, monkeypatch, how
    ):
        """A user disabled or signed out everywhere while their browser's request is in
        flight (after its session was checked) gets no code: the grant would have been
        stored after the cascade ran, live, out of its reach (docs/users.md)."""
        await decide(http, await sign_in(http), "allow", remember="yes")
        remembered = store.get_consent

        async def cut_off_meanwhile(user_id: str, client_id: str) -> frozenset[str] | None:
            found = await remembered(user_id, client_id)
            if how == "disable":
                await admin.set_user_enabled(store, clock, USERNAME, False)
            else:
                await admin.revoke_user_sessions(store, clock, USERNAME)
            return found

        monkeypatch.setattr(store, "get_consent", cut_off_meanwhile)
        r = await http.get(AUTHORIZE, params=request_params())
        assert "location" not in r.headers
        assert r.status_code == 200
        assert 'action="/login"' in r.text
        assert hidden(r.text)["request"]

    async def test_session_expires(self, http, web, user, clock):
        """A session ends after session_ttl."""
        await sign_in(http)
        clock.advance(28800)
        r = await http.get(AUTHORIZE, params=request_params())
        assert 'action="/login"' in r.text

    async def test_session_is_stored_as_a_hash(self, http, web, user, store, clock):
        """The cookie is 256 bits from secrets; the store finds it by its SHA-256 only."""
        await sign_in(http)
        value = session_cookie(http)
        assert value is not None
        assert len(value) == 43
        found = await store.get_session(hashlib.sha256(value.encode()).digest(), clock.now())
        assert found is not None
        assert found[1].user_id == user.user_id

    async def test_secrets_are_not_logged(self, http, web, user, caplog):
        """Passwords, cookie values and codes never reach the logs; sign-ins and failures do."""
        caplog.set_level(logging.DEBUG, logger="keystile")
        await self._post(http, USERNAME, "wrong password 123")
        await self._post(http, "mallory", "wrong password 123")
        page = await sign_in(http)
        r = await decide(http, page, "allow")
        code = location(r)[1]["code"][0]
        logged = " ".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
        for secret in ("wrong password 123", PASSWORD, code, session_cookie(http) or "-"):
            assert secret not in logged
        assert "mallory" not in logged
        assert "user signed in" in logged
        assert "sign-in failed" in logged

    async def test_unknown_username_is_logged_by_a_keyed_digest(self, http, web, user, caplog):
        """A "username" that is a password typed into the wrong field must not reach the
        logs in a form a dictionary attack can test offline: not as itself, nor as a plain
        SHA-256 (a prefix of one is enough to confirm a guess). The digest logged is keyed
        by a server secret, and the same for the same name, so failures still correlate."""
        caplog.set_level(logging.DEBUG, logger="keystile")
        typed = "Tr0ub4dor&3"
        await self._post(http, typed, "wrong password 123")
        await self._post(http, typed, "wrong password 456")
        failures = [r for r in caplog.records if r.getMessage() == "sign-in failed"]
        assert len(failures) == 2
        logged = " ".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
        for form in (typed, typed.lower()):
            assert form not in logged
            assert hashlib.sha256(form.encode()).hexdigest()[:8] not in logged
        digests = {str(rec.__dict__.get("unknown_user_hmac")) for rec in failures}
        assert len(digests) == 1
        assert len(digests.pop()) == 16


class TestSignOut:
    async def test_sign_out(self, http, web, user, store, clock):
        """POST /logout (with its token) ends the session in the store and clears the cookie."""
        await sign_in(http)
        value = session_cookie(http)
        assert value is not None
        r = await http.get(LOGOUT)
        assert r.status_code == 200
        assert 'action="/logout"' in r.text
        r = await http.post(LOGOUT, data=hidden(r.text))
        assert r.status_code == 200
        assert "You are signed out." in r.text
        assert session_cookie(http) is None
        assert await store.get_session(token_hash(value), clock.now()) is None
        r = await http.get(AUTHORIZE, params=request_params())
        assert 'action="/login"' in r.text

    async def test_consent_after_sign_out_asks_to_sign_in(self, http, web, user, store):
        """A consent form sent after the session ended shows the login page, issuing nothing."""
        page = await sign_in(http)
        fields = hidden(page.text)
        await http.post(LOGOUT, data=hidden((await http.get(LOGOUT)).text))
        r = await http.post(CONSENT, data={**fields, "decision": "allow", "remember": "yes"})
        assert r.status_code == 200
        assert 'action="/login"' in r.text
        assert hidden(r.text)["request"] == fields["request"]
        assert "location" not in r.headers
        assert await store.get_consent(user.user_id, CLIENT_ID) is None


class TestSettings:
    def test_defaults_and_bounds(self, db_path):
        """Defaults: codes live 60 s (10..600), sessions 8 h, 5 failed sign-ins per 5 min."""
        s = ServerSettings(db=str(db_path))
        assert (s.authorization_code_ttl, s.session_ttl) == (60, 28800)
        assert (s.login_failures, s.login_window) == (5, 300)
        for bad in (9, 601):
            with pytest.raises(ValueError, match="authorization_code_ttl"):
                ServerSettings(db=str(db_path), authorization_code_ttl=bad)


class TestCookies:
    async def test_https_cookies(self, http, web, user):
        """Over HTTPS: __Host- names, Secure, HttpOnly, SameSite=Lax, Path=/."""
        r = await http.get(AUTHORIZE, params=request_params())
        csrf = _set_cookies(r)["__Host-ks_csrf"]
        assert {"secure", "httponly", "samesite=lax", "path=/"} <= csrf
        r = await http.post(
            LOGIN, data={**hidden(r.text), "username": USERNAME, "password": PASSWORD}
        )
        session = _set_cookies(r)["__Host-ks_session"]
        assert {"secure", "httponly", "samesite=lax", "path=/", "max-age=28800"} <= session
        assert not any(part.startswith("domain") for part in session)

    async def test_http_cookies(self, app: KeystileApp, web, user):
        """Over plain HTTP (loopback development): no Secure, so no __Host- prefix."""
        async with _client(app, "http://as.example.test") as plain:
            r = await plain.get(AUTHORIZE, params=request_params())
            csrf = _set_cookies(r)["ks_csrf"]
            assert "secure" not in csrf
            assert {"httponly", "samesite=lax", "path=/"} <= csrf
            r = await plain.post(
                LOGIN, data={**hidden(r.text), "username": USERNAME, "password": PASSWORD}
            )
            session = _set_cookies(r)["ks_session"]
            assert "secure" not in session
            assert {"httponly", "samesite=lax", "path=/"} <= session
            r = await plain.get(r.headers["location"])
            assert 'action="/oauth2/consent"' in r.text


class TestPages:
    async def test_security_headers(self, http, web, user):
        """Every page and redirect: no-store, no framing, a strict CSP without form-action,
        no referrer, nosniff."""
        responses = [
            await http.get(AUTHORIZE),  # error page
            await http.get(AUTHORIZE, params=request_params()),  # login page
            await http.get(AUTHORIZE, params=request_params(response_type="x")),  # redirect
        ]
        page = await sign_in(http)
        responses += [page, await decide(http, page, "allow"), await http.get(LOGOUT)]
        for r in responses:
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["x-frame-options"] == "DENY"
            assert r.headers["referrer-policy"] == "no-referrer"
            assert r.headers["x-content-type-options"] == "nosniff"
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert "default-src 'none'" in csp
            assert "form-action" not in csp

    @pytest.mark.parametrize("path", [AUTHORIZE, LOGIN, CONSENT, LOGOUT])
    async def test_oversized_body_is_413(self, http, settings, path):
        """A form larger than max_body_bytes gets 413 Content Too Large (RFC 9110 §15.5.14),
        as at the token endpoint, not a generic 400, and never a 500."""
        body = "request=" + "a" * settings.max_body_bytes
        r = await http.post(
            path, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert r.status_code == 413
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-store"

    async def test_inline_style_matches_the_csp_hash(self, http, web):
        """The page's only style is the inline one the CSP allows by hash."""
        r = await http.get(AUTHORIZE, params=request_params())
        style = re.search(r"<style>(.*?)</style>", r.text, re.S)
        assert style is not None
        digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}'" in r.headers["content-security-policy"]
        assert "<script" not in r.text

    async def test_accessible_forms(self, http, web, user):
        """lang, a label for every visible input, autocomplete, and autofocus."""
        login = await http.get(AUTHORIZE, params=request_params())
        consent = await sign_in(http)
        for page in (login.text, consent.text):
            assert '<html lang="en">' in page
            for input_id in re.findall(r'<input id="([a-z]+)"', page):
                assert f'<label for="{input_id}"' in page or f'for="{input_id}"' in page
        assert 'autocomplete="username"' in login.text
        assert 'autocomplete="current-password"' in login.text
        username_input = re.search(r'<input id="username"[^>]*>', login.text)
        assert username_input is not None
        assert "autofocus" in username_input.group(0)
        assert "Remember this decision" in consent.text
        assert 'value="allow"' in consent.text
        assert 'value="deny"' in consent.text

    async def test_client_name_is_escaped(self, http, web, user, store):
        """A client name with markup is shown as text on the login and consent pages."""
        client = await store.get_client(CLIENT_ID)
        assert client is not None
        await store.update_client(replace(client, name="<script>alert(1)</script>"))
        login = await http.get(AUTHORIZE, params=request_params())
        consent = await sign_in(http)
        for page in (login.text, consent.text):
            assert "<script>" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    async def test_unknown_scope_shown_as_is(self, http, web, user):
        """A scope without a known description is shown by its name."""
        page = await sign_in(http, request_params(scope="read photos:upload"))
        assert "Read your data" in page.text
        assert "<code>photos:upload</code>" in page.text


class TestDemoCallback:
    """The demo client's landing page (docs/users.md, "Try it") prints a shell command for
    the person to paste, so nothing from the URL may reach that command."""

    @pytest.mark.parametrize(
        "code",
        [
            pytest.param("$(touch /tmp/pwned)", id="command-substitution"),
            pytest.param('x" ; touch /tmp/pwned ; echo "', id="quote-break"),
            pytest.param("`id`", id="backticks"),
            pytest.param("ks_ac_" + "A" * 49, id="bad-checksum"),
        ],
    )
    async def test_a_code_that_is_not_one_is_not_put_in_the_command(self, http, store, clock, code):
        """A link to the callback with a crafted code gets no command to paste."""
        await first_start(store, clock, demo=True, ttl=600, issuer=ISSUER)
        r = await http.get("/demo/callback", params={"code": code, "state": "demo"})
        assert r.status_code == 400
        assert "curl" not in r.text
        assert "touch" not in r.text

    async def test_a_real_code_gets_the_command(self, http, store, clock):
        """A well-formed code (ks_ac_..., valid checksum) is shown in the command."""
        await first_start(store, clock, demo=True, ttl=600, issuer=ISSUER)
        code = new_authorization_code()
        r = await http.get("/demo/callback", params={"code": code, "state": "demo"})
        assert r.status_code == 200
        assert "curl" in r.text
        assert f'"code={code}"' in html.unescape(r.text)


def _set_cookies(r: httpx.Response) -> dict[str, set[str]]:
    """Each Set-Cookie by name: its attributes, lower-cased."""
    out: dict[str, set[str]] = {}
    for value in r.headers.get_list("set-cookie"):
        name = value.split("=", 1)[0]
        out[name] = {part.strip().lower() for part in value.split(";")[1:]}
    return out


def _client(app: KeystileApp, base_url: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.8", 40002))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


class TestSharedThrottle:
    async def test_failed_sign_ins_are_shared_through_redis(
        self, db_path, store, clock, web, user, redis_url, redis_prefix
    ):
        """With redis_url, failed sign-ins on one AS process throttle the username on another
        (login_failures per login_window, counted apart from client authentication), and the
        address rule holds there too: wrong passwords refused, other people's right ones not."""
        await admin.create_user(store, clock, username="bob", password=PASSWORD + " bob")
        settings = ServerSettings(
            db=str(db_path),
            issuer=ISSUER,
            purge_interval=0,
            login_failures=LIMIT,
            redis_url=redis_url,
            redis_prefix=redis_prefix,
        )
        a = create_app(settings, store=store, clock=clock)
        b = create_app(settings, store=store, clock=clock)
        # The in-process client runs no lifespan: run both apps' by hand.
        async with (
            a._fallback.router.lifespan_context(a._fallback),
            b._fallback.router.lifespan_context(b._fallback),
            _client(a, ISSUER) as http_a,
            _client(b, ISSUER) as http_b,
        ):
            for _ in range(LIMIT):
                r = await http_a.get(LOGIN)
                data = {**hidden(r.text), "username": USERNAME, "password": "wrong password"}
                assert (await http_a.post(LOGIN, data=data)).status_code == 401
            deadline = asyncio.get_running_loop().time() + 3
            while True:
                r = await http_b.get(LOGIN)
                data = {**hidden(r.text), "username": USERNAME, "password": PASSWORD}
                r = await http_b.post(LOGIN, data=data)
                if r.status_code == 429 or asyncio.get_running_loop().time() > deadline:
                    break
                await http_b.post(LOGOUT, data=hidden((await http_b.get(LOGOUT)).text))
                await asyncio.sleep(0.05)
            assert r.status_code == 429
            # The address is over its limit on B too, yet another person's right password
            # from it signs in: only wrong passwords are refused there.
            r = await http_b.get(LOGIN)
            data = {**hidden(r.text), "username": "mallory", "password": "wrong password"}
            assert (await http_b.post(LOGIN, data=data)).status_code == 429
            r = await http_b.get(LOGIN)
            data = {**hidden(r.text), "username": "bob", "password": PASSWORD + " bob"}
            assert (await http_b.post(LOGIN, data=data)).status_code == 303
