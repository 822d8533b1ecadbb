"""Per-IP rate limits of the backend: sliding one-minute windows per route class."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

WINDOW_SECONDS = 60.0


class RouteClass(StrEnum):
    """Which limit a path falls under."""

    DEFAULT = "default"
    ADMIN = "admin"
    AUTH = "auth"


BASE_LIMITS: dict[RouteClass, int] = {RouteClass.DEFAULT: 100, RouteClass.ADMIN: 60, RouteClass.AUTH: 30}


def route_class(path: str) -> RouteClass | None:
    """The limit class of a path, None when it is not limited (/health and the control routes)."""
    if path == "/health" or path.startswith("/_testbed/"):
        return None
    if path.startswith("/api/auth/"):
        return RouteClass.AUTH
    if path.startswith("/api/admin/"):
        return RouteClass.ADMIN
    return RouteClass.DEFAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Outcome of counting one request."""

    allowed: bool
    limit: int
    remaining: int
    retry_after: int
    reset_after: int


class RateLimiter:
    """Sliding-window request log per (client IP, route class)."""

    def __init__(self, *, scale: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        """Scale every base limit by `scale` (at least 1 request per window)."""
        self.limits = {cls: max(1, round(base * scale)) for cls, base in BASE_LIMITS.items()}
        self._clock = clock
        self._log: dict[tuple[str, RouteClass], deque[float]] = {}

    def reset(self) -> None:
        """Forget all counted requests."""
        self._log.clear()

    def hit(self, ip: str, cls: RouteClass) -> Decision:
        """Count a request; refuse it when the window already holds `limit` requests."""
        now = self._clock()
        limit = self.limits[cls]
        log = self._log.setdefault((ip, cls), deque())
        while log and log[0] <= now - WINDOW_SECONDS:
            log.popleft()
        if len(log) >= limit:
            wait = max(1, math.ceil(log[0] + WINDOW_SECONDS - now))
            return Decision(allowed=False, limit=limit, remaining=0, retry_after=wait, reset_after=wait)
        log.append(now)
        reset_after = max(1, math.ceil(log[0] + WINDOW_SECONDS - now))
        return Decision(allowed=True, limit=limit, remaining=limit - len(log), retry_after=0, reset_after=reset_after)
