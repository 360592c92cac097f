"""The introspection endpoint (RFC 7662)."""

from __future__ import annotations

import pytest

from keystile import admin
from keystile.core.tokens import new_access_token, new_refresh_token
from tests.conftest import API, INTROSPECT, ISSUER, OTHER_API, TOKEN

INACTIVE = {"active": False}
NOW = 1_800_000_000


class TestActiveResponse:
    async def test_fields_exactly(self, setup, issue_token, introspect, clock):
        """An active client-credentials token shows exactly the RFC 7662 §2.2 claims it has."""
        token = await issue_token(setup.app, scope="read write")
        r = await introspect(setup.rs, token)

        assert r.status_code == 200
        body = r.json()
        jti = body.pop("jti")
        assert isinstance(jti, str)
        assert len(jti) >= 16
        assert body == {
            "active": True,
            "scope": "read write",
            "client_id": "app-1",
            "token_type": "Bearer",
            "exp": NOW + 3600,
            "iat": NOW,
            "nbf": NOW,
            "sub": "app-1",
            "aud": API,
            "iss": ISSUER,
        }

    async def test_no_username_for_client_tokens(self, setup, issue_token, introspect):
        """A client-credentials token has no resource owner, so no username (RFC 7662 §2.2)."""
        token = await issue_token(setup.app)

        assert "username" not in (await introspect(setup.rs, token)).json()

    async def test_jti_differs_per_token(self, setup, issue_token, introspect):
        """Each token has its own jti (RFC 7519 §4.1.7)."""
        a = (await introspect(setup.rs, await issue_token(setup.app))).json()["jti"]
        b = (await introspect(setup.rs, await issue_token(setup.app))).json()["jti"]

        assert a != b

    async def test_headers(self, setup, issue_token, introspect):
        """An introspection answer is JSON and not cacheable (RFC 7662 §2.2, §4)."""
        r = await introspect(setup.rs, await issue_token(setup.app))

        assert r.headers["content-type"] == "application/json"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["pragma"] == "no-cache"

    async def test_client_secret_post(self, http, register_client, register_resource, setup):
        """A resource server may authenticate with client_secret_post (RFC 7662 §2.1)."""
        rs = await register_client(
            "rs-post", grant_types=[], scopes=[], auth_method="client_secret_post"
        )
        await register_resource("https://post.example.test", ["rs-post"], rules=["any"])
        token = (
            await http.post(TOKEN, data={"grant_type": "client_credentials"}, auth=setup.app.auth)
        ).json()["access_token"]
        r = await http.post(
            INTROSPECT,
            data={"token": token, "client_id": rs.client_id, "client_secret": rs.secret},
        )

        assert r.status_code == 200
        assert r.json()["active"] is True


class TestCaller:
    async def test_not_a_resource_server_is_403(self, setup, issue_token, introspect):
        """A client that introspects for no resource server is refused with 403 (RFC 7662 §4)."""
        token = await issue_token(setup.app)
        r = await introspect(setup.app, token)

        assert r.status_code == 403
        assert r.json() == {
            "error": "unauthorized_client",
            "error_description": (
                "this client is not an introspecting client of any resource server"
            ),
        }
        assert r.headers["cache-control"] == "no-store"

    async def test_missing_token_is_invalid_request(self, http, setup):
        """A request without token is 400 invalid_request (RFC 7662 §2.1: token REQUIRED)."""
        r = await http.post(INTROSPECT, data={"token_type_hint": "x"}, auth=setup.rs.auth)

        assert r.status_code == 400
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "missing parameter: token",
        }
        assert r.headers["cache-control"] == "no-store"

    async def test_empty_token_is_missing(self, http, setup):
        """token= without a value counts as omitted (RFC 6749 §3.1): 400."""
        r = await http.post(INTROSPECT, data={"token": ""}, auth=setup.rs.auth)

        assert r.status_code == 400
        assert r.json()["error_description"] == "missing parameter: token"

    async def test_repeated_token_is_invalid_request(self, http, setup, issue_token):
        """A repeated token parameter is 400 (RFC 6749 §3.1 applies to RFC 7662 requests)."""
        token = await issue_token(setup.app)
        r = await http.post(INTROSPECT, data={"token": [token, token]}, auth=setup.rs.auth)

        assert r.status_code == 400
        assert r.json()["error_description"] == "parameter 'token' is repeated"

    async def test_too_large_token_is_413(self, http, setup):
        """A 64 KiB token is refused with 413 and a JSON error, not read into the store."""
        r = await http.post(INTROSPECT, data={"token": "a" * 65536}, auth=setup.rs.auth)

        assert r.status_code == 413
        assert r.json() == {
            "error": "invalid_request",
            "error_description": "request body exceeds 16384 bytes",
        }
        assert r.headers["cache-control"] == "no-store"


class TestNoStore:
    async def test_every_response_is_no_store(self, http, setup, issue_token, store):
        """Every introspection answer, error or not, has Cache-Control: no-store (RFC 7662 §4)."""
        token = await issue_token(setup.app)
        responses = [
            await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth),  # 200
            await http.post(INTROSPECT, data={"token": "x"}, auth=setup.rs.auth),  # inactive
            await http.post(INTROSPECT, data={}, auth=setup.rs.auth),  # 400
            await http.post(INTROSPECT, data={"token": token}),  # 401
            await http.post(INTROSPECT, data={"token": token}, auth=setup.app.auth),  # 403
            await http.get(INTROSPECT),  # 405
            await http.post(INTROSPECT, data={"token": "a" * 20000}, auth=setup.rs.auth),  # 413
        ]
        await store.close()
        responses.append(await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth))

        assert [r.status_code for r in responses] == [200, 200, 400, 401, 403, 405, 413, 503]
        for r in responses:
            assert r.headers["cache-control"] == "no-store", r.status_code
            assert r.headers["pragma"] == "no-cache", r.status_code


class TestInactive:
    async def test_unknown_well_formed_token(self, setup, introspect):
        """A well-formed token the server never issued is exactly inactive (RFC 7662 §2.2)."""
        r = await introspect(setup.rs, new_access_token())

        assert r.status_code == 200
        assert r.json() == INACTIVE

    @pytest.mark.parametrize(
        "token", ["garbage", "ks_at_", "x" * 55, "ks_at_" + "A" * 49, "ks_zz_" + "A" * 49, "é"]
    )
    async def test_garbage(self, setup, introspect, token):
        """A token that is not even well-formed is exactly inactive (RFC 7662 §2.2)."""
        r = await introspect(setup.rs, token)

        assert r.status_code == 200
        assert r.json() == INACTIVE

    async def test_token_shaped_non_ascii(self, setup, introspect):
        """A token-prefixed 55-character value with non-ASCII characters is inactive, not 500."""
        r = await introspect(setup.rs, "ks_at_" + "é" * 49)

        assert r.status_code == 200
        assert r.json() == INACTIVE

    async def test_one_char_changed(self, setup, issue_token, introspect):
        """A real token with one character changed fails its checksum: inactive."""
        token = await issue_token(setup.app)
        i = 20
        bad = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]

        assert (await introspect(setup.rs, bad)).json() == INACTIVE

    async def test_client_secret_is_not_a_token(self, setup, introspect):
        """A client secret presented as a token is inactive: secrets are not tokens."""
        assert (await introspect(setup.rs, setup.app.secret)).json() == INACTIVE

    async def test_expired(self, setup, issue_token, introspect, clock):
        """A token past its exp is exactly inactive (RFC 7662 §2.2)."""
        token = await issue_token(setup.app)
        clock.advance(3600 + 1)

        assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_expired_at_exp(self, setup, issue_token, introspect, clock):
        """A token is inactive the moment now reaches exp (RFC 7519 §4.1.4: on or after)."""
        token = await issue_token(setup.app)
        clock.advance(3599)
        assert (await introspect(setup.rs, token)).json()["active"] is True
        clock.advance(1)

        assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_not_yet_valid(self, setup, issue_token, introspect, clock):
        """A token seen before its nbf (clock moved back) is inactive (RFC 7519 §4.1.5)."""
        token = await issue_token(setup.app)
        clock.advance(-1)

        assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_revoked(self, http, setup, issue_token, introspect):
        """A revoked token is exactly inactive (RFC 7009 §2, RFC 7662 §2.2)."""
        token = await issue_token(setup.app)
        await http.post("/oauth2/revoke", data={"token": token}, auth=setup.app.auth)

        assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_other_audience(self, setup, issue_token, introspect):
        """A token for another resource server is exactly inactive to this one (RFC 7662 §4)."""
        token = await issue_token(setup.app, resource=OTHER_API)

        assert (await introspect(setup.rs, token)).json() == INACTIVE

    async def test_no_audience_is_invisible_by_default(
        self, setup, register_client, issue_token, introspect
    ):
        """A token without audience is visible to no audience-rule resource server (§4)."""
        bare = await register_client("no-aud")
        token = await issue_token(bare)

        assert (await introspect(setup.rs, token)).json() == INACTIVE
        assert (await introspect(setup.other_rs, token)).json() == INACTIVE


class TestTokenTypeHint:
    @pytest.mark.parametrize("hint", ["access_token", "refresh_token", "id_token", "bogus", ""])
    async def test_any_hint_still_finds_token(self, setup, issue_token, introspect, hint):
        """token_type_hint never changes the answer; unknown hints are ignored (§2.1)."""
        token = await issue_token(setup.app)
        r = await introspect(setup.rs, token, token_type_hint=hint)

        assert r.status_code == 200
        assert r.json()["active"] is True

    async def test_refresh_token_shape_unknown(self, setup, introspect):
        """An unknown refresh-token-shaped value is inactive, not an error (§2.2)."""
        r = await introspect(setup.rs, new_refresh_token(), token_type_hint="refresh_token")

        assert r.json() == INACTIVE


class TestPolicy:
    async def test_claim_allow_list(
        self, setup, register_client, register_resource, issue_token, introspect
    ):
        """A resource server with a claim allow-list sees only those claims (RFC 7662 §2.2)."""
        rs = await register_client("rs-claims", grant_types=[], scopes=[])
        ident = "https://claims.example.test"
        await register_resource(ident, ["rs-claims"], claims=["scope", "exp"])
        token = await issue_token(setup.app, resource=ident, scope="read")

        r = await introspect(rs, token)
        assert r.json() == {"active": True, "scope": "read", "exp": NOW + 3600}

    async def test_empty_allow_list(
        self, setup, register_client, register_resource, issue_token, introspect
    ):
        """An empty claim allow-list still says whether the token is active."""
        rs = await register_client("rs-min", grant_types=[], scopes=[])
        ident = "https://min.example.test"
        await register_resource(ident, ["rs-min"], claims=[])
        token = await issue_token(setup.app, resource=ident)

        assert (await introspect(rs, token)).json() == {"active": True}

    async def test_owner_rule(self, store, clock, setup, register_client, issue_token, introspect):
        """The owner rule lets a resource server see tokens issued to its own client (§4)."""
        own = await register_client("rs-own")  # may both get and introspect tokens
        await admin.create_resource_server(
            store,
            clock,
            identifier="https://own.example.test",
            introspection_clients=["rs-own"],
            rules=["owner"],
        )
        own_token = await issue_token(own)  # no audience at all
        app_token = await issue_token(setup.app)  # aud API

        r = await introspect(own, own_token)
        assert r.json()["active"] is True
        assert r.json()["client_id"] == "rs-own"
        assert "aud" not in r.json()
        assert (await introspect(own, app_token)).json() == INACTIVE

    async def test_without_owner_rule_own_tokens_are_hidden(
        self, store, clock, register_client, issue_token, introspect
    ):
        """Without the owner rule a resource server does not see its own unaudienced tokens."""
        own = await register_client("rs-own")
        await admin.create_resource_server(
            store, clock, identifier="https://own.example.test", introspection_clients=["rs-own"]
        )
        token = await issue_token(own)

        assert (await introspect(own, token)).json() == INACTIVE

    async def test_any_rule(self, store, clock, setup, register_client, issue_token, introspect):
        """The any rule sees every token, whatever its audience (§4)."""
        gw = await register_client("gateway", grant_types=[], scopes=[])
        await admin.create_resource_server(
            store,
            clock,
            identifier="https://gw.example.test",
            introspection_clients=["gateway"],
            rules=["any"],
        )
        bare = await register_client("no-aud")
        tokens = [
            await issue_token(setup.app),
            await issue_token(setup.app, resource=OTHER_API),
            await issue_token(bare),
        ]

        for token in tokens:
            assert (await introspect(gw, token)).json()["active"] is True

    async def test_any_rule_still_hides_revoked(
        self, http, store, clock, setup, register_client, issue_token, introspect
    ):
        """The any rule widens visibility, not validity: a revoked token stays inactive."""
        gw = await register_client("gateway", grant_types=[], scopes=[])
        await admin.create_resource_server(
            store,
            clock,
            identifier="https://gw.example.test",
            introspection_clients=["gateway"],
            rules=["any"],
        )
        token = await issue_token(setup.app)
        await http.post("/oauth2/revoke", data={"token": token}, auth=setup.app.auth)

        assert (await introspect(gw, token)).json() == INACTIVE

    async def test_policy_change_applies_at_once(
        self, store, clock, setup, issue_token, introspect
    ):
        """Changing a resource server's rules takes effect on the next request."""
        token = await issue_token(setup.app, resource=OTHER_API)
        assert (await introspect(setup.rs, token)).json() == INACTIVE

        await admin.update_resource_server(store, clock, API, rules=["any"])
        assert (await introspect(setup.rs, token)).json()["active"] is True


class TestCallerChanges:
    """A resource server's standing is re-checked after any registry change (RFC 7662 §2.1)."""

    async def _ok_once(self, setup, issue_token, introspect) -> str:
        token = await issue_token(setup.app)
        assert (await introspect(setup.rs, token)).json()["active"] is True
        return token

    async def test_disabled_caller_refused(self, setup, issue_token, introspect, store, clock):
        """An introspecting client disabled after a successful call gets 401 next time."""
        token = await self._ok_once(setup, issue_token, introspect)
        await store.set_client_enabled("rs-1", False, clock.now())
        r = await introspect(setup.rs, token)

        assert r.status_code == 401
        assert r.json()["error"] == "invalid_client"

    async def test_rotated_secret(self, setup, issue_token, introspect, store, clock):
        """After a secret rotation the old secret fails at once, the new one works."""
        token = await self._ok_once(setup, issue_token, introspect)
        _, new = await admin.rotate_secret(store, clock, "rs-1")

        assert (await introspect(setup.rs, token)).status_code == 401
        rotated = type(setup.rs)("rs-1", new)
        assert (await introspect(rotated, token)).json()["active"] is True

    async def test_removed_from_resource_server(self, setup, issue_token, introspect, store, clock):
        """A client taken off a resource server's introspecting clients gets 403 next time."""
        token = await self._ok_once(setup, issue_token, introspect)
        await admin.update_resource_server(store, clock, API, introspection_clients=[])
        r = await introspect(setup.rs, token)

        assert r.status_code == 403
        assert r.json()["error"] == "unauthorized_client"

    async def test_claims_change(self, setup, issue_token, introspect, store, clock):
        """A narrowed claim allow-list applies to the very next answer."""
        token = await self._ok_once(setup, issue_token, introspect)
        await admin.update_resource_server(store, clock, API, claims=["exp"])

        assert (await introspect(setup.rs, token)).json() == {"active": True, "exp": NOW + 3600}
