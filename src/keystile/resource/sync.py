"""Validating bearer tokens by introspection (RFC 7662) from threads: Flask, Django, WSGI.

``SyncTokenValidator`` is ``TokenValidator`` for code without an event loop: the same RFC 8414
discovery, the same cache rules (``cache.py``, guarded by a lock), the same errors, one AS
call for N threads asking about the same uncached token, and an optional daemon thread that
follows the AS's revocation events and evicts at once::

    validator = SyncTokenValidator(issuer="https://auth.example.com",
                                   client_id="orders-api", client_secret="…")
    validator.start()
    principal = validator.validate(token)                 # raises InvalidToken
    validator.require(principal, scopes={"orders:read"})  # raises InsufficientScope
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
from collections.abc import Iterable
from typing import Any

import httpx

from keystile.errors import IntrospectionUnavailable, InvalidToken
from keystile.resource.cache import MISS, TokenCache, cache_key
from keystile.resource.events import EventParser, apply_event
from keystile.resource.introspection import (
    AuthMethod,
    basic_authorization,
    check_scopes,
    discovered_endpoints,
    introspection_request,
    metadata_url,
    principal_from_response,
    tls_verify,
)
from keystile.resource.principal import Principal

log = logging.getLogger("keystile.resource")


class _Flight:
    """One introspection call that other threads wait for."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Principal | None = None
        self.error: BaseException | None = None


class SyncTokenValidator:
    """Thread-safe introspection client with a safe cache, single-flight and events."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        issuer: str | None = None,
        introspection_endpoint: str | None = None,
        events_endpoint: str | None = None,
        events: bool = True,
        auth_method: AuthMethod = "client_secret_basic",
        audience: str | None = None,
        max_ttl: float = 60.0,
        negative_ttl: float = 5.0,
        degraded_ttl: float = 5.0,
        max_entries: int = 100_000,
        timeout: float = 5.0,
        ca_file: str | os.PathLike[str] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        if issuer is None and introspection_endpoint is None:
            raise ValueError("give issuer (for RFC 8414 discovery) or introspection_endpoint")
        self.client_id = client_id
        self._secret = client_secret
        self.issuer = issuer.rstrip("/") if issuer else None
        self.introspection_endpoint = introspection_endpoint
        self.events_endpoint = events_endpoint
        self.events_enabled = events
        self.auth_method = auth_method
        self.audience = audience
        self.timeout = timeout
        self.cache = TokenCache(
            max_entries=max_entries,
            max_ttl=max_ttl,
            negative_ttl=negative_ttl,
            degraded_ttl=degraded_ttl,
        )
        # Every use of the cache holds this lock: its LRU bookkeeping is not thread-safe,
        # and the events thread evicts while request threads read. Held for a dict lookup,
        # never across I/O.
        self.lock = threading.Lock()
        self._own_http = http is None
        if http is not None and ca_file is not None:
            raise ValueError("give ca_file or http (a client of your own), not both")
        self.http = http or httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            trust_env=False,
            verify=tls_verify(ca_file),
        )
        self._inflight: dict[bytes, _Flight] = {}
        self._discovery = threading.Lock()
        self.introspections = 0  # calls made to the AS, for tests and metrics
        self.stream: SyncEventStream | None = None

    @property
    def basic_authorization(self) -> str:
        return basic_authorization(self.client_id, self._secret)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Discover the AS if needed and start the events thread if it has a stream."""
        if self.introspection_endpoint is None or (
            self.events_enabled and self.events_endpoint is None and self.issuer
        ):
            self._discover()
        if self.events_enabled and self.events_endpoint and self.stream is None:
            with self.lock:
                self.cache.stream_connected = False  # degraded until the stream says ready
            self.stream = SyncEventStream(self)
            self.stream.start()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream = None
        if self._own_http:
            self.http.close()

    def __enter__(self) -> SyncTokenValidator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _discover(self) -> None:
        assert self.issuer is not None
        url = metadata_url(self.issuer)
        with self._discovery:
            try:
                r = self.http.get(url)
                r.raise_for_status()
                meta = r.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise IntrospectionUnavailable(f"cannot read AS metadata at {url}: {exc}") from exc
            self.introspection_endpoint, self.events_endpoint = discovered_endpoints(
                meta,
                issuer=self.issuer,
                url=url,
                introspection_endpoint=self.introspection_endpoint,
                events_endpoint=self.events_endpoint,
            )

    # -- validation -------------------------------------------------------------------------

    def cached(self, token: str) -> Principal | object | None:
        """The cached answer for a token without any I/O: a Principal, None, or MISS."""
        key = cache_key(token)
        with self.lock:
            return self.cache.get(key)

    def validate(self, token: str) -> Principal:
        """The principal of an active token; InvalidToken otherwise (RFC 6750 §3.1).

        Raises IntrospectionUnavailable when the AS cannot answer: fail closed, but do not
        call the token bad.
        """
        key = cache_key(token)
        flight: _Flight | None = None
        leader = False
        with self.lock:
            found = self.cache.get(key)
            if found is MISS:
                # Looking in the cache and joining (or starting) the flight under one lock,
                # so a thread cannot miss the cache just before the leader fills it and then
                # start a second call.
                flight = self._inflight.get(key)
                if flight is None:
                    flight = self._inflight[key] = _Flight()
                    leader = True
        if flight is not None:
            found = self._lead(key, token, flight) if leader else self._follow(flight)
        if found is None:
            raise InvalidToken("the access token is not active")
        assert isinstance(found, Principal)
        if self.audience is not None and self.audience not in found.aud:
            raise InvalidToken("the access token is not meant for this resource")
        return found

    @staticmethod
    def require(principal: Principal, scopes: Iterable[str] = ()) -> None:
        """Raise InsufficientScope (403, RFC 6750 §3.1) unless every scope was granted."""
        check_scopes(principal, scopes)

    def _lead(self, key: bytes, token: str, flight: _Flight) -> Principal | None:
        try:
            principal = self.introspect(token)
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            with self.lock:
                self.cache.put(key, principal)
            flight.result = principal
            return principal
        finally:
            with self.lock:
                del self._inflight[key]
            flight.done.set()

    def _follow(self, flight: _Flight) -> Principal | None:
        # The leader's call is bounded by the HTTP timeouts; this bound only guards
        # against a leader that never comes back.
        if not flight.done.wait(self.timeout * 4 + 1):
            raise IntrospectionUnavailable("introspection did not finish in time")
        if flight.error is not None:
            # A fresh exception per thread: one instance raised in many threads would
            # collect all their tracebacks.
            error = flight.error
            if isinstance(error, IntrospectionUnavailable):
                raise IntrospectionUnavailable(str(error)) from error
            raise IntrospectionUnavailable("introspection failed") from error
        return flight.result

    def introspect(self, token: str) -> Principal | None:
        """One RFC 7662 call, no cache: the principal, or None when inactive."""
        if self.introspection_endpoint is None:
            self._discover()
        assert self.introspection_endpoint is not None
        data, headers = introspection_request(
            token,
            client_id=self.client_id,
            client_secret=self._secret,
            auth_method=self.auth_method,
        )
        with self.lock:
            self.introspections += 1
        try:
            r = self.http.post(self.introspection_endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise IntrospectionUnavailable(f"introspection failed: {type(exc).__name__}") from exc
        return principal_from_response(r)


class SyncEventStream:
    """A daemon thread following the AS's revocation events (docs/events.md).

    Applies each event to the validator's cache under its lock (``events.apply_event``, the
    same rules as the asyncio client), resumes with ``Last-Event-ID``, and reconnects with
    exponential backoff and jitter. While disconnected the cache is degraded.
    """

    def __init__(
        self,
        validator: SyncTokenValidator,
        *,
        backoff_min: float = 0.05,
        backoff_max: float = 5.0,
        read_timeout: float = 45.0,
    ) -> None:
        self.validator = validator
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.read_timeout = read_timeout
        self.last_event_id: str | None = None
        self.connected = threading.Event()
        self.applied = 0  # events applied, for tests and metrics
        self.connects = 0
        self._stopping = threading.Event()
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, name="keystile-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread: wake its blocking read by shutting the stream's socket down."""
        self._stopping.set()
        response = self._response
        if response is not None:
            _shutdown(response)
        self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.backoff_min
        while not self._stopping.is_set():
            try:
                self._follow()
                delay = self.backoff_min  # the server ended a healthy stream: come back soon
            except Exception as exc:
                # The thread must outlive any failure (a bad frame, a dropped connection):
                # it is what keeps the cache honest.
                if not self._stopping.is_set():
                    log.warning("event stream lost", extra={"error": type(exc).__name__})
            self._disconnected()
            if self._stopping.wait(delay * (0.5 + random.random())):  # noqa: S311 - jitter
                break
            delay = min(self.backoff_max, delay * 2)

    def _disconnected(self) -> None:
        self.connected.clear()
        with self.validator.lock:
            self.validator.cache.stream_connected = False

    def _follow(self) -> None:
        v = self.validator
        assert v.events_endpoint is not None
        headers = {"accept": "text/event-stream", "authorization": v.basic_authorization}
        if self.last_event_id is not None:
            headers["last-event-id"] = self.last_event_id
        timeout = httpx.Timeout(10.0, read=self.read_timeout)
        with v.http.stream("GET", v.events_endpoint, headers=headers, timeout=timeout) as r:
            if r.status_code != 200:
                raise httpx.HTTPStatusError(
                    f"event stream answered {r.status_code}", request=r.request, response=r
                )
            self._response = r
            try:
                if self._stopping.is_set():
                    return
                self.connects += 1
                parser = EventParser()
                for line in r.iter_lines():
                    fields = parser.feed(line)
                    if fields is not None:
                        self._apply(fields)
            finally:
                self._response = None

    def _apply(self, fields: dict[str, str]) -> None:
        event = fields.get("event", "message")
        with self.validator.lock:
            apply_event(self.validator.cache, event, fields.get("data"))
        if event == "ready":
            self.connected.set()
        if "id" in fields:
            self.last_event_id = fields["id"]
        self.applied += 1


def _shutdown(response: httpx.Response) -> None:
    """Wake a thread blocked reading ``response``: closing a socket from another thread does
    not interrupt a pending recv() on Linux, shutting it down does."""
    stream: Any = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)
