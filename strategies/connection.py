"""The connection strategy: watch that the backend's session sweep works, report socket leaks, kick idle readers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from config import units
from config.settings import ConnectionOptions, DetectionSettings, Settings, StrategyOptions
from metrics.snapshot import SessionSample
from strategies.actions import sessions as sess
from strategies.actions.mediamtx import MediaMtxKicker, ReaderSession
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
    StrategyDeferred,
    StrategyDeps,
    StrategyError,
    TriggerSpec,
    decode,
    options_as,
)

ESTABLISHED = "tcp_established"
STALE = "sessions_stale"
# pacing families: ending stuck sessions and kicking idle readers each have their own cooldown and budget
SESSIONS_FAMILY = "end_sessions"
KICK_FAMILY = "kick"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndStuckSessions(Action):
    """End the viewer sessions silent past the backend's timeout, as its own sweep would; the count is what planning saw."""

    kind = "connection.end_sessions"
    count: int
    oldest_heartbeat: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleReader:
    """A MediaMTX reader planned for a kick, with the bytes it had sent (more at apply: it is sending again)."""

    kind: str
    id: str
    bytes_sent: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class KickReaders(Action):
    """Kick these idle MediaMTX readers (those still idle when re-listed)."""

    kind = "connection.kick"
    readers: tuple[IdleReader, ...]


def parse_created(text: str | None) -> datetime | None:
    """MediaMTX's RFC 3339 ``created`` (nanoseconds, ``Z``) as an aware datetime."""
    if not text:
        return None
    value = text.strip().replace("Z", "+00:00")
    head, dot, rest = value.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        value = f"{head}.{digits[:6]}{zone}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReaderWatch:
    """When a reader was first seen with its current byte count."""

    bytes_sent: int
    since: float


class IdleReaders:
    """Remembers each reader's byte count over time: a reader that sent nothing for long enough is idle."""

    def __init__(self) -> None:
        self._seen: dict[str, ReaderWatch] = {}

    def observe(self, readers: Sequence[ReaderSession], now: float) -> None:
        """Record a listing; readers that disappeared are forgotten."""
        fresh: dict[str, ReaderWatch] = {}
        for reader in readers:
            old = self._seen.get(reader.key)
            fresh[reader.key] = (
                old
                if old is not None and old.bytes_sent == reader.bytes_sent
                else ReaderWatch(bytes_sent=reader.bytes_sent, since=now)
            )
        self._seen = fresh

    def idle(
        self, readers: Sequence[ReaderSession], now: float, idle_seconds: float, wall: datetime
    ) -> list[ReaderSession]:
        """Readers that sent nothing for ``idle_seconds``: watched that long, or never sent a byte since creation."""
        out = []
        for reader in readers:
            watch = self._seen.get(reader.key)
            if watch is not None and now - watch.since >= idle_seconds:
                out.append(reader)
                continue
            created = parse_created(reader.created)
            if reader.bytes_sent == 0 and created is not None and (wall - created).total_seconds() >= idle_seconds:
                out.append(reader)
        return out


class SweepProgress:
    """Whether the backend's sweep makes progress: since when the stale count has been above 0 and not gone down.

    Fed with the ``sessions_stale`` samples (time, count) in order; remembers only the start of the current
    flat-or-rising run and when the count last went down, so its memory does not grow.
    """

    def __init__(self) -> None:
        self._seen_until: float | None = None
        self._last: float | None = None
        self.flat_since: float | None = None
        self.last_down: float | None = None

    def observe(self, points: Iterable[tuple[float, float]]) -> None:
        """Take in the samples not seen yet."""
        for at, value in points:
            if self._seen_until is not None and at <= self._seen_until:
                continue
            self._seen_until = at
            if value <= 0:
                self.flat_since = None
            elif self._last is not None and value < self._last:
                self.last_down = at
                self.flat_since = at
            elif self.flat_since is None:
                self.flat_since = at
            self._last = value

    def flat_for(self) -> float:
        """Seconds the stale count has been seen above 0 without going down, up to the latest sample (0 when it is 0).

        Measured between samples, never up to the present: a gap in sampling is no evidence.
        """
        if self.flat_since is None or self._seen_until is None:
            return 0.0
        return max(0.0, self._seen_until - self.flat_since)


class ConnectionStrategy(Strategy):
    """Watches the backend's connections and viewer sessions; ends sessions its own sweep left behind.

    Watches: viewer sessions in the backend database (``sessions_active``; ``sessions_stale``: active sessions
    silent past the backend's own ``session_timeout_seconds``, 15 s, compared exactly as its sweep compares,
    in its own timezone read from ``system_settings``; ``sessions_stuck``: silent past
    ``stuck_session_seconds``), TCP sockets per state on the backend's ports (``tcp_established``,
    ``tcp_close_wait``, ``tcp_time_wait``) and MediaMTX readers (``mediamtx_readers``).

    The backend's sweep runs every ``sweep_interval_seconds`` (20 s) and ends every session silent past 15 s.
    A session silent past ``stuck_session_seconds`` (120 s) arms the strategy, but it acts only when the sweep
    is shown not to progress: the count of stale sessions has not gone down for ``stuck_sweep_periods`` (6)
    sweep periods and the oldest has been silent that long too. While the count goes down the sweep is
    working through a backlog (20,000 stale sessions take it minutes): the finding ``sessions-sweep-backlog``
    says so, and nothing is done.

    Changes (safe, irreversible): the stalled sweep's work is done for it. Every session it would end now is
    ended the way its ``endSession`` does it (``is_active = 0``, ``ended_at`` = the last heartbeat,
    ``duration_seconds``, the ``viewer_session_history`` row, the ``camera_view_stats`` view), in batches of
    ``session_batch_rows`` in short transactions, each session guarded by ``is_active = 1`` so one ended
    meanwhile is not copied or counted twice, giving up on a busy database after ``busy_timeout_ms``. The finding
    ``sessions-sweep-stuck`` reports it, and stays for ``finding_hold_seconds`` after the last stalled look
    because the backend still needs fixing.

    Finding ``close-wait-leak``: CLOSE_WAIT sockets at or above ``close_wait_threshold`` in N of the last
    M samples (the backend does not close connections its peers closed), with the numbers.

    ESTABLISHED sockets are always watched against the line ``max(established_floor, learned baseline x
    baseline_factor)``: the floor (500) while no baseline is learned, three times the usual p95 (by default)
    once one is. Past the line in N of the last M samples the strategy arms and reports the finding
    ``connections-above-normal`` with the numbers (sockets now and at most, the line, floor, baseline and
    factor, active viewer sessions, MediaMTX readers). That finding is all it does unless reader kicking
    is on: arming then plans nothing, so no empty history rows are written.

    Disruptive (opt-in with ``kick_idle_readers`` and ``engine.allow_disruptive``): past that line,
    readers that sent nothing for ``idle_reader_seconds`` are kicked through MediaMTX's API (at most
    ``kick_max_readers`` at a time; RTSP, RTSPS, RTMP, WebRTC and SRT readers; HLS readers cannot be
    kicked, their muxer closes itself).

    Options (``CCTV_OPTIMIZER_STRATEGIES__CONNECTION__*``): see ConnectionOptions. ``ENABLE_CONNECTION_POOLING``
    switches the strategy off.

    Risks: ending a session that is in fact alive makes that viewer's next heartbeat fail, and the
    player starts a new session; only sessions silent past the backend's own timeout are ended, which a viewer
    whose heartbeats arrive (every 5 s) never is. The backend caches its public view counts for a few
    seconds, so they catch up with ``camera_view_stats`` a little later. A kicked reader reconnects if it
    is still there. Nothing here is reverted.
    """

    name = "connection"
    RUNTIME_STATE = (
        "_idle",
        "_stuck_seen_at",
        "_stuck_evidence",
        "_ended_total",
        "_ended_at",
        "_sweep",
    )

    Options = ConnectionOptions

    @classmethod
    def from_config(cls, options: StrategyOptions, settings: Settings, deps: StrategyDeps) -> Built | Skipped:
        """Build from ``strategies.connection`` and the shared readers."""
        s = options_as(options, ConnectionOptions)
        strategy = cls(
            s,
            database=settings.backend.database,
            timezone_offset_hours=settings.backend.timezone_offset_hours,
            detection=settings.detection,
            exit_ratio=settings.detection.exit_ratio,
            kicker=MediaMtxKicker(settings.backend.mediamtx_url, settings.backend.timeout_seconds)
            if s.kick_idle_readers
            else None,
            clock=deps.monotonic,
        )
        return Built(strategy, s.mode, s.enabled and settings.enable_connection_pooling)

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        options: ConnectionOptions,
        *,
        database: Path | None,
        timezone_offset_hours: float,
        detection: DetectionSettings,
        exit_ratio: float,
        kicker: MediaMtxKicker | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Any = None,
    ) -> None:
        self._o = options
        self._db = database
        self._offset = timezone_offset_hours
        self._detection = detection
        self._exit_ratio = exit_ratio
        self._kicker = kicker if options.kick_idle_readers else None
        self._clock = clock
        self._sweep = SweepProgress()
        self._log = log if log is not None else structlog.get_logger("strategy.connection")
        self._idle = IdleReaders()
        self._stuck_seen_at: float | None = None
        self._stuck_evidence: dict[str, Any] = {}
        self._ended_total = 0
        self._ended_at: float | None = None

    # detection ---------------------------------------------------------------------------------------------------

    def established_line(self, baselines: Mapping[str, float]) -> float:
        """ESTABLISHED sockets at or above this many are more than usual: max(floor, baseline x factor)."""
        learned = baselines.get(ESTABLISHED, 0.0) * self._o.baseline_factor
        return max(float(self._o.established_floor), learned)

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """Stuck sessions arm the strategy; so do ESTABLISHED sockets past their (baseline-driven) line."""
        specs = [TriggerSpec(signal="sessions_stuck", enter=1.0, exit=1.0)] if self._db is not None else []
        line = self.established_line(baselines)
        specs.append(TriggerSpec(signal=ESTABLISHED, enter=line, exit=line * self._exit_ratio))
        return tuple(specs)

    def stall_seconds(self) -> float:
        """How long the stale count must not go down before the sweep counts as stuck."""
        return self._o.stuck_sweep_periods * self._o.sweep_interval_seconds

    def sweep_stalled(self, ctx: StrategyContext) -> bool:
        """Whether the backend's sweep is shown not to progress (after taking in the samples since the last look)."""
        self._sweep.observe(ctx.windows.points(STALE))
        sessions = ctx.snapshot.sessions
        if sessions is None or sessions.stale <= 0:
            return False
        oldest = sessions.oldest_heartbeat_age_seconds or 0.0
        return (
            self._sweep.flat_for() >= self.stall_seconds()
            and oldest >= self._o.session_timeout_seconds + self.stall_seconds()
        )

    # findings ----------------------------------------------------------------------------------------------------

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """``sessions-sweep-stuck`` or ``sessions-sweep-backlog``; ``close-wait-leak``; ``connections-above-normal``."""
        out: list[Finding] = []
        sessions = ctx.snapshot.sessions
        stalled = self.sweep_stalled(ctx)
        if stalled and sessions is not None:
            self._stuck_seen_at = ctx.now
            self._stuck_evidence = {
                "stale_sessions": sessions.stale,
                "stuck_sessions": sessions.stuck,
                "active_sessions": sessions.active,
                "oldest_heartbeat_age_seconds": round(sessions.oldest_heartbeat_age_seconds or 0.0, 1),
                "not_down_for_seconds": round(self._sweep.flat_for(), 1),
                "timezone": sessions.timezone,
            }
        last = max((t for t in (self._stuck_seen_at, self._ended_at) if t is not None), default=None)
        if last is not None and ctx.now - last <= self._o.finding_hold_seconds:
            out.append(
                Finding(
                    id="sessions-sweep-stuck",
                    strategy=self.name,
                    severity="warning",
                    summary=(
                        "the backend's viewer-session sweep is not ending silent sessions: the number of sessions "
                        f"silent past its {self._o.session_timeout_seconds:g} s timeout did not go down for "
                        f"{self._o.stuck_sweep_periods} sweep periods ({units.duration(self.stall_seconds())})"
                    ),
                    evidence={
                        **self._stuck_evidence,
                        "stale_now": sessions.stale if sessions is not None else None,
                        "sweep_periods": self._o.stuck_sweep_periods,
                        "sweep_interval_seconds": self._o.sweep_interval_seconds,
                        "backend_timeout_seconds": self._o.session_timeout_seconds,
                        "ended_by_optimizer": self._ended_total,
                        "last_seen_seconds_ago": round(ctx.now - last, 1),
                    },
                )
            )
        elif not stalled and sessions is not None and sessions.stuck > 0:
            out.append(self._backlog(sessions, ctx.now))
        leak = self._close_wait(ctx)
        if leak is not None:
            out.append(leak)
        crowded = self._above_normal(ctx)
        if crowded is not None:
            out.append(crowded)
        return tuple(out)

    def _sweep_state(self, now: float) -> str:
        """Why nothing is done yet: the sweep is seen working, or the count has not stood still long enough."""
        down = self._sweep.last_down
        if down is not None and now - down <= self.stall_seconds():
            return (
                f"the backend's sweep is working through them (the count last went down "
                f"{units.duration(now - down)} ago), so nothing is done"
            )
        return (
            f"their number has not gone down for {units.duration(self._sweep.flat_for())}; the sweep counts as "
            f"stuck after {units.duration(self.stall_seconds())} ({self._o.stuck_sweep_periods} of its periods)"
        )

    def _backlog(self, sessions: SessionSample, now: float) -> Finding:
        """Sessions silent past the stuck line while the sweep still makes progress: it is catching up."""
        down = self._sweep.last_down
        state = self._sweep_state(now)
        return Finding(
            id="sessions-sweep-backlog",
            strategy=self.name,
            severity="info",
            summary=(
                f"{sessions.stale} viewer session(s) are silent past the backend's "
                f"{self._o.session_timeout_seconds:g} s timeout, {sessions.stuck} of them past "
                f"{units.duration(self._o.stuck_session_seconds)}: {state}"
            ),
            evidence={
                "stale_sessions": sessions.stale,
                "stuck_sessions": sessions.stuck,
                "active_sessions": sessions.active,
                "oldest_heartbeat_age_seconds": round(sessions.oldest_heartbeat_age_seconds or 0.0, 1),
                "last_down_seconds_ago": round(now - down, 1) if down is not None else None,
                "not_down_for_seconds": round(self._sweep.flat_for(), 1),
                "stuck_after_seconds": round(self.stall_seconds(), 1),
            },
        )

    def _above_normal(self, ctx: StrategyContext) -> Finding | None:
        n, m = self._detection.samples_required, self._detection.window_samples
        line = self.established_line(ctx.baselines)
        over = ctx.windows.count_above(ESTABLISHED, line, m)
        if over < n:
            return None
        values = ctx.windows.values(ESTABLISHED, m)
        signals = ctx.snapshot.signals()
        baseline = ctx.baselines.get(ESTABLISHED)
        sessions = signals.get("sessions_active")
        readers = signals.get("mediamtx_readers")
        kicking = self._kicker is not None
        return Finding(
            id="connections-above-normal",
            strategy=self.name,
            severity="warning",
            summary=(
                f"{int(values[-1])} ESTABLISHED sockets on the backend's ports, over the line of {line:.0f} "
                f"(the larger of the floor {self._o.established_floor} and the usual "
                f"{'-' if baseline is None else f'{baseline:.0f}'} x {self._o.baseline_factor:g})"
                + ("" if kicking else "; reader kicking is off, so nothing is done about it")
            ),
            evidence={
                "established": int(values[-1]),
                "established_max": int(max(values)),
                "line": round(line, 1),
                "floor": self._o.established_floor,
                "baseline": round(baseline, 1) if baseline is not None else None,
                "baseline_factor": self._o.baseline_factor,
                "samples_over": over,
                "window_samples": m,
                "sessions_active": int(sessions) if sessions is not None else None,
                "mediamtx_readers": int(readers) if readers is not None else None,
                "kick_idle_readers": kicking,
            },
        )

    def _close_wait(self, ctx: StrategyContext) -> Finding | None:
        n, m = self._detection.samples_required, self._detection.window_samples
        threshold = self._o.close_wait_threshold
        over = ctx.windows.count_above("tcp_close_wait", threshold, m)
        if over < n:
            return None
        values = ctx.windows.values("tcp_close_wait", m)
        tcp = ctx.snapshot.tcp
        return Finding(
            id="close-wait-leak",
            strategy=self.name,
            severity="warning",
            summary=(
                f"{int(values[-1])} sockets in CLOSE_WAIT on the backend's ports (threshold {threshold}): "
                "peers closed these connections and the backend never closed its end"
            ),
            evidence={
                "close_wait": int(values[-1]),
                "close_wait_max": int(max(values)),
                "threshold": threshold,
                "samples_over": over,
                "window_samples": m,
                "established": tcp.get("established") if tcp is not None else None,
                "time_wait": tcp.get("time_wait") if tcp is not None else None,
                "ports": list(tcp.ports) if tcp is not None else [],
            },
        )

    # planning ----------------------------------------------------------------------------------------------------

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """End stuck sessions (safe) when there are any; otherwise kick idle readers when that is switched on."""
        if self._db is not None and ("sessions_stuck" in ctx.armed or ctx.manual):
            plan = await self._sessions_plan(ctx)
            if plan is not None:
                return plan
        # without kicking, ESTABLISHED past its line is the finding only: nothing to plan, no empty row
        if self._kicker is not None and (ESTABLISHED in ctx.armed or ctx.manual):
            return await self._kick_plan(ctx)
        return None

    async def _sessions_plan(self, ctx: StrategyContext) -> Plan | None:
        assert self._db is not None
        status = ctx.snapshot.sources.get("database")
        if ctx.manual and ctx.snapshot.sessions is None and status is not None and status.error:
            # asked by hand while the database cannot be read: say why (a deferral, never a failure)
            raise StrategyDeferred(status.error)
        if not self.sweep_stalled(ctx):
            sessions = ctx.snapshot.sessions
            if ctx.manual and sessions is not None and sessions.stale > 0 and self._kicker is None:
                raise StrategyDeferred(
                    f"{sessions.stale} session(s) silent past the backend's timeout: {self._sweep_state(ctx.now)}"
                )
            return None
        stale = await asyncio.to_thread(
            sess.count_stale, self._db, self._o.session_timeout_seconds, self._o.busy_timeout_ms, self._offset
        )
        if stale.count == 0:
            return None
        flat = self._sweep.flat_for()
        return Plan(
            strategy=self.name,
            reason=(
                f"{stale.count} viewer session(s) silent past the backend's "
                f"{units.duration(self._o.session_timeout_seconds)} timeout and their number has not gone down for "
                f"{units.duration(flat)} ({self._o.stuck_sweep_periods} or more sweep periods of "
                f"{units.duration(self._o.sweep_interval_seconds)}): the sweep is stuck"
            ),
            changes=(
                Change(
                    target="backend.viewer_sessions",
                    action="end_stuck_sessions",
                    before=f"{stale.count} active, silent past {self._o.session_timeout_seconds:g} s",
                    after="ended as the backend ends them (history row, view counted)",
                    reversible=False,
                ),
            ),
            expected=ExpectedEffect(
                signal=STALE,
                direction=Direction.DOWN,
                amount=float(stale.count),
                settle_seconds=self._o.settle_seconds,
            ),
            actions=(EndStuckSessions(count=stale.count, oldest_heartbeat=stale.oldest_heartbeat),),
            family=SESSIONS_FAMILY,
        )

    async def _kick_plan(self, ctx: StrategyContext) -> Plan | None:
        assert self._kicker is not None
        readers = await self._kicker.readers()
        now = self._clock()
        self._idle.observe(readers, now)
        idle = self._idle.idle(readers, now, self._o.idle_reader_seconds, datetime.now(UTC))
        idle = idle[: self._o.kick_max_readers]
        if not idle:
            return None
        signals = ctx.snapshot.signals()
        established = signals.get(ESTABLISHED)
        readers_now = signals.get("mediamtx_readers")
        return Plan(
            strategy=self.name,
            reason=(
                f"{int(established or 0)} ESTABLISHED sockets (line {self.established_line(ctx.baselines):.0f}); "
                f"{len(idle)} MediaMTX reader(s) sent nothing for {self._o.idle_reader_seconds:g} s"
            ),
            changes=tuple(
                Change(
                    target=f"mediamtx.{r.kind}.{r.id}",
                    action="kick_reader",
                    before=f"{r.state} {r.path or '-'} from {r.remote or '-'}, {r.bytes_sent} B sent",
                    after="kicked",
                    reversible=False,
                    risk=Risk.DISRUPTIVE,
                )
                for r in idle
            ),
            expected=ExpectedEffect(
                signal="mediamtx_readers",
                direction=Direction.DOWN,
                amount=float(len(idle)),
                settle_seconds=self._o.settle_seconds,
            )
            if readers_now is not None
            else None,
            actions=(
                KickReaders(readers=tuple(IdleReader(kind=r.kind, id=r.id, bytes_sent=r.bytes_sent) for r in idle)),
            ),
            family=KICK_FAMILY,
        )

    # acting ------------------------------------------------------------------------------------------------------

    async def apply(self, plan: Plan) -> ApplyResult:
        """Re-read and end the stuck sessions, or re-list and kick the readers still idle."""
        match plan.actions:
            case (EndStuckSessions(),):
                return await self._end_sessions()
            case (KickReaders() as action,):
                return await self._kick(action.readers)
        raise StrategyError(f"connection: no such action: {', '.join(a.kind for a in plan.actions) or 'none'}")

    async def _end_sessions(self) -> ApplyResult:
        if self._db is None:
            raise StrategyError("backend.database is not configured")
        result = await asyncio.to_thread(
            sess.end_stale_sessions,
            self._db,
            timeout_seconds=self._o.session_timeout_seconds,
            fallback_offset_hours=self._offset,
            batch_rows=self._o.session_batch_rows,
            max_batches=self._o.session_max_batches,
            busy_timeout_ms=self._o.busy_timeout_ms,
        )
        if result.ended == 0:
            return ApplyResult(changes=(), detail="no stale session left: the backend ended them meanwhile")
        self._ended_total += result.ended
        self._ended_at = self._clock()
        self._log.warning(
            "stuck_sessions_ended",
            strategy=self.name,
            ended=result.ended,
            batches=result.batches,
            remaining=result.remaining,
            stopped=result.stopped,
        )
        detail = f"ended {result.ended} session(s) in {result.batches} batch(es); {result.remaining} still stale"
        if result.stopped:
            detail += f"; stopped: {result.stopped}"
        return ApplyResult(
            changes=(
                Change(
                    target="backend.viewer_sessions",
                    action="end_stuck_sessions",
                    before=f"{result.ended + max(result.remaining, 0)} stale",
                    after=f"{max(result.remaining, 0)} stale ({result.ended} ended, copied to history)",
                    reversible=False,
                ),
            ),
            detail=detail,
        )

    async def _kick(self, planned: Sequence[IdleReader]) -> ApplyResult:
        assert self._kicker is not None
        live = {r.key: r for r in await self._kicker.readers()}
        done: list[Change] = []
        notes: list[str] = []
        for entry in planned:
            key = f"{entry.kind}/{entry.id}"
            reader = live.get(key)
            if reader is None:
                notes.append(f"{key} already gone")
                continue
            if reader.bytes_sent != entry.bytes_sent:
                notes.append(f"{key} is sending again")
                continue
            try:
                kicked = await self._kicker.kick(reader)
            except StrategyError as exc:
                if not done:
                    raise
                notes.append(f"stopped: {exc}")
                break
            if not kicked:
                notes.append(f"{key} already gone")
                continue
            done.append(
                Change(
                    target=f"mediamtx.{reader.kind}.{reader.id}",
                    action="kick_reader",
                    before=f"{reader.state} {reader.path or '-'}, {reader.bytes_sent} B sent",
                    after="kicked",
                    reversible=False,
                    risk=Risk.DISRUPTIVE,
                )
            )
        if done:
            self._log.warning("idle_readers_kicked", strategy=self.name, count=len(done))
        detail = f"kicked {len(done)} reader(s)" + (f"; {'; '.join(notes)}" if notes else "")
        return ApplyResult(changes=tuple(done), detail=detail)

    async def reconcile(self, plan: Plan) -> str:
        """Each batch of ended sessions is complete or absent, and kicks are one-shot: say what is left."""
        if any(isinstance(a, EndStuckSessions) for a in plan.actions) and self._db is not None:
            stale = await asyncio.to_thread(
                sess.count_stale, self._db, self._o.session_timeout_seconds, self._o.busy_timeout_ms, self._offset
            )
            return f"{stale.count} session(s) still stale; the next round ends them if the sweep is still stuck"
        return "nothing to reconcile: kicks are one-shot"

    def legacy_actions(self, params: Mapping[str, object]) -> tuple[Action, ...]:
        """A plan journaled as ``{"mode": "sessions", "count": ...}`` or ``{"mode": "kick", "readers": [...]}``."""
        mode = params.get("mode")
        if mode == "sessions":
            return (decode(EndStuckSessions, params),)
        if mode == "kick":
            return (decode(KickReaders, params),)
        raise ValueError(f"connection: a journaled plan of unknown mode {mode!r}")

    async def close(self) -> None:
        """Close the MediaMTX client."""
        if self._kicker is not None:
            await self._kicker.close()
