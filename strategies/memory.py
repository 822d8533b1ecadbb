"""The memory strategy: keep RAM for video by pruning stale HLS files, trimming the backend cache and itself."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from config import units
from config.settings import MemoryOptions, Settings, StrategyOptions
from metrics.backend import BackendClient
from metrics.memory import Growth, rss_bytes, same_process_running, start_ticks, steady_growth
from metrics.snapshot import Snapshot
from metrics.window import Windows
from strategies.actions import backend_cache, hls
from strategies.base import (
    Action,
    ApplyResult,
    Built,
    Change,
    Direction,
    ExpectedEffect,
    Finding,
    Plan,
    Risk,
    Skipped,
    Strategy,
    StrategyContext,
    StrategyDeps,
    StrategyError,
    TriggerSpec,
    decode,
    options_as,
)

MIB = 1024 * 1024
GROWTH_FINDING_HORIZON_SECONDS = 24 * 3600.0
OUTPUT_TAIL_BYTES = 2000
RESTART_POLL_SECONDS = 0.2

PRUNE = "hls_prune"
CACHE = "cache_cleanup"
SELF = "self_cleanup"
RESTART = "backend_restart"
UPTIME = "backend_uptime_seconds"

log = structlog.get_logger("strategy.memory")


# figures in reasons and changes read the same everywhere (config.units): IEC sizes, human durations
_mib = units.size
_duration = units.duration


def _malloc_trim() -> bool:
    """Hand freed heap pages back to the OS (glibc only): gc.collect() alone rarely lowers the RSS."""
    import ctypes  # here, not at the top: an idle daemon never needs it (about 0.4 MiB)

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneHls(Action):
    """Remove (or empty) up to ``max_files`` HLS files under ``root`` stale for ``stale_age`` seconds."""

    kind = "memory.hls_prune"
    root: str
    stale_age: float
    max_files: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TrimBackendCache(Action):
    """Invalidate the junk prefixes (clear the cache when still over ``limit``), then warm the hot endpoints."""

    kind = "memory.cache_cleanup"
    prefixes: tuple[str, ...]
    limit: int
    warm: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanSelf(Action):
    """The daemon's own gc.collect(), malloc_trim and history trim; ``line`` is its own RSS line in bytes."""

    kind = "memory.self_cleanup"
    line: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RestartBackend(Action):
    """Run the restart command for this backend process (pid and start time), unless its RSS fell below ``enter``."""

    kind = "memory.backend_restart"
    pid: int
    start_ticks: int | None = None
    enter: float


MemoryAction = PruneHls | TrimBackendCache | CleanSelf | RestartBackend


@dataclass(frozen=True, slots=True, kw_only=True)
class _Step:
    """One action a plan takes, with what it expects (None: nothing measurable was promised)."""

    change: Change
    reason: str
    expected: ExpectedEffect | None
    action: MemoryAction


class MemoryStrategy(Strategy):
    """Keeps RAM for video: prunes stale HLS files, trims a bloated backend cache, and cleans up after itself.

    Watches (windowed, N of M samples, with hysteresis): the host's memory ratio against
    ``MEMORY_THRESHOLD`` (``memory_used_ratio``); /dev/shm against ``shm_used_ratio``; the HLS directory
    against ``hls_budget_bytes`` (``hls_bytes``); the backend's RSS against ``backend_rss_limit_bytes``, or its
    steady growth when that reaches pm2's ``backend_kill_bytes`` within ``restart_lead_seconds``
    (``backend_rss_bytes``; growth is judged only on samples taken ``growth_warmup_seconds`` after the backend's
    latest start, from ``backend_uptime_seconds``, so a restart starts it over); the backend response cache against ``cache_entries_limit`` (``cache_entries``);
    and, with ``ENABLE_GC``, the daemon's own RSS against ``GC_THRESHOLD`` x ``own_budget_bytes``
    (``own_rss_bytes``).

    Changes (safe, on by default; none can be undone):

    - prune stale HLS files under ``backend.hls_directory``: only MediaMTX's own segment, part and init files,
      and only when no playlist references them (in their directory or, by a relative path, from a sibling's)
      and they are older than ``hls_stale_age_seconds``; never a playlist, a live stream's init segment, a file
      being written, a symbolic link, anything on another file system or outside the root. Playlists are read
      bounded (one that cannot be read whole protects its directory), re-read before the files go, and each
      file is checked again just before it is removed; in MediaMTX's 0755 stream directories, where the daemon
      may not unlink, stale files are emptied instead (docs/SAFETY.md). At most ``hls_prune_max_files`` per
      action. Runs when the HLS directory, /dev/shm or host memory is over its line.
    - when the backend cache holds more than ``cache_entries_limit`` entries (junk query strings inflate the
      unbounded map), invalidate ``cache_junk_prefixes`` (default: the hot endpoints); when that was not
      enough, clear the cache; then warm ``backend.hot_endpoints`` so the next viewers do not all reach
      the database.
    - the daemon's own ``gc.collect()``, ``malloc_trim`` and trim of its decision history (``ENABLE_GC``).

    Disruptive (opt-in: ``restart_command`` plus ``engine.allow_disruptive``): a graceful backend restart
    through the configured command (for example ``pm2 reload rafnet-cctv-backend``) when the backend's RSS is
    over its limit or heading for pm2's hard kill, and only when no safe action is left. It waits for a
    quiet moment, at most ``restart_quiet_max_viewers`` viewers (the backend's active viewer sessions, or
    MediaMTX readers when the database is not configured; with neither, no moment counts as quiet), unless
    the projected kill is within ``restart_urgent_seconds``. It restarts at most once per
    ``restart_min_interval_seconds`` (remembered while the daemon runs, across configuration reloads; a
    restart of the daemon forgets it). The command runs without a shell and must finish, and the old process
    must exit, within ``restart_timeout_seconds`` (and within ``engine.apply_timeout_seconds``).

    Findings: steady backend RSS growth with the time left until pm2's kill; backend RSS over its limit
    with no restart command; a restart that is due but deferred; a cache that keeps growing past its limit;
    /dev/shm over its line with little HLS to prune (nginx's cache lives there too); files in the HLS directory
    that are not MediaMTX's (``hls-unknown-files``); stream directories whose playlist cannot be read whole
    (``hls-playlist-unreadable``).

    Options: ``CCTV_OPTIMIZER_STRATEGIES__MEMORY__*`` (see MemoryOptions). Expected effects: ``hls_bytes``
    (or ``hls_stale_files``), ``cache_entries``, ``own_rss_bytes`` and ``backend_rss_bytes`` go down,
    measured after ``settle_seconds`` (``restart_settle_seconds`` for a restart).

    Risks: a cache clear sends the next requests to the database (hence the warming); a pruned file is gone
    (the rule keeps anything a player can still ask for); a restart drops live HTTP connections for a few
    seconds, which is why it is opt-in, rare and timed.
    """

    name = "memory"
    RUNTIME_STATE = ("_last_restart",)

    Options = MemoryOptions

    @classmethod
    def from_config(cls, options: StrategyOptions, settings: Settings, deps: StrategyDeps) -> Built | Skipped:
        """Build from ``strategies.memory`` and the shared readers."""
        s = options_as(options, MemoryOptions)
        strategy = cls(
            s,
            memory_threshold=settings.memory_threshold,
            gc_threshold=settings.gc_threshold,
            enable_gc=settings.enable_gc,
            exit_ratio=settings.detection.exit_ratio,
            windows=deps.windows,
            hls_root=deps.hls.root if deps.hls is not None else None,
            backend=deps.backend,
            hot_endpoints=settings.backend.hot_endpoints,
            trim_history=deps.trim_history,
            clock=deps.monotonic,
        )
        return Built(strategy, s.mode, s.enabled)

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        options: MemoryOptions,
        *,
        memory_threshold: float,
        gc_threshold: float,
        enable_gc: bool,
        exit_ratio: float,
        windows: Windows,
        hls_root: Path | None = None,
        backend: BackendClient | None = None,
        hot_endpoints: tuple[str, ...] = (),
        trim_history: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        proc_root: Path = Path("/proc"),
    ) -> None:
        self._o = options
        self._memory_threshold = memory_threshold
        self._own_line = gc_threshold * options.own_budget_bytes
        self._enable_gc = enable_gc
        self._exit_ratio = exit_ratio
        self._windows = windows
        self._hls_root = hls_root
        # where the root led when the configuration was checked: a prune refuses a root that leads elsewhere now
        self._hls_real = Path(os.path.realpath(hls_root)) if hls_root is not None else None
        self._backend = backend
        self._hot = tuple(hot_endpoints)
        self._junk_prefixes = tuple(options.cache_junk_prefixes) or self._hot
        self._trim_history = trim_history
        self._clock = clock
        self._wall = wall
        self._proc = proc_root
        self._last_restart: float | None = None

    # detection ---------------------------------------------------------------------------------------------------

    def backend_growth(self) -> Growth | None:
        """Steady growth of the backend's RSS since its warm-up ended, when there is one.

        A restart starts over: the old process's samples say nothing about the new one, and a fresh process
        grows while it warms up (heap, caches, connections) without leaking.
        """
        points = self._windows.points("backend_rss_bytes")
        uptime = self._windows.points(UPTIME)
        if uptime:
            at, seconds = uptime[-1]
            judged_from = at - seconds + self._o.growth_warmup_seconds
            points = [p for p in points if p[0] >= judged_from]
        return steady_growth(points, min_span_seconds=self._o.growth_min_span_seconds)

    def backend_enter(self, growth: Growth | None) -> float:
        """The RSS that arms: the limit, or lower when steady growth reaches pm2's kill within the lead time."""
        limit = float(self._o.backend_rss_limit_bytes)
        if growth is None:
            return limit
        return max(0.0, min(limit, self._o.backend_kill_bytes - growth.slope * self._o.restart_lead_seconds))

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """Host memory, /dev/shm, the HLS directory, backend RSS (or its growth), cache size, own RSS."""
        r = self._exit_ratio
        o = self._o

        def spec(signal: str, enter: float) -> TriggerSpec:
            return TriggerSpec(signal=signal, enter=enter, exit=enter * r)

        specs = [
            spec("memory_used_ratio", self._memory_threshold),
            spec("shm_used_ratio", o.shm_used_ratio),
            spec("hls_bytes", float(o.hls_budget_bytes)),
            spec("backend_rss_bytes", self.backend_enter(self.backend_growth())),
            spec("cache_entries", float(o.cache_entries_limit)),
        ]
        if self._enable_gc:
            specs.append(spec("own_rss_bytes", self._own_line))
        return tuple(specs)

    # findings ----------------------------------------------------------------------------------------------------

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """Growth toward pm2's kill, an over-limit backend nobody may restart, a deferred restart, cache, shm."""
        out: list[Finding] = []
        snap = ctx.snapshot
        o = self._o
        backend = snap.backend
        if backend is not None:
            growth = self.backend_growth()
            eta = growth.seconds_to(o.backend_kill_bytes) if growth is not None else None
            if growth is not None and eta is not None and eta <= GROWTH_FINDING_HORIZON_SECONDS:
                out.append(
                    Finding(
                        id="memory-backend-rss-growth",
                        strategy=self.name,
                        severity="warning",
                        summary=(
                            f"backend RSS grows {_mib(growth.slope * 3600)}/h; pm2 kills it at "
                            f"{_mib(o.backend_kill_bytes)} in about {_duration(eta)}"
                        ),
                        evidence={
                            "rss_bytes": backend.rss_bytes,
                            "growth_bytes_per_second": round(growth.slope, 1),
                            "seconds_to_kill": round(eta),
                            "fit_r2": round(growth.r2, 3),
                        },
                    )
                )
            if backend.rss_bytes >= o.backend_rss_limit_bytes and o.restart_command is None:
                out.append(
                    Finding(
                        id="memory-backend-rss-over-limit",
                        strategy=self.name,
                        severity="warning",
                        summary=(
                            f"backend RSS {_mib(backend.rss_bytes)} is over its limit of "
                            f"{_mib(o.backend_rss_limit_bytes)} and no restart command is configured"
                        ),
                        evidence={"rss_bytes": backend.rss_bytes, "limit_bytes": o.backend_rss_limit_bytes},
                    )
                )
            elif o.restart_command is not None and "backend_rss_bytes" in ctx.armed:
                why = self._restart_blocker(snap, growth)
                if why is not None:
                    out.append(
                        Finding(
                            id="memory-restart-deferred",
                            strategy=self.name,
                            severity="info",
                            summary=f"backend restart is due but deferred: {why}",
                            evidence={"rss_bytes": backend.rss_bytes},
                        )
                    )
        cache = snap.cache
        if cache is not None and cache.size >= o.cache_entries_limit:
            out.append(
                Finding(
                    id="memory-cache-unbounded",
                    strategy=self.name,
                    severity="warning",
                    summary=(
                        f"backend response cache holds {cache.size} entries (limit {o.cache_entries_limit}); "
                        f"distinct query strings keep adding entries to the unbounded map"
                    ),
                    evidence={"entries": cache.size, "limit": o.cache_entries_limit},
                )
            )
        out.extend(self._hls_findings(snap))
        host = snap.host
        if host is not None and host.shm_total_bytes and host.shm_used_ratio >= o.shm_used_ratio:
            stale = snap.hls.stale_bytes if snap.hls is not None else 0
            if stale < 0.1 * host.shm_used_bytes:
                out.append(
                    Finding(
                        id="memory-shm-full",
                        strategy=self.name,
                        severity="warning",
                        summary=(
                            f"/dev/shm is {host.shm_used_ratio:.0%} full and stale HLS files hold only "
                            f"{_mib(stale)}: look at nginx's cache and other users of /dev/shm"
                        ),
                        evidence={
                            "shm_used_bytes": host.shm_used_bytes,
                            "shm_total_bytes": host.shm_total_bytes,
                            "hls_stale_bytes": stale,
                        },
                    )
                )
        return tuple(out)

    def _hls_findings(self, snap: Snapshot) -> list[Finding]:
        """Files in the HLS directory that are not MediaMTX's, and directories a playlist could not be read in."""
        h = snap.hls
        out: list[Finding] = []
        if h is None:
            return out
        if h.unknown_files:
            out.append(
                Finding(
                    id="hls-unknown-files",
                    strategy=self.name,
                    severity="info",
                    summary=(
                        f"{h.unknown_files} entries in the HLS directory are not MediaMTX segments or playlists; "
                        "the prune never touches them: check what put them there"
                    ),
                    evidence={"unknown_files": h.unknown_files, "examples": list(h.unknown_examples)},
                )
            )
        if h.protected_directories:
            out.append(
                Finding(
                    id="hls-playlist-unreadable",
                    strategy=self.name,
                    severity="warning",
                    summary=(
                        f"{h.protected_directories} stream directories have a playlist that cannot be read whole "
                        "(too large, not a regular file, or unreadable): nothing in them is pruned"
                    ),
                    evidence={"directories": h.protected_directories},
                )
            )
        return out

    # planning ----------------------------------------------------------------------------------------------------

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """Safe steps first (prune, cache, self-cleanup); a restart only when none applies. Never writes."""
        snap = ctx.snapshot
        armed = set(ctx.armed)
        steps = (self._plan_prune(snap, armed, ctx.manual), self._plan_cache(snap), self._plan_self(snap, ctx.manual))
        safe = [s for s in steps if s is not None]
        if not safe:
            restart = self._plan_restart(snap, armed)
            if restart is None:
                return None
            safe = [restart]
        # the step whose effect was promised goes first: it names the action and is what gets verified
        ordered = sorted(safe, key=lambda s: s.expected is None)
        expected = ordered[0].expected
        return Plan(
            strategy=self.name,
            reason="; ".join(s.reason for s in ordered),
            changes=tuple(s.change for s in ordered),
            expected=expected,
            actions=tuple(s.action for s in ordered),
        )

    def _plan_prune(self, snap: Snapshot, armed: set[str], manual: bool) -> _Step | None:
        h = snap.hls
        if self._hls_root is None or h is None or h.stale_files == 0:
            return None
        over_hls = "hls_bytes" in armed
        pressure = over_hls or "shm_used_ratio" in armed or "memory_used_ratio" in armed
        if not (pressure or manual):
            return None
        if over_hls:
            reason = (
                f"HLS directory holds {_mib(h.bytes)}, over its budget of {_mib(self._o.hls_budget_bytes)}, "
                f"with {h.stale_files} stale files ({_mib(h.stale_bytes)})"
            )
            expected = ExpectedEffect(
                signal="hls_bytes",
                direction=Direction.DOWN,
                amount=float(h.stale_bytes),
                settle_seconds=self._o.settle_seconds,
            )
        else:
            why = "memory pressure" if pressure else "requested"
            reason = f"{why}: {h.stale_files} stale HLS files hold {_mib(h.stale_bytes)}"
            expected = ExpectedEffect(
                signal="hls_stale_files",
                direction=Direction.DOWN,
                amount=float(h.stale_files),
                settle_seconds=self._o.settle_seconds,
            )
        count = min(h.stale_files, self._o.hls_prune_max_files)
        return _Step(
            change=Change(
                target="hls.stale_files",
                action=PRUNE,
                before=f"{h.stale_files} files, {_mib(h.stale_bytes)}",
                after=f"{h.stale_files - count} files",
                reversible=False,
            ),
            reason=reason,
            expected=expected,
            action=PruneHls(
                root=str(self._hls_root), stale_age=self._o.hls_stale_age_seconds, max_files=self._o.hls_prune_max_files
            ),
        )

    def _plan_cache(self, snap: Snapshot) -> _Step | None:
        cache = snap.cache
        limit = self._o.cache_entries_limit
        if self._backend is None or cache is None or cache.size < limit:
            return None
        # over the limit the cache is a memory problem whichever signal armed the strategy
        target = len(self._hot)
        prefixes = tuple(self._junk_prefixes)
        return _Step(
            change=Change(
                target="backend.cache",
                action="cache_invalidate" if prefixes else "cache_clear",
                before=f"{cache.size} entries",
                after=f"about {target} entries",
                reversible=False,
            ),
            reason=f"backend cache holds {cache.size} entries, over its limit of {limit}",
            expected=ExpectedEffect(
                signal="cache_entries",
                direction=Direction.DOWN,
                amount=float(max(1, cache.size - target)),
                settle_seconds=self._o.settle_seconds,
            ),
            action=TrimBackendCache(prefixes=prefixes, limit=limit, warm=tuple(self._hot)),
        )

    def _plan_self(self, snap: Snapshot, manual: bool) -> _Step | None:
        if not self._enable_gc or snap.own is None:
            return None
        own = snap.own.rss_bytes
        over = own >= self._own_line
        if not (over or manual):
            return None
        expected = (
            ExpectedEffect(
                signal="own_rss_bytes",
                direction=Direction.DOWN,
                amount=float(max(MIB, own - self._own_line * self._exit_ratio)),
                settle_seconds=self._o.settle_seconds,
            )
            if over
            else None
        )
        reason = (
            f"own RSS is {_mib(own)}, over GC_THRESHOLD of its {_mib(self._o.own_budget_bytes)} budget"
            if over
            else f"requested: own RSS is {_mib(own)}"
        )
        return _Step(
            change=Change(
                target="daemon.memory",
                action="gc_collect",
                before=_mib(own),
                after=f"under {_mib(self._own_line)}" if over else "collected",
                reversible=False,
            ),
            reason=reason,
            expected=expected,
            action=CleanSelf(line=self._own_line),
        )

    def _viewers(self, snap: Snapshot) -> int | None:
        """Viewers watching now: the backend's active sessions, else MediaMTX readers (which include its warmers)."""
        if snap.sessions is not None:
            return snap.sessions.active
        if snap.mediamtx is not None:
            return snap.mediamtx.readers
        return None

    def _restart_blocker(self, snap: Snapshot, growth: Growth | None) -> str | None:
        """Why a due restart must wait (interval, not quiet), or None when it may go ahead."""
        o = self._o
        now = self._clock()
        if self._last_restart is not None and now - self._last_restart < o.restart_min_interval_seconds:
            left = o.restart_min_interval_seconds - (now - self._last_restart)
            return f"the last restart was {_duration(now - self._last_restart)} ago ({_duration(left)} to wait)"
        eta = growth.seconds_to(o.backend_kill_bytes) if growth is not None else None
        if eta is not None and eta <= o.restart_urgent_seconds:
            return None
        viewers = self._viewers(snap)
        if viewers is None:
            return "the number of viewers is unknown, so no quiet moment can be chosen"
        if viewers > o.restart_quiet_max_viewers:
            return f"{viewers} viewers are watching (quiet is at most {o.restart_quiet_max_viewers})"
        return None

    def _plan_restart(self, snap: Snapshot, armed: set[str]) -> _Step | None:
        o = self._o
        backend = snap.backend
        if o.restart_command is None or backend is None or "backend_rss_bytes" not in armed:
            return None
        growth = self.backend_growth()
        if self._restart_blocker(snap, growth) is not None:
            return None
        rss = backend.rss_bytes
        eta = growth.seconds_to(o.backend_kill_bytes) if growth is not None else None
        if rss >= o.backend_rss_limit_bytes:
            reason = f"backend RSS is {_mib(rss)}, over its limit of {_mib(o.backend_rss_limit_bytes)}"
        else:
            reason = f"backend RSS is {_mib(rss)} and reaches pm2's {_mib(o.backend_kill_bytes)} kill"
        if eta is not None:
            reason += f" (projected kill in {_duration(eta)})"
        viewers = self._viewers(snap)
        reason += f"; graceful restart with {viewers if viewers is not None else 'unknown'} viewers"
        return _Step(
            change=Change(
                target="backend.process",
                action=RESTART,
                before=f"pid {backend.pid}, {_mib(rss)}",
                after="restarted",
                reversible=False,
                risk=Risk.DISRUPTIVE,
            ),
            reason=reason,
            expected=ExpectedEffect(
                signal="backend_rss_bytes",
                direction=Direction.DOWN,
                amount=float(max(MIB, rss - min(rss, o.backend_rss_limit_bytes) * self._exit_ratio)),
                settle_seconds=o.restart_settle_seconds,
            ),
            action=RestartBackend(
                pid=backend.pid, start_ticks=start_ticks(backend.pid, self._proc), enter=self.backend_enter(growth)
            ),
        )

    # applying ----------------------------------------------------------------------------------------------------

    async def apply(self, plan: Plan) -> ApplyResult:
        """Run the planned steps in order, each re-reading its live value first; the first failure stops."""
        done: list[Change] = []
        notes: list[str] = []
        for step in plan.actions:
            try:
                match step:
                    case PruneHls():
                        change, note = await self._apply_prune(step)
                    case TrimBackendCache():
                        change, note = await self._apply_cache(step)
                    case CleanSelf():
                        change, note = await self._apply_self()
                    case RestartBackend():
                        change, note = await self._apply_restart(step)
                    case _:
                        raise StrategyError(f"unknown step {step.kind!r} in the plan")
            except StrategyError as exc:
                if not notes:
                    raise
                raise StrategyError(f"{exc} (already done: {'; '.join(notes)})") from None
            if change is not None:
                done.append(change)
            notes.append(note)
        return ApplyResult(changes=tuple(done), detail="; ".join(notes) or "nothing needed")

    async def _apply_prune(self, action: PruneHls) -> tuple[Change | None, str]:
        root = Path(action.root)
        if self._hls_root is None or root != self._hls_root:
            raise StrategyError(f"refusing to prune {root}: it is not the configured HLS directory")
        result = await asyncio.to_thread(
            hls.prune_stale,
            root,
            stale_age=action.stale_age,
            max_files=action.max_files,
            now=self._wall,
            expected_root=self._hls_real,
        )
        kept = ", ".join(f"{n} {why}" for why, n in sorted(result.kept.items()))
        note = f"pruned {result.removed} stale HLS files ({_mib(result.removed_bytes)})"
        if result.emptied:
            note += f", emptied {result.emptied} ({_mib(result.emptied_bytes)}) in directories it may not unlink in"
        if result.vanished:
            note += f", {result.vanished} vanished meanwhile"
        if kept:
            note += f", kept on re-check: {kept}"
        if result.limited:
            note += f", {result.candidates - result.removed} left for the next round"
        done = result.removed + result.emptied
        if done == 0:
            return None, note
        return (
            Change(
                target="hls.stale_files",
                action=PRUNE,
                before=f"{result.candidates} files",
                after=f"{result.candidates - done} files (freed {_mib(result.removed_bytes + result.emptied_bytes)})",
                reversible=False,
            ),
            note,
        )

    async def _apply_cache(self, step: TrimBackendCache) -> tuple[Change | None, str]:
        client = self._backend
        if client is None:
            raise StrategyError("no backend client configured")
        limit = step.limit
        floor = limit * self._exit_ratio
        live = await backend_cache.read_stats(client)
        if live.size < floor:
            return None, f"backend cache already down to {live.size} entries"
        removed = 0
        prefixes = step.prefixes
        for prefix in prefixes:
            removed += await backend_cache.invalidate(client, prefix)
        size = live.size - removed
        action = "cache_invalidate"
        if prefixes:
            size = (await backend_cache.read_stats(client)).size
        if size >= floor:
            # the junk sits under other paths: only a clear empties it
            await backend_cache.clear(client)
            action = "cache_clear"
            size = 0
        warmed = await backend_cache.warm(client, step.warm)
        note = f"backend cache {live.size} -> {size} entries"
        if prefixes:
            note += f" (invalidated {removed} under {', '.join(prefixes)})"
        if action == "cache_clear":
            note += " (cleared)"
        if warmed.warmed:
            note += f"; warmed {len(warmed.warmed)} endpoints"
        if warmed.failed:
            note += "; not warmed: " + ", ".join(f"{e} ({why})" for e, why in warmed.failed.items())
        return (
            Change(
                target="backend.cache",
                action=action,
                before=f"{live.size} entries",
                after=f"{size} entries, then {len(warmed.warmed)} warmed",
                reversible=False,
            ),
            note,
        )

    async def _apply_self(self) -> tuple[Change | None, str]:
        def clean() -> tuple[int | None, int, bool, int | None]:
            pid = os.getpid()
            before = rss_bytes(pid, self._proc)
            # The worker thread does not spare the loop here: a collection holds the GIL throughout. It stays
            # short because the daemon freezes its start-up objects (optimizer/app.py), so only newer ones are walked.
            collected = gc.collect()
            trimmed = _malloc_trim()
            if self._trim_history is not None:
                self._trim_history()
            return before, collected, trimmed, rss_bytes(pid, self._proc)

        before, collected, trimmed, after = await asyncio.to_thread(clean)
        if before is None or after is None:
            raise StrategyError("cannot read the daemon's own RSS from /proc/self")
        note = f"own RSS {_mib(before)} -> {_mib(after)} ({collected} objects collected"
        note += ", heap trimmed" if trimmed else ""
        note += ", history trimmed)" if self._trim_history is not None else ")"
        return (
            Change(
                target="daemon.memory", action="gc_collect", before=_mib(before), after=_mib(after), reversible=False
            ),
            note,
        )

    async def _apply_restart(self, step: RestartBackend) -> tuple[Change | None, str]:
        o = self._o
        command = o.restart_command
        if command is None:
            raise StrategyError("no restart command configured")
        pid, ticks = step.pid, step.start_ticks
        if not same_process_running(pid, ticks, self._proc):
            return None, f"backend process {pid} is already gone (restarted by someone else); nothing done"
        rss = rss_bytes(pid, self._proc)
        enter = step.enter
        if rss is not None and rss < enter * self._exit_ratio:
            return None, f"backend RSS is back to {_mib(rss)}; no restart needed"
        now = self._clock()
        if self._last_restart is not None and now - self._last_restart < o.restart_min_interval_seconds:
            raise StrategyError("a restart already ran within restart_min_interval_seconds")
        # a real-time bound on real processes, whatever clock the decisions run on
        deadline = time.monotonic() + o.restart_timeout_seconds
        await self._run_restart(command, o.restart_timeout_seconds)
        self._last_restart = self._clock()
        while same_process_running(pid, ticks, self._proc):
            if time.monotonic() >= deadline:
                raise StrategyError(
                    f"restart command succeeded but backend process {pid} still runs after "
                    f"{o.restart_timeout_seconds:g} s"
                )
            await asyncio.sleep(RESTART_POLL_SECONDS)
        before = f"pid {pid}, {_mib(rss)}" if rss is not None else f"pid {pid}"
        return (
            Change(
                target="backend.process",
                action=RESTART,
                before=before,
                after="restarted",
                reversible=False,
                risk=Risk.DISRUPTIVE,
            ),
            f"backend restarted with {command!r}; process {pid} has exited",
        )

    async def _run_restart(self, command: str, limit_seconds: float) -> None:
        """Run the configured command without a shell; StrategyError on failure, timeout or cancellation."""
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise StrategyError(f"restart command cannot be parsed: {exc}") from None
        if not argv:
            raise StrategyError("restart command is empty")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise StrategyError(f"restart command {argv[0]!r} cannot be started: {exc.strerror}") from None
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), limit_seconds)
        except BaseException as exc:
            # timed out, or the engine's apply timeout cancelled us: the command must not outlive the action
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise StrategyError(f"restart command did not finish within {limit_seconds:g} s; killed it") from None
            raise
        if proc.returncode != 0:
            tail = output[-OUTPUT_TAIL_BYTES:].decode("utf-8", errors="replace").strip()
            raise StrategyError(f"restart command exited with {proc.returncode}: {tail or 'no output'}")
        log.info("backend_restart_command_done", command=argv[0])

    async def reconcile(self, plan: Plan) -> str:
        """An interrupted restart: say whether the old backend process is gone; the other steps are idempotent."""
        restart = next((a for a in plan.actions if isinstance(a, RestartBackend)), None)
        if restart is None:
            return "nothing to reconcile: pruning, cache cleanup and self-cleanup are idempotent"
        pid = restart.pid
        if pid and same_process_running(pid, restart.start_ticks, self._proc):
            return f"backend process {pid} still runs: the interrupted restart did not happen"
        return f"backend process {pid} is gone: the interrupted restart went through (or pm2 replaced it)"

    def legacy_actions(self, params: Mapping[str, object]) -> tuple[Action, ...]:
        """A plan journaled as ``{"steps": [name, ...], name: {its parameters}, ...}``, names as the actions' kinds."""
        o = self._o
        defaults: dict[str, tuple[type[MemoryAction], dict[str, object]]] = {
            PRUNE: (
                PruneHls,
                {"root": str(self._hls_root), "stale_age": o.hls_stale_age_seconds, "max_files": o.hls_prune_max_files},
            ),
            CACHE: (TrimBackendCache, {"prefixes": [], "limit": o.cache_entries_limit}),
            SELF: (CleanSelf, {"line": self._own_line}),
            RESTART: (RestartBackend, {"enter": float(o.backend_rss_limit_bytes)}),
        }
        steps = params.get("steps")
        if not isinstance(steps, list):
            raise ValueError("memory: a journaled plan without its list of steps")
        out: list[Action] = []
        for name in steps:
            if name not in defaults:
                raise ValueError(f"memory: a journaled plan with an unknown step {name!r}")
            cls, fallback = defaults[name]
            given = params.get(name)
            out.append(decode(cls, {**fallback, **(given if isinstance(given, Mapping) else {})}))
        return tuple(out)
