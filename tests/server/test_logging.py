"""Logs never carry a client secret or a token (RFC 6749 §10.3, RFC 7662 §4)."""

from __future__ import annotations

import hashlib
import logging
from base64 import b64encode
from typing import Any

import pytest

from keystile.settings import ServerSettings
from tests.conftest import INTROSPECT, ISSUER, REVOKE, TOKEN, basic

CC = {"grant_type": "client_credentials"}


@pytest.fixture
def settings(db_path) -> ServerSettings:
    # access_log on, so successful requests are logged too and checked as well.
    return ServerSettings(
        db=str(db_path), issuer=ISSUER, purge_interval=0, access_log=True, throttle_failures=4
    )


def _texts(value: Any) -> list[str]:
    """Every string reachable in a log record field (nested containers included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bytes):
        return [value.decode("latin-1")]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in (*_texts(k), *_texts(v))]
    if isinstance(value, list | tuple | set | frozenset):
        return [t for v in value for t in _texts(v)]
    return [repr(value)]


class TestNoSecretsInLogs:
    async def test_flows_never_log_secret_or_token(
        self, http, setup, register_client, issue_token, caplog
    ):
        """Token, introspection, revocation and failed-auth flows log no secret or token."""
        caplog.set_level(logging.DEBUG, logger="keystile")
        post_client = await register_client("post-1", auth_method="client_secret_post")
        token = await issue_token(setup.app, scope="read")
        wrong_secret = setup.app.secret[:-1] + ("A" if setup.app.secret[-1] != "A" else "B")
        secrets = {
            "app secret": setup.app.secret,
            "rs secret": setup.rs.secret,
            "post secret": post_client.secret,
            "wrong secret": wrong_secret,
            "token": token,
        }

        await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
        await http.post(INTROSPECT, data={"token": token}, auth=setup.app.auth)  # 403
        await http.post(
            TOKEN, data={**CC, "client_id": "post-1", "client_secret": post_client.secret}
        )
        await http.post(TOKEN, data={**CC, "client_secret": post_client.secret})  # no id
        await http.post(TOKEN, data=CC, auth=("app-1", wrong_secret))
        await http.post(TOKEN, data=CC, auth=("ghost", setup.app.secret))
        await http.post(TOKEN, data={**CC, "client_secret": setup.app.secret}, auth=setup.app.auth)
        await http.post(
            TOKEN,
            content=b"grant_type=client_credentials",
            headers={
                "authorization": "Basic " + b64encode(setup.app.secret.encode()).decode(),
                "content-type": "application/x-www-form-urlencoded",
            },
        )  # no colon: malformed Basic
        await http.post(INTROSPECT, json={"token": token}, auth=setup.rs.auth)
        await http.post(INTROSPECT, data={"token": [token, token]}, auth=setup.rs.auth)
        await http.post(REVOKE, data={"token": token}, auth=setup.rs.auth)  # not its token
        await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)
        await http.post(INTROSPECT, data={"token": token}, auth=setup.rs.auth)
        await http.post(
            REVOKE,
            content=b"token=" + token.encode(),
            headers={
                "authorization": basic("app-1", wrong_secret),
                "content-type": "application/x-www-form-urlencoded",
            },
        )
        for _ in range(4):  # past throttle_failures: the last failures are answered 429
            await http.post(REVOKE, data={"token": token}, auth=("app-1", wrong_secret))
        await http.get(f"/nope?token={token}")

        records = [r for r in caplog.records if r.name.startswith("keystile")]
        assert len(records) >= 10  # the flows above did log
        for record in records:
            texts = [record.getMessage(), *_texts(record.__dict__)]
            for label, value in secrets.items():
                leaked = [t for t in texts if value in t]
                assert not leaked, f"{label} in log record {record.msg!r}: {leaked}"

    @pytest.mark.parametrize(
        "case", ["swapped-basic", "swapped-post", "grant_type", "scope", "resource"]
    )
    async def test_misplaced_credential_not_logged(self, http, setup, issue_token, caplog, case):
        """A secret or token sent in the wrong field (a common client mistake) is not logged."""
        caplog.set_level(logging.DEBUG, logger="keystile")
        token = await issue_token(setup.app)
        secret = setup.app.secret
        if case == "swapped-basic":
            r = await http.post(TOKEN, data=CC, auth=(secret, "app-1"))
        elif case == "swapped-post":
            r = await http.post(TOKEN, data={**CC, "client_id": secret, "client_secret": "app-1"})
        elif case == "grant_type":
            r = await http.post(TOKEN, data={"grant_type": token}, auth=setup.app.auth)
        elif case == "scope":
            r = await http.post(TOKEN, data={**CC, "scope": secret}, auth=setup.app.auth)
        else:
            r = await http.post(TOKEN, data={**CC, "resource": token}, auth=setup.app.auth)
        assert r.status_code in (400, 401)

        for record in caplog.records:
            texts = [record.getMessage(), *_texts(record.__dict__)]
            for label, value in (("secret", secret), ("token", token)):
                leaked = [t for t in texts if value in t]
                assert not leaked, f"{label} in log record {record.msg!r}: {leaked}"

    async def test_failed_auth_is_logged_with_client_id(self, http, setup, caplog):
        """A failed authentication is logged at WARNING with the client id, for auditing."""
        caplog.set_level(logging.DEBUG, logger="keystile")
        await http.post(TOKEN, data=CC, auth=("app-1", "wrong"))

        failed = [r for r in caplog.records if r.getMessage() == "client authentication failed"]
        assert len(failed) == 1
        assert failed[0].levelno == logging.WARNING
        assert failed[0].__dict__["client_id"] == "app-1"

    async def test_unknown_client_id_logged_as_digest(self, http, setup, caplog):
        """An unregistered client id is logged only as a short SHA-256 digest."""
        caplog.set_level(logging.DEBUG, logger="keystile")
        await http.post(TOKEN, data=CC, auth=("not-registered", "x"))

        failed = [r for r in caplog.records if r.getMessage() == "client authentication failed"]
        assert len(failed) == 1
        fields = failed[0].__dict__
        assert "client_id" not in fields
        assert fields["unknown_client_sha256"] == hashlib.sha256(b"not-registered").hexdigest()[:16]
