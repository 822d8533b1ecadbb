"""The backend's in-memory cache (services/cacheService.js): one map and one set of counters.

The response-cache middleware (middleware/cacheMiddleware.js) and the services' own read-model caches
(the public camera list, the area list, ...) share this map and its counters, so ``/api/cache/stats``
counts both: a route-cache miss on ``/api/cameras/active`` is followed by a lookup of the service's
camera list, which is a hit while that entry lives. Counters, as the backend keeps them:

- ``get``: a missing or expired key is a miss (an expired entry is dropped without counting a delete);
- ``set``: one ``sets`` per store;
- ``invalidate(prefix)``: ``invalidations`` grows by the number of entries dropped;
- ``clear``: ``invalidations`` grows by the number of entries held;
- the 60 s sweep drops expired entries and counts nothing.

``hitRate`` is ``"12.34%"``, or ``"0%"`` before the first lookup. With ``max_size`` set the cache
behaves like the older backend's bounded LRU instead, counting evictions (``--legacy-cache-shape``).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

LEGACY_MAX_SIZE = 1000
MIDDLEWARE_PREFIX = "middleware:GET:"
# the services' keys and lifetimes (cameraService.js CAMERA_READ_MODEL_TTL_MS, areaService.js CacheTTL.LONG)
CAMERA_LIST_KEY = "cameras:public-landing-camera-list"
CAMERA_MAP_KEY = "cameras:public-map-camera-list"
AREA_LIST_KEY = "areas:all:public"
SERVICE_TTL_SECONDS = {CAMERA_LIST_KEY: 15.0, CAMERA_MAP_KEY: 15.0, AREA_LIST_KEY: 300.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedResponse:
    """One cached value (a response body for the middleware) and when it stops being valid."""

    body: Any
    content_type: str
    expires_at: float | None


def middleware_key(url: str) -> str:
    """cacheMiddleware's key: ``middleware:GET:<url as sent>:<JSON of the parsed query>``."""
    query = urllib.parse.urlsplit(url).query
    parsed: dict[str, Any] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name in parsed:
            previous = parsed[name]
            parsed[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            parsed[name] = value
    return f"{MIDDLEWARE_PREFIX}{url}:{json.dumps(parsed, separators=(',', ':'), ensure_ascii=False)}"


class ResponseCache:
    """The shared TTL map with the backend's counters (see the module docstring)."""

    def __init__(
        self,
        *,
        ttl_seconds: float,
        max_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start empty with zeroed counters; ``ttl_seconds`` is the route cache's lifetime (30 s)."""
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
        """Number of entries held, expired ones included until swept or looked up."""
        return len(self._entries)

    def keys(self) -> list[str]:
        """Current keys, oldest first."""
        return list(self._entries)

    def get(self, key: str) -> CachedResponse | None:
        """A live entry (a hit) or None (a miss); an expired entry is dropped, counted only as the miss."""
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at is not None and self._clock() > entry.expires_at:
            del self._entries[key]
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        if self.max_size is not None:
            self._entries.move_to_end(key)
        return entry

    def set(self, key: str, body: Any, content_type: str = "", ttl_seconds: float | None = None) -> None:
        """Store a value for ``ttl_seconds`` (the route TTL when None; 0 or less: never expires)."""
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        expires = self._clock() + ttl if ttl > 0 else None
        self.sets += 1
        self._entries[key] = CachedResponse(body=body, content_type=content_type, expires_at=expires)
        if self.max_size is not None:
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
                self.evictions += 1

    def delete(self, key: str) -> bool:
        """Drop one key; counts a delete when it was there."""
        if key in self._entries:
            del self._entries[key]
            self.deletes += 1
            return True
        return False

    def invalidate_prefix(self, prefix: str) -> int:
        """cacheInvalidate: drop every key starting with ``prefix``; ``invalidations`` grows by that many."""
        doomed = [key for key in self._entries if key.startswith(prefix)]
        for key in doomed:
            del self._entries[key]
        self.invalidations += len(doomed)
        return len(doomed)

    def invalidate(self, pattern: str) -> int:
        """POST /api/cache/invalidate: the middleware's entries whose URL starts with ``pattern``."""
        return self.invalidate_prefix(MIDDLEWARE_PREFIX + pattern)

    def clear(self) -> int:
        """cacheClear: drop every entry; ``invalidations`` grows by how many there were."""
        count = len(self._entries)
        self._entries.clear()
        self.invalidations += count
        return count

    def sweep(self) -> int:
        """The backend's 60 s sweep: drop expired entries, counting nothing; return how many."""
        now = self._clock()
        expired = [
            key for key, entry in self._entries.items() if entry.expires_at is not None and now > entry.expires_at
        ]
        for key in expired:
            del self._entries[key]
        if self.max_size is not None:
            self.evictions += len(expired)
        return len(expired)

    def hit_rate(self) -> float:
        """Hits as a percentage of lookups (0 when there were none)."""
        lookups = self.hits + self.misses
        return 100.0 * self.hits / lookups if lookups else 0.0

    def stats(self, *, legacy: bool = False) -> dict[str, Any]:
        """The ``data`` object of GET /api/cache/stats, current or older shape."""
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
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "sets": self.sets,
            "deletes": self.deletes,
            "invalidations": self.invalidations,
            "hitRate": f"{self.hit_rate():.2f}%" if lookups else "0%",
            "size": self.size,
        }
