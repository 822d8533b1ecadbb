"""The cache strategy: keep the backend's response cache useful, drop its junk, and warm it after a clear."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from config import units
from config.settings import CacheOptions, Settings, StrategyOptions
from metrics.backend import BackendClient
from metrics.window import Windows
from strategies.actions import backend_cache
from strategies.base import (
    Action,
    ApplyResult,
    Built,
    Change,
    Direction,
    ExpectedEffect,
    Finding,
    Plan,
    Skipped,
    Strategy,
    StrategyContext,
    StrategyDeps,
    StrategyError,
    TriggerSpec,
    decode,
    options_as,
)

# signals this strategy derives from the sampled counters and keeps in the shared windows
RECENT_HIT_RATE = "cache_recent_hit_rate"
CLEARED = "cache_cleared"
JUNK_SHARE = "cache_junk_share"

INVALIDATE = "cache_invalidate"
CLEAR = "cache_clear"
WARM = "cache_warm"


class Cause(StrEnum):
    """Why a cleanup runs: too many entries, a collapsed hit rate, junk keys, or slow hot endpoints."""

    ENTRIES = "entries"
    HIT_RATE = "hit_rate"
    JUNK = "junk"
    RESPONSE = "response"


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmCache(Action):
    """After someone else's clear: fetch the hot endpoints once each."""

    kind = "cache.warm"
    warm: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanCache(Action):
    """Invalidate the hot path prefixes (clear everything when that is not enough), then warm the hot endpoints.

    The figures after ``clear_fallback`` are what planning saw, kept for the journal.
    """

    kind = "cache.clean"
    cause: Cause
    prefixes: tuple[str, ...]
    warm: tuple[str, ...]
    limit: int
    clear_fallback: bool = False
    entries_before: int | None = None
    recent_lookups: int | None = None
    recent_hit_rate: float | None = None
    junk_share: float | None = None
    response_seconds: float | None = None
    response_limit_seconds: float | None = None


# the lifetime hit rate the backend reports moves slowly; one percentage point is a visible recovery
HIT_RATE_RECOVERY = 0.01
# a clear leaves at most a tenth of the entries (or only what the probe re-fetched at once)
CLEAR_RESIDUE_RATIO = 0.1
# a clear (or an invalidation) counts the entries it drops among the removals; the expiry sweep counts nothing,
# so a drop is someone's clear only when at least this share of the lost entries shows up there
CLEAR_COUNTED_SHARE = 0.5
# misses that add fewer new entries than this share are repeats of keys that expired (TTL), not junk
TTL_NEW_ENTRY_SHARE = 0.2
FULL_RATIO = 0.95
RESPONSE = "response_time_seconds"


@dataclass(frozen=True, slots=True, kw_only=True)
class Slowness:
    """Hot endpoints slower than their line while /health is fast: the typical time, the line, /health's time."""

    typical: float
    limit: float
    health: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CounterPoint:
    """One sample of the cache counters: when, lifetime hits, lookups and removals, entries held."""

    at: float
    hits: int
    lookups: int
    entries: int
    # lifetime entries removed by invalidations, deletes and clears; None when the sample did not have it
    removals: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheActivity:
    """Lookups, hits and new entries over a span of samples, from counter deltas (never lifetime totals)."""

    lookups: int
    hits: int
    new_entries: int
    samples: int
    seconds: float

    @property
    def misses(self) -> int:
        """Lookups that missed."""
        return self.lookups - self.hits

    @property
    def hit_rate(self) -> float | None:
        """Hits per lookup in the span; None without lookups."""
        return self.hits / self.lookups if self.lookups else None


def counter_points(windows: Windows) -> list[CounterPoint]:
    """The cache counters of every sample in the windows that has all three of them, oldest first."""
    rates = dict(windows.points("cache_hit_rate"))
    entries = dict(windows.points("cache_entries"))
    removals = dict(windows.points("cache_removals"))
    out: list[CounterPoint] = []
    for at, lookups in windows.points("cache_lookups"):
        rate, size = rates.get(at), entries.get(at)
        if rate is None or size is None:
            continue
        removed = removals.get(at)
        # the stats give hits/(hits+misses); multiplying back recovers the hit counter exactly enough
        out.append(
            CounterPoint(
                at=at,
                hits=round(rate * lookups),
                lookups=int(lookups),
                entries=int(size),
                removals=int(removed) if removed is not None else None,
            )
        )
    return out


def activity(points: Sequence[CounterPoint]) -> CacheActivity:
    """Sum the per-interval deltas; a counter that went down (backend restart) restarted from zero."""
    lookups = hits = new = 0
    for prev, cur in itertools.pairwise(points):
        if cur.lookups >= prev.lookups and cur.hits >= prev.hits:
            lookups += cur.lookups - prev.lookups
            hits += cur.hits - prev.hits
        else:
            lookups += cur.lookups
            hits += cur.hits
        new += max(0, cur.entries - prev.entries)
    seconds = points[-1].at - points[0].at if len(points) > 1 else 0.0
    return CacheActivity(
        lookups=lookups, hits=min(hits, lookups), new_entries=new, samples=len(points), seconds=seconds
    )


def restarted(prev: CounterPoint, cur: CounterPoint) -> bool:
    """Whether the lifetime counters went back between two samples: the backend restarted with an empty map."""
    return cur.lookups < prev.lookups or cur.hits < prev.hits


def looks_cleared(prev: CounterPoint, cur: CounterPoint, residue: int) -> bool:
    """Whether the cache was emptied between two samples: by someone's clear, or by a backend restart.

    Losing nearly every entry is not enough: on a small cache the backend's expiry sweep (every 60 s) does that
    too (4 -> 1 entries), and it counts nothing. A clear adds the entries it dropped to the removal counters.
    """
    if prev.entries <= residue or cur.entries >= prev.entries:
        return False
    if cur.entries > max(residue, int(prev.entries * CLEAR_RESIDUE_RATIO)):
        return False
    if restarted(prev, cur):
        return True
    if prev.removals is None or cur.removals is None:
        # no removal counter to tell by: the drop is all there is
        return True
    return cur.removals - prev.removals >= CLEAR_COUNTED_SHARE * (prev.entries - cur.entries)


def junk_share(act: CacheActivity, min_misses: int) -> float:
    """The share of the misses that left a new entry behind (keys never seen before); 0 below ``min_misses``.

    A miss on a hot route's expired key stores that key again and the map does not grow; a junk query string
    adds a key nobody asks for twice. Hits do not enter into it: the backend's services look up their own keys
    in the same map, and their hits hid the junk from the hit rate.
    """
    if act.misses < min_misses or act.misses <= 0:
        return 0.0
    return min(1.0, act.new_entries / act.misses)


def _median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence (the statistics module would cost an idle daemon its import)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def path_prefix(endpoint: str) -> str:
    """The URL path of an endpoint, which the backend's invalidation matches as a prefix."""
    return endpoint.split("?", 1)[0]


_pct = units.percent
_time = units.duration


class CacheStrategy(Strategy):
    """Keeps the backend's response cache useful: drops junk entries and warms the hot endpoints after a clear.

    Watches: the backend's cache stats (either JSON shape) through the signals ``cache_hit_rate``,
    ``cache_entries``, ``cache_lookups`` and ``cache_removals``. Because the backend's counters are lifetime
    totals, the strategy derives three signals from the differences between samples and keeps them in the
    shared windows: ``cache_recent_hit_rate`` (hits per lookup over the last M samples, reading 1.0 while fewer
    than ``min_lookups`` lookups happened, too few to judge); ``cache_junk_share`` (the share of the misses over
    the last M samples that left a new entry behind: a junk query string adds a key nobody asks for again,
    while a miss on an expired hot key stores that key again; 0 below ``min_lookups`` misses, and not counting
    the refill after a clear); and ``cache_cleared`` (1.0 for M samples after the cache was emptied, until it
    is warmed: a clear by anyone, which adds what it dropped to the removal counters, or a backend restart,
    which zeroes the counters; the backend's 60 s expiry sweep empties a small cache too, but counts nothing,
    and is not a clear). The backend's services keep their own entries in the same map and count their hits
    in the same counters, so under junk the hit rate stays high; the junk share does not see their hits.
    It also watches the response time of the hot endpoints (signal ``response_time_seconds``) against the
    line ``max(response_time_floor_ms, learned baseline x baseline_factor)``: the floor while no baseline is
    learned, three times the usual p95 (by default) once one is, so a busy evening is not an incident and a
    quiet night's spike is.

    Changes (safe): when the junk share is above ``junk_share_limit``, the recent hit rate has fallen below
    ``hit_rate_floor`` or the cache holds more than ``entries_limit`` entries for N of the last M samples, it
    invalidates the path prefixes of the hot
    endpoints (``backend.hot_endpoints``; junk query strings on those paths are what inflates the map, and the
    backend's stats do not list keys), clears the whole cache when that left it over the limit and
    ``clear_fallback`` is on, then warms the hot endpoints with one GET each so the next viewers do not all go
    to the database. After a clear it did not make, it only warms, and a clear arms it at the first sample
    that shows it (not N of M): the stampede comes with the next viewers. Expected effect: ``cache_entries`` down
    (explosion, junk) or ``cache_hit_rate`` up (collapse), after ``settle_seconds``.

    Slow hot endpoints also arm it (response time past its line in N of the last M samples). When the
    median of the last M samples is past the line while ``/health`` answers in under half of it, the answers
    come from the database rather than the cache: the cache is not doing its job for them, so it invalidates
    the hot path prefixes (the junk query strings) and warms the hot endpoints, expecting
    ``response_time_seconds`` back under the exit line. When ``/health`` is slow too, the whole backend is
    slow, which no cache action helps: arming then plans nothing (no history row) and leaves it to the
    other strategies.

    Findings (advice only): ``cache-ttl-too-short`` when misses are mostly on keys that were cached before
    (they expire before reuse), ``cache-too-small`` when a bounded cache (older backend) is full while the
    hit rate is low, ``hot-endpoints-slow`` when the hot endpoints are slower than the larger of
    ``response_time_floor_ms`` and the learned baseline times ``baseline_factor`` while ``/health`` is fast.

    Options (``CCTV_OPTIMIZER_STRATEGIES__CACHE__*``): ``hit_rate_floor`` (0.3), ``min_lookups`` (50),
    ``entries_limit`` (2000), ``junk_share_limit`` (0.5), ``clear_fallback`` (true), ``response_time_floor_ms`` (500),
    ``baseline_factor`` (3), ``settle_seconds`` (10). ``ENABLE_CACHING=false`` switches it off.

    Risks: an invalidation or clear sends the next requests for those paths to the database (hence the
    warming); a clear also empties the backend's internal caches. Every call spends from the daemon's
    request budget, kept well under the backend's rate limits, and a 429 pauses all calls for its
    ``Retry-After``. Nothing it changes can be undone, and nothing needs to be: the cache refills itself.
    """

    name = "cache"
    RUNTIME_STATE = ("_acted_at", "_warmed_at", "_last_evictions")

    Options = CacheOptions

    @classmethod
    def from_config(cls, options: StrategyOptions, settings: Settings, deps: StrategyDeps) -> Built | Skipped:
        """Build from ``strategies.cache`` and the shared readers."""
        s = options_as(options, CacheOptions)
        if deps.backend is None or not deps.backend.has_credentials:
            return Skipped("no backend admin credentials are configured")
        strategy = cls(
            deps.backend,
            s,
            hot_endpoints=settings.backend.hot_endpoints,
            windows=deps.windows,
            window_samples=settings.detection.window_samples,
            exit_ratio=settings.detection.exit_ratio,
            clock=deps.monotonic,
        )
        return Built(strategy, s.mode, s.enabled and settings.enable_caching)

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        client: BackendClient,
        options: CacheOptions,
        *,
        hot_endpoints: tuple[str, ...],
        windows: Windows,
        window_samples: int,
        exit_ratio: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._o = options
        self._warm = tuple(dict.fromkeys(hot_endpoints))
        self._prefixes = tuple(dict.fromkeys(path_prefix(e) for e in hot_endpoints if path_prefix(e) != "/"))
        self._windows = windows
        self._span = max(1, window_samples)
        self._exit_ratio = exit_ratio
        self._clock = clock
        self._acted_at: float | None = None
        self._warmed_at: float | None = None
        self._last_evictions: int | None = None

    # derived signals ---------------------------------------------------------------------------------------------

    def _since_action(self, points: Sequence[CounterPoint], at: float) -> list[CounterPoint]:
        """The points up to ``at`` that follow this strategy's last action (earlier misses were dealt with)."""
        acted = self._acted_at
        return [p for p in points if p.at <= at and (acted is None or acted > at or p.at >= acted)]

    def recent(self, at: float | None = None) -> CacheActivity:
        """Activity over the last M samples (up to ``at``), not counting what preceded this strategy's last action."""
        points = counter_points(self._windows)
        if not points:
            return CacheActivity(lookups=0, hits=0, new_entries=0, samples=0, seconds=0.0)
        end = points[-1].at if at is None else at
        span = self._since_action(points, end)[-(self._span + 1) :]
        return activity(span)

    def _recent_value(self, points: Sequence[CounterPoint], index: int) -> float:
        span = self._since_action(points[: index + 1], points[index].at)[-(self._span + 1) :]
        act = activity(span)
        rate = act.hit_rate
        if rate is None or act.lookups < self._o.min_lookups:
            return 1.0
        return rate

    def _cleared_value(self, points: Sequence[CounterPoint], index: int) -> float:
        residue = len(self._warm)
        for j in range(max(1, index - self._span + 1), index + 1):
            prev, cur = points[j - 1], points[j]
            warmed = self._warmed_at is not None and self._warmed_at > prev.at
            if looks_cleared(prev, cur, residue) and not warmed:
                return 1.0
        return 0.0

    def _junk_value(self, points: Sequence[CounterPoint], index: int) -> float:
        span = self._since_action(points[: index + 1], points[index].at)[-(self._span + 1) :]
        # after a clear or a restart every miss stores a new entry until the working set is back: not junk
        for prev, cur in itertools.pairwise(span):
            if restarted(prev, cur) or looks_cleared(prev, cur, len(self._warm)):
                return 0.0
        return junk_share(activity(span), self._o.min_lookups)

    def update_signals(self) -> None:
        """Bring the derived signals up to date with the sampled counters (idempotent)."""
        points = counter_points(self._windows)
        done = self._windows.points(RECENT_HIT_RATE)
        last_done = done[-1][0] if done else None
        for index, point in enumerate(points):
            if last_done is not None and point.at <= last_done:
                continue
            self._windows.push(
                point.at,
                {
                    RECENT_HIT_RATE: self._recent_value(points, index),
                    CLEARED: self._cleared_value(points, index),
                    JUNK_SHARE: self._junk_value(points, index),
                },
            )

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """Armed by too many entries, junk filling it, a collapsed recent hit rate, a cache emptied, slow hot endpoints."""
        # the engine asks for triggers before every detection: the moment to extend the derived series
        self.update_signals()
        limit = float(self._o.entries_limit)
        floor = self._o.hit_rate_floor
        slow = self.response_limit(baselines)
        return (
            TriggerSpec(signal="cache_entries", enter=limit, exit=limit * self._exit_ratio),
            TriggerSpec(signal=RECENT_HIT_RATE, enter=floor, exit=min(1.0, floor / self._exit_ratio), above=False),
            TriggerSpec(signal=CLEARED, enter=1.0, exit=0.5, samples_required=1),
            TriggerSpec(
                signal=JUNK_SHARE, enter=self._o.junk_share_limit, exit=self._o.junk_share_limit * self._exit_ratio
            ),
            TriggerSpec(signal=RESPONSE, enter=slow, exit=slow * self._exit_ratio),
        )

    # findings ----------------------------------------------------------------------------------------------------

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """Advice: a TTL too short for the load, a bounded cache too small, hot endpoints slow."""
        out: list[Finding] = []
        cache = ctx.snapshot.cache
        points = counter_points(self._windows)
        long_run = activity(points)
        rate = long_run.hit_rate
        low = rate is not None and long_run.lookups >= self._o.min_lookups and rate < self._o.hit_rate_floor
        if low and rate is not None and long_run.new_entries < TTL_NEW_ENTRY_SHARE * long_run.misses:
            out.append(
                Finding(
                    id="cache-ttl-too-short",
                    strategy=self.name,
                    severity="info",
                    summary=(
                        f"{long_run.misses} of {long_run.lookups} recent lookups missed but only "
                        f"{long_run.new_entries} new entries appeared: entries expire before they are reused; "
                        "a longer TTL for the hot routes would serve them from the cache"
                    ),
                    evidence={
                        "hit_rate": round(rate, 4),
                        "lookups": long_run.lookups,
                        "misses": long_run.misses,
                        "new_entries": long_run.new_entries,
                        "window_seconds": round(long_run.seconds, 1),
                    },
                )
            )
        if cache is not None:
            evicting = self._last_evictions is not None and cache.evictions > self._last_evictions
            self._last_evictions = cache.evictions
            full = cache.max_size is not None and cache.size >= FULL_RATIO * cache.max_size
            if full and (low or evicting):
                out.append(
                    Finding(
                        id="cache-too-small",
                        strategy=self.name,
                        severity="info",
                        summary=(
                            f"the bounded cache is full ({cache.size} of {cache.max_size} entries) and evicting "
                            "while it misses: it is too small for the load; raise its maximum size"
                        ),
                        evidence={
                            "entries": cache.size,
                            "max_size": cache.max_size,
                            "evictions": cache.evictions,
                            "recent_hit_rate": round(rate, 4) if rate is not None else None,
                        },
                    )
                )
        slow = self._slow_endpoints(ctx)
        if slow is not None:
            out.append(slow)
        return out

    def response_limit(self, baselines: Mapping[str, float]) -> float:
        """Seconds above which the hot endpoints count as slow: max(floor, baseline x factor)."""
        floor = self._o.response_time_floor_ms / 1000.0
        baseline = baselines.get(RESPONSE)
        return max(floor, baseline * self._o.baseline_factor) if baseline else floor

    def slowness(self, ctx: StrategyContext) -> Slowness | None:
        """The hot endpoints past their line over the last M samples while /health is fast; None otherwise."""
        values = self._windows.values(RESPONSE, self._span)
        probe = ctx.snapshot.probe
        if len(values) < self._span or probe is None:
            return None
        limit = self.response_limit(ctx.baselines)
        typical = _median(values)
        health = probe.endpoint_seconds.get("/health")
        # a slow /health means the whole process is slow, which a cache cannot help with
        if typical < limit or health is None or health >= limit / 2:
            return None
        return Slowness(typical=typical, limit=limit, health=health)

    def _slow_endpoints(self, ctx: StrategyContext) -> Finding | None:
        slow = self.slowness(ctx)
        if slow is None:
            return None
        typical, limit, health = slow.typical, slow.limit, slow.health
        recent = self.recent().hit_rate
        return Finding(
            id="hot-endpoints-slow",
            strategy=self.name,
            severity="warning",
            summary=(
                f"the hot endpoints take {_time(typical)} (limit {_time(limit)}) while /health takes {_time(health)}: "
                "their answers come from the database rather than the cache"
            ),
            evidence={
                "response_seconds": round(typical, 4),
                "limit_seconds": round(limit, 4),
                "health_seconds": round(health, 4),
                "recent_hit_rate": round(recent, 4) if recent is not None else None,
            },
        )

    # planning ----------------------------------------------------------------------------------------------------

    def _cleared_now(self) -> bool:
        return self._windows.last(CLEARED) == 1.0

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """Invalidate and warm when the cache exploded or its hit rate collapsed; only warm after a clear."""
        cache = ctx.snapshot.cache
        if cache is None:
            return None
        self.update_signals()
        o = self._o
        limit = o.entries_limit
        over = cache.size >= limit or ("cache_entries" in ctx.armed and cache.size >= limit * self._exit_ratio)
        recent = self.recent()
        rate = recent.hit_rate
        collapsed = rate is not None and recent.lookups >= o.min_lookups and rate < o.hit_rate_floor
        share = self._windows.last(JUNK_SHARE) or 0.0
        junky = share >= o.junk_share_limit
        if over or collapsed or junky:
            return self._plan_cleanup(cache.size, over=over, recent=recent, junk=share if junky else None)
        if self._cleared_now() and self._warm:
            return Plan(
                strategy=self.name,
                reason=f"the cache was emptied (now {cache.size} entries): warm the hot endpoints",
                changes=(
                    Change(
                        target="backend.cache.hot",
                        action=WARM,
                        before=f"{cache.size} entries",
                        after=f"{len(self._warm)} endpoints warmed",
                        reversible=False,
                    ),
                ),
                actions=(WarmCache(warm=self._warm),),
            )
        if RESPONSE in ctx.armed or ctx.manual:
            slow = self.slowness(ctx)
            if slow is not None:
                return self._plan_response(cache.size, slow)
        return None

    def _invalidate_changes(self, size: int) -> list[Change]:
        """One planned invalidation per hot path prefix."""
        return [
            Change(
                target=f"backend.cache:{prefix}",
                action=INVALIDATE,
                before=f"{size} entries",
                after=f"entries under {prefix} dropped",
                reversible=False,
            )
            for prefix in self._prefixes
        ]

    def _plan_response(self, size: int, slow: Slowness) -> Plan | None:
        """Slow hot endpoints with a fast /health: drop the junk under their paths and warm them."""
        if not self._warm:
            return None
        changes = self._invalidate_changes(size)
        changes.append(
            Change(
                target="backend.cache.hot",
                action=WARM,
                before="served from the database",
                after=f"{len(self._warm)} endpoints warmed",
                reversible=False,
            )
        )
        back_under = slow.limit * self._exit_ratio
        return Plan(
            strategy=self.name,
            reason=(
                f"the hot endpoints take {_time(slow.typical)} (line {_time(slow.limit)}) while /health takes "
                f"{_time(slow.health)}: the cache is not serving them"
            ),
            changes=tuple(changes),
            expected=ExpectedEffect(
                signal=RESPONSE,
                direction=Direction.DOWN,
                amount=max(slow.typical - back_under, 0.001),
                settle_seconds=self._o.settle_seconds,
            ),
            actions=(
                CleanCache(
                    cause=Cause.RESPONSE,
                    prefixes=self._prefixes,
                    warm=self._warm,
                    limit=self._o.entries_limit,
                    response_seconds=round(slow.typical, 4),
                    response_limit_seconds=round(slow.limit, 4),
                ),
            ),
        )

    def _plan_cleanup(self, size: int, *, over: bool, recent: CacheActivity, junk: float | None = None) -> Plan | None:
        o = self._o
        limit = o.entries_limit
        if not self._prefixes and not o.clear_fallback:
            return None
        reasons: list[str] = []
        if over:
            reasons.append(f"backend cache holds {size} entries, over its limit of {limit}")
        rate = recent.hit_rate
        if junk is not None:
            reasons.append(
                f"{_pct(junk)} of the last {recent.misses} misses left a new entry behind ({recent.new_entries} new "
                f"entries, limit {_pct(o.junk_share_limit)}): junk query strings are filling the cache"
            )
        if rate is not None and recent.lookups >= o.min_lookups and rate < o.hit_rate_floor:
            reasons.append(
                f"hit rate fell to {_pct(rate)} over the last {recent.lookups} lookups (floor {_pct(o.hit_rate_floor)})"
            )
        changes = self._invalidate_changes(size)
        if not changes:
            changes.append(
                Change(
                    target="backend.cache", action=CLEAR, before=f"{size} entries", after="0 entries", reversible=False
                )
            )
        if self._warm:
            changes.append(
                Change(
                    target="backend.cache.hot",
                    action=WARM,
                    before="invalidated",
                    after=f"{len(self._warm)} endpoints warmed",
                    reversible=False,
                )
            )
        if over:
            expected = ExpectedEffect(
                signal="cache_entries",
                direction=Direction.DOWN,
                amount=float(max(1.0, size - limit * self._exit_ratio)),
                settle_seconds=o.settle_seconds,
            )
        elif junk is not None:
            # the junk under the hot paths goes; at least half of what the window saw arrive
            expected = ExpectedEffect(
                signal="cache_entries",
                direction=Direction.DOWN,
                amount=float(max(1.0, min(size, recent.new_entries) / 2)),
                settle_seconds=o.settle_seconds,
            )
        else:
            expected = ExpectedEffect(
                signal="cache_hit_rate",
                direction=Direction.UP,
                amount=HIT_RATE_RECOVERY,
                settle_seconds=o.settle_seconds,
            )
        action = CleanCache(
            cause=Cause.ENTRIES if over else Cause.JUNK if junk is not None else Cause.HIT_RATE,
            prefixes=self._prefixes,
            warm=self._warm,
            limit=limit,
            clear_fallback=o.clear_fallback,
            entries_before=size,
            recent_lookups=recent.lookups,
            recent_hit_rate=round(rate, 4) if rate is not None else None,
            junk_share=round(junk, 4) if junk is not None else None,
        )
        return Plan(
            strategy=self.name, reason="; ".join(reasons), changes=tuple(changes), expected=expected, actions=(action,)
        )

    # acting ------------------------------------------------------------------------------------------------------

    async def _warm_now(self, endpoints: Sequence[str]) -> backend_cache.WarmResult:
        result = await backend_cache.warm(self._client, tuple(endpoints))
        if result.warmed:
            self._warmed_at = self._clock()
        return result

    @staticmethod
    def _warm_note(result: backend_cache.WarmResult) -> str:
        note = f"warmed {len(result.warmed)} endpoints"
        if result.failed:
            note += "; not warmed: " + ", ".join(f"{e} ({why})" for e, why in result.failed.items())
        return note

    def _warm_change(self, result: backend_cache.WarmResult, before: str) -> Change:
        return Change(
            target="backend.cache.hot",
            action=WARM,
            before=before,
            after=f"{len(result.warmed)} of {len(result.warmed) + len(result.failed)} endpoints warmed",
            reversible=False,
        )

    async def apply(self, plan: Plan) -> ApplyResult:
        """Re-read the stats, invalidate (clear if that was not enough), then warm; or only warm."""
        match plan.actions:
            case (WarmCache() as action,):
                return await self._apply_warm(action)
            case (CleanCache() as action,):
                return await self._apply_clean(action)
        raise StrategyError(f"cache: no such action: {', '.join(a.kind for a in plan.actions) or 'none'}")

    async def _apply_warm(self, action: WarmCache) -> ApplyResult:
        result = await self._warm_now(action.warm)
        if not result.warmed:
            raise StrategyError("warming failed: " + "; ".join(f"{e}: {why}" for e, why in result.failed.items()))
        return ApplyResult(changes=(self._warm_change(result, "emptied"),), detail=self._warm_note(result))

    async def _apply_clean(self, action: CleanCache) -> ApplyResult:
        client = self._client
        kind, limit, prefixes, warm = action.cause, action.limit, action.prefixes, action.warm
        live = await backend_cache.read_stats(client)
        if kind is Cause.ENTRIES and live.size < limit * self._exit_ratio:
            return ApplyResult(changes=(), detail=f"the cache is already down to {live.size} entries; nothing done")
        done: list[Change] = []
        removed: dict[str, int] = {}
        size = live.size
        cleared = False
        try:
            for prefix in prefixes:
                removed[prefix] = await backend_cache.invalidate(client, prefix)
                self._acted_at = self._clock()
                done.append(
                    Change(
                        target=f"backend.cache:{prefix}",
                        action=INVALIDATE,
                        before=f"{live.size} entries",
                        after=f"{removed[prefix]} entries dropped",
                        reversible=False,
                    )
                )
            size = max(0, live.size - sum(removed.values()))
            # slow endpoints are about the hot paths only: never a clear of everything for them
            need_clear = not prefixes and kind is not Cause.RESPONSE
            if prefixes and kind is Cause.ENTRIES and action.clear_fallback:
                size = (await backend_cache.read_stats(client)).size
                # the junk sits under other paths: only a clear empties the map
                need_clear = size >= limit * self._exit_ratio
            if need_clear:
                await backend_cache.clear(client)
                self._acted_at = self._clock()
                cleared = True
                done.append(
                    Change(
                        target="backend.cache",
                        action=CLEAR,
                        before=f"{size} entries",
                        after="0 entries",
                        reversible=False,
                    )
                )
                size = 0
        except StrategyError as exc:
            if not done:
                raise
            # entries are already gone: warm before giving up, so viewers do not stampede the database
            warmed = await self._warm_now(warm)
            raise StrategyError(
                f"{exc} (after dropping {sum(removed.values())} entries; {self._warm_note(warmed)})"
            ) from None
        result = await self._warm_now(warm)
        if warm:
            done.append(self._warm_change(result, "invalidated"))
        notes = [f"cache {live.size} -> {size} entries"]
        if removed:
            notes.append("invalidated " + ", ".join(f"{n} under {p}" for p, n in removed.items()))
        if cleared:
            notes.append("cleared")
        if warm:
            notes.append(self._warm_note(result))
        return ApplyResult(changes=tuple(done), detail="; ".join(notes))

    async def reconcile(self, plan: Plan) -> str:
        """An interrupted cache action may have left the cache cold: warm the hot endpoints."""
        warm = next((a.warm for a in plan.actions if isinstance(a, WarmCache | CleanCache)), ()) or self._warm
        if not warm:
            return "nothing to reconcile: no hot endpoints to warm"
        result = await self._warm_now(warm)
        return f"interrupted cache action: {self._warm_note(result)}"

    def legacy_actions(self, params: Mapping[str, object]) -> tuple[Action, ...]:
        """A plan journaled as ``{"kind": ..., "warm": [...], "prefixes": [...], "limit": ...}``."""
        kind = params.get("kind", Cause.ENTRIES.value)
        if kind == "warm":
            return (decode(WarmCache, params),)
        return (
            decode(CleanCache, {"prefixes": [], "warm": [], "limit": self._o.entries_limit, **params, "cause": kind}),
        )
