"""Replay and reset decisions of the event stream, over a real SQLite event log."""

from __future__ import annotations

from typing import Any

import pytest

from keystile.core.models import ResourceServer
from keystile.server.events import EventStream, event_visible
from keystile.store.base import Event
from tests.conftest import API, OTHER_API, REVOKE


async def _catch_up(app, rs: ResourceServer, resume: int | None) -> tuple[int, list[bytes]]:
    sent: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["body"])

    stream = EventStream(app.endpoints, app.bus)
    position = await stream._catch_up(send, rs, resume)
    return position, sent


async def _revoke_n(http, setup, issue_token, n: int) -> None:
    for _ in range(n):
        token = await issue_token(setup.app)
        r = await http.post(REVOKE, data={"token": token}, auth=setup.app.auth)
        assert r.status_code == 200


@pytest.fixture
async def rs(store) -> ResourceServer:
    found = await store.get_resource_server(API)
    assert found is not None
    return found


class TestCatchUp:
    async def test_replays_after_position(self, app, http, setup, issue_token, rs):
        """Events after the resume point are replayed in order; the position moves on."""
        await _revoke_n(http, setup, issue_token, 3)
        position, sent = await _catch_up(app, rs, 1)
        assert position == 3
        assert [b.split(b"\n")[0] for b in sent] == [b"id: 2", b"id: 3"]

    async def test_purged_resume_point_resets(
        self, app, http, setup, issue_token, rs, clock, store
    ):
        """A resume point whose successors were purged gets a reset, not a silent gap."""
        await _revoke_n(http, setup, issue_token, 2)
        clock.advance(7200)
        await _revoke_n(http, setup, issue_token, 1)  # event 3, recent
        result = await store.purge(clock.now(), token_grace=0, event_retention=3600)
        assert result.events == 2
        position, sent = await _catch_up(app, rs, 1)  # event 2 is gone
        assert position == 3
        assert len(sent) == 1
        assert b"event: reset" in sent[0]

    async def test_everything_purged_resets(self, app, http, setup, issue_token, rs, clock, store):
        """With the whole log purged, any older resume point resets."""
        await _revoke_n(http, setup, issue_token, 2)
        clock.advance(7200)
        await store.purge(clock.now(), token_grace=0, event_retention=3600)
        assert await store.oldest_event_id() is None
        assert await store.latest_event_id() == 2  # ids never go back
        position, sent = await _catch_up(app, rs, 0)
        assert position == 2
        assert b"event: reset" in sent[0]

    async def test_up_to_date_resume_sends_nothing(self, app, http, setup, issue_token, rs):
        """Resuming at the latest id replays nothing and does not reset."""
        await _revoke_n(http, setup, issue_token, 2)
        position, sent = await _catch_up(app, rs, 2)
        assert (position, sent) == (2, [])


class TestVisibility:
    def _event(self, **payload: Any) -> Event:
        return Event(1, "token_revoked", 0, {"client_id": "app-1", "aud": [], **payload})

    def test_audience_rule(self):
        """A token event is visible to a resource server in the token's audience only."""
        rs = ResourceServer(API, "api", frozenset({"rs-1"}))
        assert event_visible(rs, self._event(aud=[API]))
        assert not event_visible(rs, self._event(aud=[OTHER_API]))

    def test_owner_and_any_rules(self):
        """The owner and any rules widen visibility exactly as at introspection."""
        owner = ResourceServer(API, "api", frozenset({"app-1"}), rules=frozenset({"owner"}))
        anyone = ResourceServer(API, "api", frozenset({"rs-1"}), rules=frozenset({"any"}))
        assert event_visible(owner, self._event(aud=[OTHER_API]))
        assert event_visible(anyone, self._event(aud=[OTHER_API]))

    def test_client_events_go_to_everyone(self):
        """Client-level events concern every cache."""
        rs = ResourceServer(API, "api", frozenset({"rs-1"}))
        assert event_visible(rs, Event(1, "client_disabled", 0, {"client_id": "x"}))
