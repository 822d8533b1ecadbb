"""Writes to the backend's response cache over its admin API (invalidate by prefix, clear) and warming after.

Every call goes through the shared BackendClient, so login, CSRF, the API key and the request budget are
handled there; admin calls wait for the budget rather than fail. A refused or failed call becomes a
StrategyError naming the endpoint and the status. Warming is best effort: what could not be warmed is
reported, never raised, because the cache fills itself on the next requests anyway.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from metrics.backend import BackendClient, BackendError, parse_cache_stats
from metrics.snapshot import CacheStatsSample
from strategies.base import StrategyError

WARM_MAX_WAIT_SECONDS = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmResult:
    """Which endpoints answered (with their seconds) and which did not (with the reason)."""

    warmed: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    failed: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


async def read_stats(client: BackendClient) -> CacheStatsSample:
    """A fresh reading of the cache counters (never a remembered one), with the admin duplicate as fallback."""
    try:
        try:
            data = await client.admin("GET", "/api/cache/stats", wait=True)
        except BackendError as exc:
            if exc.status != 404:
                raise
            data = await client.admin("GET", "/api/admin/cache/stats", wait=True)
        return parse_cache_stats(data)
    except BackendError as exc:
        raise StrategyError(f"cannot read the backend cache stats: {exc}") from None


async def invalidate(client: BackendClient, pattern: str) -> int:
    """Drop the entries whose URL path starts with ``pattern``; returns how many the backend dropped."""
    try:
        data = await client.admin("POST", "/api/cache/invalidate", {"pattern": pattern}, wait=True)
    except BackendError as exc:
        raise StrategyError(f"cache invalidation of {pattern} failed: {exc}") from None
    return _int(data.get("count")) or 0


async def clear(client: BackendClient) -> int | None:
    """Empty the whole cache (internal caches too); returns the count when the backend says it."""
    try:
        try:
            data = await client.admin("POST", "/api/cache/clear", {}, wait=True)
        except BackendError as exc:
            if exc.status != 404:
                raise
            data = await client.admin("POST", "/api/admin/cache/clear", {}, wait=True)
    except BackendError as exc:
        raise StrategyError(f"cache clear failed: {exc}") from None
    inner = data.get("data")
    return _int(inner.get("cleared")) if isinstance(inner, Mapping) else None


async def warm(
    client: BackendClient, endpoints: tuple[str, ...], *, max_wait: float = WARM_MAX_WAIT_SECONDS
) -> WarmResult:
    """GET each public endpoint once so the next viewers hit a filled cache; waits briefly for the budget."""
    warmed: dict[str, float] = {}
    failed: dict[str, str] = {}
    for endpoint in endpoints:
        delay = client.budget.wait_seconds()
        if delay > max_wait:
            failed[endpoint] = f"request budget spent for {delay:.0f} s"
            continue
        if delay > 0:
            await asyncio.sleep(delay)
        started = time.monotonic()
        try:
            resp = await client.get_public(endpoint, wait=True)
        except BackendError as exc:
            failed[endpoint] = str(exc)
            continue
        if resp.status >= 400:
            failed[endpoint] = f"answered {resp.status}"
        else:
            warmed[endpoint] = round(time.monotonic() - started, 4)
    return WarmResult(warmed=MappingProxyType(warmed), failed=MappingProxyType(failed))
