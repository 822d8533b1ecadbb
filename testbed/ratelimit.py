"""Per-client rate limits of the backend (middleware/rateLimiter.js).

A fixed 60 s window per ``<client>:<class>`` key: the first request opens the window, ``limit`` requests
pass, the rest get 429 until the window has passed. The client is ``CF-Connecting-IP`` when sent, else
the peer address. Classes: ``/api/auth*`` 30, ``/api/admin*`` 60, everything else 100 a minute; the
whitelist (``/health``, ``/api/stream``, ``/api/viewer/heartbeat``, ``/hls`` and paths below them) is not
counted. The match uses the URL as sent, query string included, as the backend's does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

WINDOW_SECONDS = 60.0
WHITELIST = ("/health", "/api/stream", "/api/viewer/heartbeat", "/hls")
TOO_MANY = "Too many requests. Please try again later."


class RouteClass(StrEnum):
    """Which limit a path falls under."""

    DEFAULT = "public"
    ADMIN = "admin"
    AUTH = "auth"


BASE_LIMITS: dict[RouteClass, int] = {RouteClass.DEFAULT: 100, RouteClass.ADMIN: 60, RouteClass.AUTH: 30}


def route_class(url: str) -> RouteClass | None:
    """The limit class of a URL (path and query), None when it is not limited."""
    if url.startswith("/_testbed/"):
        return None
    if any(url == prefix or url.startswith(prefix + "/") for prefix in WHITELIST):
        return None
    if url.startswith("/api/auth"):
        return RouteClass.AUTH
    if url.startswith("/api/admin"):
        return RouteClass.ADMIN
    return RouteClass.DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Outcome of counting one request; ``reset_epoch`` is the window's end in Unix seconds."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int
    reset_epoch: int


@dataclass(slots=True)
class _Window:
    started: float
    count: int


class RateLimiter:
    """Fixed-window request counters per (client, route class)."""

    def __init__(
        self,
        *,
        scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """Scale every base limit by ``scale`` (at least 1 request per window)."""
        self.limits = {cls: max(1, round(base * scale)) for cls, base in BASE_LIMITS.items()}
        self._clock = clock
        self._wall = wall
        self._windows: dict[str, _Window] = {}

    def reset(self) -> None:
        """Forget all counted requests."""
        self._windows.clear()

    def hit(self, client: str, cls: RouteClass) -> Decision:
        """Count a request (checkRateLimit); refuse it once the window holds ``limit`` requests."""
        now = self._clock()
        limit = self.limits[cls]
        window = self._windows.get(f"{client}:{cls}")
        if window is None:
            window = self._windows[f"{client}:{cls}"] = _Window(started=now, count=0)
        if now - window.started > WINDOW_SECONDS:
            window.started, window.count = now, 0
        left = window.started + WINDOW_SECONDS - now
        reset_epoch = math.ceil(self._wall() + left)
        retry_after = max(1, math.ceil(left))
        if window.count >= limit:
            return Decision(allowed=False, limit=limit, remaining=0, retry_after=retry_after, reset_epoch=reset_epoch)
        remaining = max(0, limit - window.count) - 1
        window.count += 1
        return Decision(allowed=True, limit=limit, remaining=remaining, retry_after=0, reset_epoch=reset_epoch)
