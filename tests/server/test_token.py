"""The token endpoint: client credentials grant, scope and resource indicators."""

from __future__ import annotations

import pytest

from keystile.core.tokens import token_kind
from tests.conftest import API, INTROSPECT, OTHER_API, TOKEN, basic

CC = {"grant_type": "client_credentials"}


class TestTokenResponse:
    async def test_success_body_shape(self, http, setup):
        """A client_credentials request returns exactly the RFC 6749 §5.1 fields."""
        r = await http.post(TOKEN, data={**CC, "scope": "read"}, auth=setup.app.auth)

        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert body["scope"] == "read"
        assert token_kind(body["access_token"]) == "access_token"

    async def test_no_store_headers(self, http, setup):
        """A token response carries Cache-Control: no-store and Pragma: no-cache (RFC 6749 §5.1)."""
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["pragma"] == "no-cache"
        assert r.headers["content-type"] == "application/json"

    async def test_error_has_no_store_headers(self, http, setup):
        """A token error response is not cacheable either (RFC 6749 §5.2)."""
        r = await http.post(TOKEN, data={"grant_type": "password"}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["pragma"] == "no-cache"

    async def test_each_token_is_new(self, http, setup, issue_token):
        """Two requests give two different access tokens (RFC 6749 §10.10)."""
        assert await issue_token(setup.app) != await issue_token(setup.app)

    async def test_custom_ttl_sets_expires_in(self, http, register_client):
        """expires_in is the client's configured access-token lifetime (RFC 6749 §5.1)."""
        short = await register_client("short-1", access_token_ttl=90)
        r = await http.post(TOKEN, data=CC, auth=short.auth)

        assert r.status_code == 200
        assert r.json()["expires_in"] == 90

    async def test_client_id_in_body_matching_basic_is_accepted(self, http, setup):
        """A client_id body parameter equal to the Basic client id is allowed (RFC 6749 §3.2.1)."""
        r = await http.post(TOKEN, data={**CC, "client_id": "app-1"}, auth=setup.app.auth)

        assert r.status_code == 200

    async def test_client_id_in_body_differing_from_basic_is_refused(self, http, setup):
        """A body client_id that names another client than Basic does is invalid_request."""
        r = await http.post(TOKEN, data={**CC, "client_id": "rs-1"}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"


class TestScope:
    async def test_subset_of_allowed(self, http, setup, introspect):
        """A requested scope within the client's scopes is granted as asked (RFC 6749 §3.3)."""
        r = await http.post(TOKEN, data={**CC, "scope": "write"}, auth=setup.app.auth)

        assert r.status_code == 200
        assert r.json()["scope"] == "write"
        i = await introspect(setup.rs, r.json()["access_token"])
        assert i.json()["scope"] == "write"

    async def test_default_is_all_allowed(self, http, setup):
        """Without a scope parameter the client gets all of its scopes (RFC 6749 §3.3)."""
        r = await http.post(TOKEN, data=CC, auth=setup.app.auth)

        assert r.status_code == 200
        assert r.json()["scope"] == "read write"

    async def test_empty_scope_is_default(self, http, setup):
        """scope= with no value counts as omitted (RFC 6749 §3.1), so the default applies."""
        r = await http.post(TOKEN, data={**CC, "scope": ""}, auth=setup.app.auth)

        assert r.status_code == 200
        assert r.json()["scope"] == "read write"

    async def test_order_and_duplicates_normalised(self, http, setup):
        """Scope is a set: order and repeated tokens do not matter (RFC 6749 §3.3)."""
        r = await http.post(TOKEN, data={**CC, "scope": "write read  write"}, auth=setup.app.auth)

        assert r.status_code == 200
        assert r.json()["scope"] == "read write"

    async def test_beyond_allowed_is_invalid_scope(self, http, setup):
        """Asking for a scope the client may not have is invalid_scope (RFC 6749 §5.2)."""
        r = await http.post(TOKEN, data={**CC, "scope": "read admin"}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_scope",
            "error_description": "requested scope exceeds what this client may have",
        }

    @pytest.mark.parametrize("scope", ['read"', "re\\ad", "read\tw", "réad"])
    async def test_malformed_characters_are_invalid_scope(self, http, setup, scope):
        """Characters outside the scope-token grammar are invalid_scope (RFC 6749 §3.3)."""
        r = await http.post(TOKEN, data={**CC, "scope": scope}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_scope",
            "error_description": "scope contains characters not allowed by RFC 6749 section 3.3",
        }

    async def test_client_without_scopes_gets_no_scope_field(self, http, register_client):
        """A token with an empty scope omits the scope field (RFC 6749 §5.1: OPTIONAL)."""
        bare = await register_client("bare-1", scopes=[])
        r = await http.post(TOKEN, data=CC, auth=bare.auth)

        assert r.status_code == 200
        assert "scope" not in r.json()


class TestResourceIndicators:
    async def test_single_resource_is_audience(self, http, setup, issue_token, introspect):
        """One resource parameter becomes the token's single aud (RFC 8707 §2)."""
        token = await issue_token(setup.app, resource=OTHER_API)
        r = await introspect(setup.other_rs, token)

        assert r.json()["active"] is True
        assert r.json()["aud"] == OTHER_API
        assert (await introspect(setup.rs, token)).json() == {"active": False}

    async def test_repeated_resource_gives_several_audiences(self, http, setup, introspect):
        """Repeated resource parameters give a token for each of them (RFC 8707 §2)."""
        r = await http.post(
            TOKEN,
            content=f"grant_type=client_credentials&resource={API}&resource={OTHER_API}",
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "authorization": basic(*setup.app.auth),
            },
        )
        assert r.status_code == 200
        token = r.json()["access_token"]

        for rs in (setup.rs, setup.other_rs):
            body = (await introspect(rs, token)).json()
            assert body["active"] is True
            assert body["aud"] == [API, OTHER_API]

    async def test_same_resource_twice_is_one_audience(self, http, setup, introspect):
        """A resource given twice is one audience, not two (RFC 8707 §2)."""
        r = await http.post(TOKEN, data={**CC, "resource": [API, API]}, auth=setup.app.auth)
        assert r.status_code == 200

        body = (await introspect(setup.rs, r.json()["access_token"])).json()
        assert body["aud"] == API

    async def test_unknown_resource_is_invalid_target(self, http, setup):
        """A resource that is not a registered resource server is invalid_target (RFC 8707 §2)."""
        r = await http.post(
            TOKEN, data={**CC, "resource": "https://unknown.example.test"}, auth=setup.app.auth
        )

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_target",
            "error_description": "resource is not a registered resource server",
        }

    async def test_one_unknown_among_known_is_invalid_target(self, http, setup):
        """One unknown resource spoils the whole request (RFC 8707 §2)."""
        r = await http.post(
            TOKEN,
            data={**CC, "resource": [API, "https://unknown.example.test"]},
            auth=setup.app.auth,
        )

        assert r.status_code == 400
        assert r.json()["error"] == "invalid_target"

    @pytest.mark.parametrize(
        "resource", [API + "#frag", "/relative/path", "api.example.test", "https:///no-host"]
    )
    async def test_not_absolute_or_with_fragment_is_invalid_target(self, http, setup, resource):
        """A resource must be an absolute URI without a fragment (RFC 8707 §2)."""
        r = await http.post(TOKEN, data={**CC, "resource": resource}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_target",
            "error_description": "resource must be an absolute URI without a fragment (RFC 8707)",
        }

    async def test_default_audience_without_resource(self, http, setup, issue_token, introspect):
        """Without a resource the client's default audience is used."""
        token = await issue_token(setup.app)

        assert (await introspect(setup.rs, token)).json()["aud"] == API
        assert (await introspect(setup.other_rs, token)).json() == {"active": False}

    async def test_empty_resource_is_omitted(self, http, setup, issue_token, introspect):
        """resource= with no value counts as omitted (RFC 6749 §3.1): the default applies."""
        token = await issue_token(setup.app, resource="")

        assert (await introspect(setup.rs, token)).json()["aud"] == API


class TestGrantType:
    async def test_missing_grant_type(self, http, setup):
        """A request without grant_type is invalid_request (RFC 6749 §4.4.2, §5.2)."""
        r = await http.post(TOKEN, data={"scope": "read"}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "missing parameter: grant_type",
        }

    async def test_empty_grant_type_is_missing(self, http, setup):
        """grant_type= with no value counts as omitted (RFC 6749 §3.1)."""
        r = await http.post(TOKEN, data={"grant_type": ""}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json()["error_description"] == "missing parameter: grant_type"

    @pytest.mark.parametrize("grant", ["password", "implicit", "x", "urn:ietf:params:x"])
    async def test_other_grant_type_is_unsupported(self, http, setup, grant):
        """A grant type we do not implement is unsupported_grant_type (RFC 6749 §5.2); the
        password grant is never offered (RFC 9700 §2.4)."""
        r = await http.post(TOKEN, data={"grant_type": grant}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "unsupported_grant_type",
            "error_description": (
                "grant_type must be authorization_code, refresh_token or client_credentials"
            ),
        }

    @pytest.mark.parametrize("grant", ["authorization_code", "refresh_token"])
    async def test_user_grant_not_registered_is_unauthorized_client(self, http, setup, grant):
        """A client not registered for the code or refresh grant: unauthorized_client."""
        r = await http.post(TOKEN, data={"grant_type": grant}, auth=setup.app.auth)

        assert r.status_code == 400
        assert r.json()["error"] == "unauthorized_client"

    async def test_client_without_grant_is_unauthorized_client(self, http, setup):
        """A client not registered for client_credentials gets unauthorized_client (§5.2)."""
        r = await http.post(TOKEN, data=CC, auth=setup.rs.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "unauthorized_client",
            "error_description": "client is not allowed to use the client_credentials grant",
        }


class TestParameters:
    async def test_repeated_parameter_is_invalid_request(self, http, setup):
        """A repeated parameter is invalid_request (RFC 6749 §3.2: MUST NOT be repeated)."""
        r = await http.post(
            TOKEN,
            data={"grant_type": "client_credentials", "scope": ["read", "write"]},
            auth=setup.app.auth,
        )

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "parameter 'scope' is repeated",
        }

    async def test_repeated_grant_type_even_if_equal(self, http, setup):
        """grant_type twice with the same value is still refused (RFC 6749 §3.2)."""
        r = await http.post(
            TOKEN, data={"grant_type": ["client_credentials"] * 2}, auth=setup.app.auth
        )

        assert r.status_code == 400
        assert r.json()["error_description"] == "parameter 'grant_type' is repeated"

    async def test_repeated_with_one_empty_is_refused(self, http, setup):
        """An empty then a real value of one parameter is still a repetition (RFC 6749 §3.2)."""
        r = await http.post(
            TOKEN,
            content="grant_type=client_credentials&scope=&scope=read",
            headers={
                "content-type": "application/x-www-form-urlencoded",
                "authorization": basic(*setup.app.auth),
            },
        )

        assert r.status_code == 400
        assert r.json()["error_description"] == "parameter 'scope' is repeated"

    async def test_unknown_parameters_are_ignored(self, http, setup):
        """Unrecognised request parameters are ignored (RFC 6749 §3.2)."""
        r = await http.post(TOKEN, data={**CC, "foo": "bar"}, auth=setup.app.auth)

        assert r.status_code == 200

    async def test_charset_parameter_in_content_type_is_accepted(self, http, setup):
        """A charset parameter on the form media type is accepted (RFC 6749 Appendix B)."""
        r = await http.post(
            TOKEN,
            content="grant_type=client_credentials",
            headers={
                "content-type": "application/x-www-form-urlencoded; charset=UTF-8",
                "authorization": basic(*setup.app.auth),
            },
        )

        assert r.status_code == 200


class TestResourceUrn:
    async def test_urn_resource_is_accepted(self, http, setup, register_client, register_resource):
        """RFC 8707 §2 asks for an absolute URI, which a URN is: it becomes the audience."""
        rs = await register_client("rs-urn", grant_types=[], scopes=[])
        await register_resource("urn:example:orders", ["rs-urn"])
        r = await http.post(
            TOKEN,
            data={"grant_type": "client_credentials", "resource": "urn:example:orders"},
            auth=setup.app.auth,
        )
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        r = await http.post(INTROSPECT, data={"token": token}, auth=rs.auth)
        assert r.json()["aud"] == "urn:example:orders"
