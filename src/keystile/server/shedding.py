"""Load shedding: past ``max_in_flight`` requests in progress, answer 503 at once.

``KeystileApp`` (server/app.py) counts; this module says what is not counted and what the
refusal looks like.

One process serves every connection from one event loop. When requests arrive faster than
it answers them, each waits behind all the others and the tail latency of every answer
grows without bound; a caller is better served by a fast, honest "busy, retry in a second"
than by an answer after seconds. The limit counts requests this process has started and
not finished; what never waits on anything is not counted and never shed:

- fast-path introspection answers (server/fastpath.py answers them inside the read callback,
  so they never hold a slot while others wait),
- ``/healthz``, ``/readyz`` and ``/metrics`` (probes and scrapes must see an overloaded
  server as alive and measurable, not as dead),
- revocation event streams (long-lived by design; one per subscriber).

The refusal is prebuilt bytes: ``503`` with ``Retry-After: 1`` (RFC 9110 §15.6.4, §10.2.3)
and the RFC 6749 §4.1.2.1 error code ``temporarily_unavailable`` as a JSON body, with the
same no-store headers as every OAuth answer. Refusals are counted in
``keystile_requests_shed_total``.
"""

from __future__ import annotations

from typing import Any

from keystile.core.metadata import EVENTS_PATH
from keystile.server.http import Send

NOT_COUNTED = frozenset({"/healthz", "/readyz", "/metrics", EVENTS_PATH})

SHED_BODY = (
    b'{"error":"temporarily_unavailable",'
    b'"error_description":"the server is busy; retry after the Retry-After delay"}'
)
_SHED_START: dict[str, Any] = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(SHED_BODY)).encode()),
        (b"retry-after", b"1"),
        (b"cache-control", b"no-store"),
        (b"pragma", b"no-cache"),
        (b"x-content-type-options", b"nosniff"),
    ],
}
_SHED_BODY: dict[str, Any] = {"type": "http.response.body", "body": SHED_BODY}


async def send_busy(send: Send) -> None:
    """The refusal: two prebuilt messages, no parsing, no task, no allocation per request."""
    await send(_SHED_START)
    await send(_SHED_BODY)
