"""What DPoP checks remember (RFC 9449 §11.1 replay, §8/§9 nonces), without I/O.

``MemoryReplayCache`` remembers proof ``jti``s in one process, in bounded memory.
Processes that must share it (several AS instances, several gateways) use the store or
Redis behind the same idea (``server/dpop_replay.py``).

``NonceSource`` makes server nonces that need no storage: a nonce is a time window number
and an HMAC of it, so every process holding the same secret accepts the others' nonces, and
a nonce is good for the window it was made in and the next one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict

DEFAULT_MAX_ENTRIES = 200_000
NONCE_WINDOW = 60  # seconds; a nonce is accepted for one to two windows


class MemoryReplayCache:
    """Seen proof ``jti``s until they expire: ``cache.first_use(proof.replay_key,
    proof.replay_expiry(), now)`` is True once per key.

    Entries go in roughly in expiry order (every proof is accepted for the same window
    after its ``iat``), so expired ones are dropped from the front as new ones arrive: each
    call costs O(1) amortized. Past ``max_entries`` live entries the oldest is forgotten
    early; that shortens the replay window under a flood instead of refusing honest
    callers, and ``evicted_early`` counts it so operators can raise the bound.
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._max = max_entries
        self._entries: OrderedDict[str, int] = OrderedDict()
        self.evicted_early = 0
        # Flask serves from threads: a check-and-record must be one step, or two threads
        # could both take the same proof for its first use.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def first_use(self, key: str, expires_at: int, now: int) -> bool:
        with self._lock:
            return self._first_use(key, expires_at, now)

    def _first_use(self, key: str, expires_at: int, now: int) -> bool:
        entries = self._entries
        while entries:
            oldest, exp = next(iter(entries.items()))
            if exp > now:
                break
            del entries[oldest]
        seen = entries.get(key)
        if seen is not None and seen > now:
            return False
        if len(entries) >= self._max:
            entries.popitem(last=False)
            self.evicted_early += 1
        entries[key] = expires_at
        return True


class NonceSource:
    """Stateless DPoP nonces (RFC 9449 §8, §9): ``nonces.current(now)`` to hand out,
    ``nonces.is_current(value, now)`` to check. Give every process the same ``secret`` to
    let them accept each other's nonces; without one, a random per-process secret."""

    def __init__(self, secret: bytes | None = None, *, window: int = NONCE_WINDOW) -> None:
        self._secret = secret if secret else secrets.token_bytes(32)
        self._window = window

    def _make(self, number: int) -> str:
        raw = number.to_bytes(8, "big")
        mac = hmac.new(self._secret, b"dpop-nonce" + raw, hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(raw + mac).rstrip(b"=").decode("ascii")

    def current(self, now: int) -> str:
        return self._make(now // self._window)

    def is_current(self, value: str | None, now: int) -> bool:
        if value is None or len(value) != 32:  # 24 bytes of base64url
            return False
        number = now // self._window
        # Compared in constant time: a nonce is not secret, but there is no reason to
        # tell a forger how close it came.
        ok = hmac.compare_digest(value, self._make(number))
        return hmac.compare_digest(value, self._make(number - 1)) or ok
