"""The stale lookup behind on_unavailable = "stale": bounded by age and exp, never revoked."""

from __future__ import annotations

from keystile.resource.cache import TokenCache
from keystile.resource.principal import Principal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def principal(exp: int | None) -> Principal:
    return Principal(sub="s", client_id="c", username=None, scopes=frozenset(), aud=(), exp=exp)


def cache_with(clock: Clock, wall: Clock) -> TokenCache:
    return TokenCache(max_ttl=1.0, negative_ttl=5.0, clock=clock, wall=wall)


def test_stale_within_max_age_only():
    """Past its TTL an entry is a miss, but a stale answer until max_age has passed."""
    clock, wall = Clock(), Clock()
    cache = cache_with(clock, wall)
    cache.put(b"k", principal(exp=None))
    clock.now += 2
    assert cache.get_stale(b"k", 5.0) is not None
    clock.now += 3.5
    assert cache.get_stale(b"k", 5.0) is None


def test_never_past_exp():
    """An entry whose token has expired is never served stale, whatever max_age says."""
    clock, wall = Clock(), Clock()
    cache = cache_with(clock, wall)
    cache.put(b"k", principal(exp=int(wall.now) + 10))
    wall.now += 11
    assert cache.get_stale(b"k", 3600.0) is None


def test_never_after_revocation_or_inactive():
    """An evicted (revoked) entry, or one replaced by an inactive answer, has no stale answer."""
    clock, wall = Clock(), Clock()
    cache = cache_with(clock, wall)
    cache.put(b"a", principal(exp=None))
    cache.put(b"b", principal(exp=None))
    cache.evict(b"a")
    cache.put(b"b", None)
    assert cache.get_stale(b"a", 60.0) is None
    assert cache.get_stale(b"b", 60.0) is None
