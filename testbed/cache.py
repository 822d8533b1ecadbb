"""The backend's response cache: an unbounded map with per-entry TTL and a periodic sweep."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LEGACY_MAX_SIZE = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedResponse:
    """One cached HTTP response body and when it stops being valid."""

    body: bytes
    content_type: str
    expires_at: float


class ResponseCache:
    """TTL cache keyed by the full request URL (path and query string).

    Unbounded, like the current backend: every distinct query string adds an entry that
    only the sweep removes once expired. With `max_size` set it behaves like the older
    backend's bounded LRU instead, counting evictions.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float,
        max_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start empty with zeroed counters."""
        self.ttl_seconds = ttl_seconds
        self.max_size = max_size
        self._clock = clock
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero the counters (entries are kept)."""
        self.hits = 0
        self.misses = 0
        self.sets = 0
        self.deletes = 0
        self.invalidations = 0
        self.evictions = 0

    @property
    def size(self) -> int:
        """Number of entries held, expired ones included until swept."""
        return len(self._entries)

    def keys(self) -> list[str]:
        """Current keys, oldest first."""
        return list(self._entries)

    def get(self, key: str) -> CachedResponse | None:
        """Return a live entry (a hit) or None (a miss); an expired entry is dropped."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self._clock():
            del self._entries[key]
            self.deletes += 1
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def set(self, key: str, body: bytes, content_type: str, ttl_seconds: float | None = None) -> None:
        """Store a response for `ttl_seconds` (default TTL when None)."""
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        self._entries[key] = CachedResponse(body=body, content_type=content_type, expires_at=self._clock() + ttl)
        self._entries.move_to_end(key)
        self.sets += 1
        if self.max_size is not None:
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
                self.evictions += 1

    def invalidate(self, pattern: str) -> int:
        """Drop entries whose URL path starts with `pattern`; return how many."""
        doomed = [key for key in self._entries if key.split("?", 1)[0].startswith(pattern)]
        for key in doomed:
            del self._entries[key]
        self.deletes += len(doomed)
        self.invalidations += 1
        return len(doomed)

    def clear(self) -> int:
        """Drop every entry; return how many there were."""
        count = len(self._entries)
        self._entries.clear()
        self.deletes += count
        return count

    def sweep(self) -> int:
        """Drop expired entries (the backend's 60 s sweep); return how many."""
        now = self._clock()
        expired = [key for key, entry in self._entries.items() if entry.expires_at <= now]
        for key in expired:
            del self._entries[key]
        self.deletes += len(expired)
        self.evictions += len(expired)
        return len(expired)

    def hit_rate(self) -> float:
        """Hits as a percentage of lookups (0 when there were none)."""
        lookups = self.hits + self.misses
        return 100.0 * self.hits / lookups if lookups else 0.0

    def stats(self, *, legacy: bool = False) -> dict[str, Any]:
        """The `data` object of GET /api/cache/stats, current or older shape."""
        if legacy:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "sets": self.sets,
                "evictions": self.evictions,
                "size": self.size,
                "maxSize": self.max_size if self.max_size is not None else LEGACY_MAX_SIZE,
                "hitRate": round(self.hit_rate(), 2),
            }
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "deletes": self.deletes,
            "invalidations": self.invalidations,
            "hitRate": f"{self.hit_rate():.2f}%",
            "size": self.size,
        }
