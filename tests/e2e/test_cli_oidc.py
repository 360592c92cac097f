"""The CLI options of OpenID Connect (docs/oidc.md, docs/cli.md): user claims on `user create`
and `user update`, and the client's ID-token algorithm and logout settings."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Cli
from tests.e2e.test_cli_users import PASSWORD, ok_json

WEB = "https://app.example.test/callback"
OUT = "https://app.example.test/signed-out"


def create_user(cli: Cli, *flags: str) -> dict[str, object]:
    return dict(
        ok_json(cli, "user", "create", "alice", "--password-stdin", *flags, input=PASSWORD + "\n")
    )


class TestUserClaims:
    def test_create_with_claims(self, cli: Cli) -> None:
        """user create takes the standard claims (OIDC Core §5.1); show prints them."""
        user = create_user(
            cli, "--name", "Alice Liddell", "--email", "alice@example.test", "--email-verified"
        )
        assert user["name"] == "Alice Liddell"
        assert user["email"] == "alice@example.test"
        assert user["email_verified"] is True
        assert user["preferred_username"] is None
        assert ok_json(cli, "user", "show", "alice") == user

    def test_update(self, cli: Cli) -> None:
        """user update changes only what is given; '' clears; a new email is unverified
        unless --email-verified comes with it."""
        create_user(cli, "--email", "alice@example.test", "--email-verified")
        user = ok_json(cli, "user", "update", "alice", "--preferred-username", "ally")
        assert (user["preferred_username"], user["email_verified"]) == ("ally", True)
        user = ok_json(cli, "user", "update", "alice", "--email", "a@example.test")
        assert (user["email"], user["email_verified"]) == ("a@example.test", False)
        user = ok_json(cli, "user", "update", "alice", "--email-verified", "--name", "Alice")
        assert (user["name"], user["email_verified"]) == ("Alice", True)
        user = ok_json(cli, "user", "update", "alice", "--name", "", "--email-unverified")
        assert (user["name"], user["email_verified"]) == (None, False)

    @pytest.mark.parametrize(
        "flags", [("--email", "not-an-address"), ("--name", "a\tb"), ("--name", "x" * 257)]
    )
    def test_bad_claims_exit_2(self, cli: Cli, flags: tuple[str, str]) -> None:
        create_user(cli)
        result = cli("user", "update", "alice", *flags)
        assert result.exit_code == 2, result.output

    def test_unknown_user_exits_3(self, cli: Cli) -> None:
        create_user(cli)
        assert cli("user", "update", "bob", "--name", "Bob").exit_code == 3


class TestClientOidcSettings:
    def test_create_and_update(self, cli: Cli) -> None:
        """--id-token-alg, --post-logout-redirect-uri (repeatable, replaced on update) and
        --logout-revokes-grants/--logout-keeps-grants."""
        client = ok_json(
            cli,
            "client",
            "create",
            "web",
            "--redirect-uri",
            WEB,
            "--post-logout-redirect-uri",
            OUT,
            "--id-token-alg",
            "RS256",
            "--logout-revokes-grants",
            "--scope",
            "openid",
        )
        assert client["id_token_signed_response_alg"] == "RS256"
        assert client["post_logout_redirect_uris"] == [OUT]
        assert client["logout_revokes_grants"] is True
        client = ok_json(
            cli,
            "client",
            "update",
            "web",
            "--id-token-alg",
            "",
            "--post-logout-redirect-uri",
            "",
            "--logout-keeps-grants",
        )
        assert client["id_token_signed_response_alg"] is None
        assert client["post_logout_redirect_uris"] == []
        assert client["logout_revokes_grants"] is False
        # Not given: unchanged.
        client = ok_json(cli, "client", "update", "web", "--name", "Web")
        assert client["logout_revokes_grants"] is False

    @pytest.mark.parametrize(
        "flags",
        [
            ("--id-token-alg", "HS256"),
            ("--id-token-alg", "none"),
            ("--post-logout-redirect-uri", "http://app.example.test/out"),
            ("--post-logout-redirect-uri", OUT + "#frag"),
        ],
    )
    def test_refusals_exit_2(self, cli: Cli, flags: tuple[str, str]) -> None:
        result = cli("client", "create", "web", "--redirect-uri", WEB, *flags)
        assert result.exit_code == 2, result.output
