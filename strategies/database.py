"""The database strategy: keep the backend's SQLite WAL bounded and its statistics fresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from config import units
from config.settings import DatabaseOptions, Settings, StrategyOptions
from metrics import backendtime as bt
from metrics.snapshot import DatabaseSample, TableStat, age_days
from strategies.actions import backup
from strategies.actions import retention as ret
from strategies.actions import sqlite as sql
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

PRUNE = "retention_prune"
VACUUM = "vacuum"
# pacing families: a checkpoint, a retention run and a VACUUM each wait only for their own cooldown and budget
CHECKPOINT_FAMILY = "checkpoint"
RETENTION_FAMILY = "retention"
VACUUM_FAMILY = "vacuum"
TABLE_AGE_SIGNAL = "table_oldest_days:"
# the backend archives history older than 90 days every 6 hours: a day more means the job is not keeping up
HISTORY_DAYS = 90.0
HISTORY_TABLE = "viewer_session_history"
ARCHIVE_TABLE = "viewer_session_history_archive"
# retention arms a day past the cutoff and disarms once the oldest row is back within the cutoff plus a margin
ARM_SLACK_DAYS = 1.0
DISARM_SLACK_DAYS = 0.6
PLAN_COUNT_SECONDS = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointWal(Action):
    """Checkpoint the WAL (PASSIVE, then TRUNCATE when the live WAL is still at or over ``limit`` bytes)."""

    kind = "database.checkpoint"
    limit: int
    # whether the WAL was over its limit when planned (a checkpoint by hand is not)
    truncate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OptimizeStatistics(Action):
    """PRAGMA optimize: refresh the query planner's statistics."""

    kind = "database.optimize"


@dataclass(frozen=True, slots=True, kw_only=True)
class QuickCheck(Action):
    """PRAGMA quick_check: read every page and report what is damaged (read-only)."""

    kind = "database.quick_check"


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneTables(Action):
    """Delete the rows older than each table's cutoff (in the table's own time base), in this order."""

    kind = "database.prune"
    tables: tuple[str, ...]
    cutoffs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Vacuum(Action):
    """Back the file up, VACUUM it and truncate the WAL (inside the quiet window only)."""

    kind = "database.vacuum"


# the actions a checkpoint plan may hold, run in this order
MaintenanceStep = CheckpointWal | OptimizeStatistics | QuickCheck


# figures in reasons and changes read the same everywhere (config.units): IEC sizes, days
_mib = units.size
_days = units.days


def _count(n: int, noun: str) -> str:
    """``1 table``, ``3 tables``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _age_days(stat: TableStat, now_utc: datetime) -> float | None:
    """Age in days of a table's oldest row, read in its column's own time base when sampled; never negative."""
    return age_days(stat.oldest_epoch, now_utc.timestamp())


class DatabaseStrategy(Strategy):
    """Keeps the backend's SQLite write-ahead log bounded, its statistics fresh and its uncleaned tables in check.

    Watches: the size of ``<database>-wal`` (signal ``wal_bytes``), the freelist ratio (``freelist_ratio``),
    the probe query latency, and every 5 minutes the row count and oldest row of the tables the backend
    never cleans (signals ``table_oldest_days:<table>``), all from read-only samples.

    Changes (safe): when the WAL has stayed over ``wal_limit_bytes`` (default 64 MiB) for N of the last
    M samples, runs ``PRAGMA wal_checkpoint(PASSIVE)`` and, when the WAL is still over the limit,
    ``PRAGMA wal_checkpoint(TRUNCATE)``. While a reader still holds the WAL (PASSIVE could not copy every
    frame) the TRUNCATE is deferred instead of left to stall the backend's writer and fail: the attempt is given
    back, no new plan is made while the WAL keeps growing, and the finding ``wal-held-by-reader`` says for how
    long. With a checkpoint (or a manual round) runs ``PRAGMA optimize`` at most
    every ``optimize_interval_seconds`` and ``PRAGMA quick_check`` (read-only) at most every
    ``quick_check_interval_seconds`` (a week). Expected effect: ``wal_bytes`` down.

    Changes (disruptive, each off until configured, and also subject to ``engine.allow_disruptive``):

    - retention pruning (``retention_enabled``): deletes rows older than ``retention_days`` (90) from the
      tables nobody cleans: ended ``viewer_sessions`` and ``playback_viewer_sessions`` rows (never an active
      one), ``playback_token_sessions`` and ``token_blacklist`` by expiry, ``playback_token_audit_logs``,
      ``login_attempts``, ``camera_source_lifecycle_events``, ``recording_maintenance_events``, and the two
      history archive tables after ``archive_retention_days`` (365). Each column is compared in the clock the
      backend writes it in (metrics/tables.py): session columns in its local time, in the zone of its
      ``system_settings`` row read at each plan; the others in UTC, as text or ISO. It deletes
      ``retention_batch_rows`` (500) rows per short write transaction, at most ``retention_max_rows_per_run``
      per round, within ``maintenance_max_seconds``, and stops when the backend's writer holds the lock. It never touches ``telegram_archive_uploads``
      (the only index of archived footage) nor the tables the backend cleans itself. Armed when a table's
      oldest row is a day past its cutoff. Expected effect: ``freelist_ratio`` up (the pages are reused).
    - ``VACUUM`` (``vacuum_enabled``): only inside ``vacuum_window`` (``HH:MM-HH:MM``, the backend's local
      time; may wrap midnight) and only when at least ``vacuum_min_freelist_ratio`` of the pages are free;
      checks free disk space first, is rolled back when it runs past ``maintenance_max_seconds``, and
      truncates the WAL afterwards. Expected effect: ``freelist_ratio`` down.

    Before every retention run and every VACUUM the database is backed up with SQLite's online backup into
    ``backup_directory`` (default ``backups/`` in the state directory; at most ``backup_keep`` files and
    ``backup_max_bytes`` in all, the oldest removed first); the history row names the backup. When there is no
    room for one, neither is planned and the finding ``database-backup-no-room`` says why. ``cctv-optimizer
    restore-backup FILE`` puts a backup back (with the backend stopped).

    A round does one thing: a checkpoint when the WAL is over its limit, else retention, else VACUUM, else
    (when asked by hand) a checkpoint and ``PRAGMA optimize``. Each is paced on its own (action families
    ``checkpoint``, ``retention`` and ``vacuum``, each with its own cooldown and budget), so a retention run
    never holds an oversized WAL back. A checkpoint truncates whenever the live WAL is over its limit when it
    runs, whatever the sample it was planned from said.

    Findings: ``database-busy``; ``database-backup-no-room``; ``database-integrity`` (quick_check found problems: critical);
    ``archive-table-missing`` (``viewer_session_history_archive`` does not
    exist, so the backend's 6-hourly archive fails and ``viewer_session_history`` grows without bound);
    ``history-archive-behind`` (history rows older than 91 days although the archive table exists);
    ``uncleaned-<table>`` (a table nobody cleans holds ``table_rows_warning`` rows or more, or rows past
    its retention).

    Options (``CCTV_OPTIMIZER_STRATEGIES__DATABASE__*``): ``wal_limit_bytes``, ``busy_timeout_ms``
    (default 1000: how long a write may wait for the backend's writer before giving up),
    ``optimize_interval_seconds``, ``settle_seconds``, ``table_rows_warning``, ``retention_enabled``,
    ``retention_days``, ``archive_retention_days``, ``retention_batch_rows``, ``retention_max_rows_per_run``,
    ``vacuum_enabled``, ``vacuum_window``, ``vacuum_min_freelist_ratio``, ``maintenance_max_seconds``.

    Risks: a checkpoint holds SQLite's checkpoint lock for at most ``busy_timeout_ms``; the backend's
    own ``busy_timeout=5000`` absorbs that. When a long reader pins the WAL the TRUNCATE cannot finish:
    the action is recorded as failed with that reason and nothing is left half-done. It never holds a
    transaction open and never changes the journal mode. Pruning deletes data for good: every committed
    batch stays deleted, the batch in flight when something fails is rolled back. VACUUM holds the write
    lock while it runs, so the backend's writes wait (and fail after its 5 s busy timeout) during a long
    one: keep it to a quiet window and keep ``maintenance_max_seconds`` below the engine's apply timeout.
    """

    name = "database"
    RUNTIME_STATE = ("_last_optimize", "_last_quick_check", "_integrity_problems", "_held", "_no_room")

    Options = DatabaseOptions

    @classmethod
    def from_config(cls, options: StrategyOptions, settings: Settings, deps: StrategyDeps) -> Built | Skipped:
        """Build from ``strategies.database`` and the shared readers."""
        s = options_as(options, DatabaseOptions)
        if settings.backend.database is None:
            return Skipped("backend.database is not configured")
        strategy = cls(
            settings.backend.database,
            s,
            exit_ratio=settings.detection.exit_ratio,
            timezone_offset_hours=settings.backend.timezone_offset_hours,
            backup_directory=settings.state_directory / "backups",
            clock=deps.monotonic,
        )
        return Built(strategy, s.mode, s.enabled)

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        database: Path,
        options: DatabaseOptions,
        *,
        exit_ratio: float,
        timezone_offset_hours: float = 7.0,
        backup_directory: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._path = database
        self._o = options
        # where retention and VACUUM back the database up first (the configured directory, else backups/ next to it)
        self._backups = options.backup_directory or backup_directory or database.parent / "backups"
        self._no_room: dict[str, Any] | None = None
        self._exit_ratio = exit_ratio
        self._offset = timezone_offset_hours
        # the backend's timezone (its system_settings row), read again at every retention plan
        self._zone = bt.resolve_zone(None, timezone_offset_hours)
        self._clock = clock
        self._wall = wall
        self._last_optimize: float | None = None
        self._last_quick_check: float | None = None
        self._integrity_problems: list[str] = []
        # set while a reader holds the WAL: (monotonic time first seen, WAL bytes last seen, frames copied/total)
        self._held: tuple[float, int, int, int] | None = None

    def _retention_days(self, rule: ret.RetentionRule) -> float:
        return float(self._o.archive_retention_days if rule.archive else self._o.retention_days)

    def _local(self, wall: float) -> datetime:
        return self._zone.now_local(datetime.fromtimestamp(wall, UTC))

    def _follow_zone(self, db: DatabaseSample) -> None:
        """Take the backend's zone as sampled: the vacuum window follows a zone changed at runtime."""
        if db.timezone is not None and db.timezone != self._zone.name:
            self._zone = bt.resolve_zone(db.timezone, self._offset)

    def in_vacuum_window(self, wall: float) -> bool:
        """Whether the wall time falls in the configured quiet window (the backend's local time)."""
        return ret.in_window(self._o.vacuum_window, self._local(wall))

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """Armed by the WAL over its limit; with retention, by old rows; with VACUUM, by free pages in the window."""
        limit = float(self._o.wal_limit_bytes)
        specs = [TriggerSpec(signal="wal_bytes", enter=limit, exit=limit * self._exit_ratio)]
        if self._o.retention_enabled:
            for rule in ret.RULES:
                days = self._retention_days(rule)
                specs.append(
                    TriggerSpec(
                        signal=TABLE_AGE_SIGNAL + rule.table,
                        enter=days + ARM_SLACK_DAYS,
                        exit=days + DISARM_SLACK_DAYS,
                    )
                )
        # outside its window VACUUM cannot run, so free pages must not keep the strategy armed all day
        if self._o.vacuum_enabled and self.in_vacuum_window(self._wall()):
            ratio = self._o.vacuum_min_freelist_ratio
            specs.append(TriggerSpec(signal="freelist_ratio", enter=ratio, exit=ratio * self._exit_ratio))
        return tuple(specs)

    # findings ----------------------------------------------------------------------------------------------------

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """A busy database, a missing or lagging history archive, tables nobody cleans that keep growing."""
        db = ctx.snapshot.database
        if db is None:
            return ()
        self._follow_zone(db)
        out: list[Finding] = []
        if db.busy:
            out.append(
                Finding(
                    id="database-busy",
                    strategy=self.name,
                    severity="warning",
                    summary="the backend database was locked when sampled",
                    evidence={"probe_seconds": round(db.probe_seconds, 4)},
                )
            )
        if self._integrity_problems:
            out.append(
                Finding(
                    id="database-integrity",
                    strategy=self.name,
                    severity="critical",
                    summary=(
                        f"PRAGMA quick_check reported {len(self._integrity_problems)} problem(s) in the backend "
                        "database: take a backup and check it with the sqlite3 shell (.recover)"
                    ),
                    evidence={"problems": list(self._integrity_problems)},
                )
            )
        if self._no_room is not None:
            out.append(
                Finding(
                    id="database-backup-no-room",
                    strategy=self.name,
                    severity="warning",
                    summary=(
                        f"retention pruning or VACUUM is due but waits: {self._no_room['problem']}; free space in "
                        f"{self._backups} or raise strategies.database.backup_max_bytes"
                    ),
                    evidence=dict(self._no_room),
                )
            )
        if self._held is not None and db.wal_bytes >= self._o.wal_limit_bytes:
            since, wal, copied, frames = self._held
            out.append(
                Finding(
                    id="wal-held-by-reader",
                    strategy=self.name,
                    severity="warning",
                    summary=(
                        f"a long read transaction has kept the WAL from being checkpointed for "
                        f"{self._clock() - since:.0f} s (WAL {_mib(db.wal_bytes)}, limit "
                        f"{_mib(self._o.wal_limit_bytes)}): look for a report or backup holding a read open"
                    ),
                    evidence={
                        "held_seconds": round(self._clock() - since, 1),
                        "wal_bytes": db.wal_bytes,
                        "wal_bytes_last_seen": wal,
                        "frames_copied": copied,
                        "frames": frames,
                    },
                )
            )
        if db.tables:
            now = datetime.fromtimestamp(ctx.snapshot.wall_time, UTC)
            out.extend(self._archive_findings(db, now))
            out.extend(self._table_findings(db, now))
        return out

    def _archive_findings(self, db: DatabaseSample, now: datetime) -> list[Finding]:
        history = db.tables.get(HISTORY_TABLE)
        if history is None:
            return []
        age = _age_days(history, now)
        evidence: dict[str, Any] = {
            "history_rows": history.rows,
            "oldest": history.oldest,
            "oldest_days": round(age, 2) if age is not None else None,
        }
        if ARCHIVE_TABLE not in db.tables:
            return [
                Finding(
                    id="archive-table-missing",
                    strategy=self.name,
                    severity="warning",
                    summary=(
                        f"{ARCHIVE_TABLE} does not exist: the backend's 6-hourly history archive fails and "
                        f"{HISTORY_TABLE} grows without bound ({history.rows} rows); create the table "
                        "(run the backend's migrations) to let the archive work"
                    ),
                    evidence=evidence,
                )
            ]
        if age is not None and age > HISTORY_DAYS + 1:
            return [
                Finding(
                    id="history-archive-behind",
                    strategy=self.name,
                    severity="warning",
                    summary=(
                        f"{HISTORY_TABLE} still holds rows {_days(age)} old although the backend archives "
                        f"everything past {HISTORY_DAYS:.0f} days every 6 hours: its archive job is failing "
                        "or falling behind"
                    ),
                    evidence=evidence,
                )
            ]
        return []

    def _table_findings(self, db: DatabaseSample, now: datetime) -> list[Finding]:
        out: list[Finding] = []
        for rule in ret.RULES:
            stat: TableStat | None = db.tables.get(rule.table)
            if stat is None:
                continue
            days = self._retention_days(rule)
            age = _age_days(stat, now)
            too_old = age is not None and age > days + ARM_SLACK_DAYS
            too_big = stat.rows >= self._o.table_rows_warning
            if not (too_old or too_big):
                continue
            problem = []
            if too_big:
                problem.append(f"holds {stat.rows} rows")
            if too_old and age is not None:
                problem.append(f"keeps rows {_days(age)} old")
            advice = (
                "retention pruning is enabled and removes them in batches"
                if self._o.retention_enabled
                else "nothing removes them; enable retention pruning (strategies.database.retention_enabled)"
            )
            out.append(
                Finding(
                    id=f"uncleaned-{rule.table}",
                    kind="uncleaned-table",
                    strategy=self.name,
                    severity="info",
                    summary=f"{rule.table} {' and '.join(problem)}: {advice}",
                    evidence={
                        "rows": stat.rows,
                        "oldest": stat.oldest,
                        "oldest_days": round(age, 2) if age is not None else None,
                        "retention_days": days,
                        "time_base": str(rule.time_base),
                    },
                )
            )
        return out

    # planning ----------------------------------------------------------------------------------------------------

    def _quick_check_due(self) -> bool:
        last = self._last_quick_check
        return last is None or self._clock() - last >= self._o.quick_check_interval_seconds

    def _optimize_due(self) -> bool:
        return self._last_optimize is None or self._clock() - self._last_optimize >= self._o.optimize_interval_seconds

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """A checkpoint when the WAL is over its limit; else retention or VACUUM when due; else (manual) upkeep."""
        db = ctx.snapshot.database
        if db is not None:
            self._follow_zone(db)
        if db is None:
            status = ctx.snapshot.sources.get("database")
            if ctx.manual and status is not None and status.error:
                # asked by hand: say why nothing can be planned (a deferral, never a failure toward the breaker)
                raise StrategyDeferred(status.error)
            return None
        if db.wal_bytes >= self._o.wal_limit_bytes:
            held = self._held
            if held is not None and db.wal_bytes > held[1] and not ctx.manual:
                # grown since the last look: the reader has not let go, so a checkpoint cannot help yet
                self._held = (held[0], db.wal_bytes, held[2], held[3])
                return None
            return self._plan_checkpoint(db, ctx.manual)
        self._held = None  # back under the limit (the reader let go and the backend's own checkpoint caught up)
        armed_by_age = any(a.startswith(TABLE_AGE_SIGNAL) for a in ctx.armed)
        maintenance: Plan | None = None
        if self._o.retention_enabled and (ctx.manual or armed_by_age):
            maintenance = await self._plan_retention(db, ctx.snapshot.wall_time)
        if maintenance is None and self._o.vacuum_enabled and (ctx.manual or "freelist_ratio" in ctx.armed):
            maintenance = self._plan_vacuum(db, ctx.snapshot.wall_time)
        if maintenance is not None and await self._room_for_backup():
            return maintenance
        return self._plan_checkpoint(db, ctx.manual)

    async def _room_for_backup(self) -> bool:
        """Whether a backup fits before the planned retention or VACUUM; when not, the finding says why."""
        room = await asyncio.to_thread(
            backup.room_for, self._path, self._backups, keep=self._o.backup_keep, max_bytes=self._o.backup_max_bytes
        )
        self._no_room = (
            {"problem": room.problem, "needed_bytes": room.needed, "free_bytes": room.free, "limit_bytes": room.limit}
            if room.problem is not None
            else None
        )
        return room.problem is None

    def _backup(self) -> tuple[Change, str]:
        """Back the database up (blocking); the change naming it for the history row, and a note."""
        made = backup.take_backup(
            self._path,
            self._backups,
            keep=self._o.backup_keep,
            max_bytes=self._o.backup_max_bytes,
            busy_timeout_ms=self._o.busy_timeout_ms,
            wall=self._wall,
        )
        self._no_room = None
        note = f"backup {made.path} ({_mib(made.bytes)})"
        if made.removed:
            note += f", older backups removed: {', '.join(made.removed)}"
        change = Change(target="database.backup", action="backup", before="-", after=str(made.path), reversible=False)
        return change, note

    def _plan_checkpoint(self, db: DatabaseSample, manual: bool) -> Plan | None:
        """Plan a checkpoint when the WAL is over its limit, and PRAGMA optimize when due."""
        wal = db.wal_bytes
        limit = self._o.wal_limit_bytes
        changes: list[Change] = []
        steps: list[Action] = []
        expected: ExpectedEffect | None = None
        over = wal >= limit
        if over or (manual and wal > 0):
            changes.append(
                Change(
                    target="database.wal",
                    action="wal_checkpoint",
                    before=_mib(wal),
                    after=_mib(0) if over else "checkpointed",
                    reversible=False,
                )
            )
            steps.append(CheckpointWal(limit=limit, truncate=over))
            if over:
                expected = ExpectedEffect(
                    signal="wal_bytes",
                    direction=Direction.DOWN,
                    amount=float(wal - limit * self._exit_ratio),
                    settle_seconds=self._o.settle_seconds,
                )
        if self._optimize_due() and (changes or manual):
            changes.append(
                Change(target="database.statistics", action="optimize", before="stale", after="fresh", reversible=False)
            )
            steps.append(OptimizeStatistics())
        if self._quick_check_due() and (changes or manual):
            changes.append(
                Change(
                    target="database.integrity",
                    action="quick_check",
                    before="unchecked",
                    after="checked",
                    reversible=False,
                )
            )
            steps.append(QuickCheck())
        if not changes:
            return None
        reason = (
            f"WAL is {_mib(wal)}, over its limit of {_mib(limit)}"
            if over
            else f"requested: WAL is {_mib(wal)} (limit {_mib(limit)})"
        )
        return Plan(
            strategy=self.name,
            reason=reason,
            changes=tuple(changes),
            expected=expected,
            actions=tuple(steps),
            family=CHECKPOINT_FAMILY,
        )

    def _cutoffs(self, wall: float) -> dict[str, str]:
        now = datetime.fromtimestamp(wall, UTC)
        return {
            rule.table: ret.cutoff_text(rule.time_base, now, self._retention_days(rule), self._zone)
            for rule in ret.RULES
        }

    async def _plan_retention(self, db: DatabaseSample, wall: float) -> Plan | None:
        """Count, read-only, the rows past their cutoff; plan to delete up to the per-round budget."""
        # the zone an admin set now, not the one at start-up: local-time cutoffs follow it
        self._zone = await asyncio.to_thread(ret.backend_zone, self._path, self._o.busy_timeout_ms, self._offset)
        cutoffs = self._cutoffs(wall)
        counts = await asyncio.to_thread(
            ret.count_candidates,
            self._path,
            ret.RULES,
            cutoffs,
            self._o.busy_timeout_ms,
            max_seconds=PLAN_COUNT_SECONDS,
            clock=self._clock,
        )
        budget = self._o.retention_max_rows_per_run
        changes: list[Change] = []
        tables: list[str] = []
        total = 0
        for c in counts:
            if c.prunable <= 0 or budget <= 0:
                continue
            planned = min(c.prunable, budget)
            budget -= planned
            total += planned
            tables.append(c.table)
            rule = ret.RULES_BY_TABLE[c.table]
            changes.append(
                Change(
                    target=f"table:{c.table}",
                    action=PRUNE,
                    before=f"{c.rows} rows",
                    after=f"{c.rows - planned} rows (deleted: {rule.column} before {c.cutoff} {rule.time_base})",
                    reversible=False,
                    risk=Risk.DISRUPTIVE,
                )
            )
        if not changes:
            return None
        waiting = sum(c.prunable for c in counts)
        holding = sum(1 for c in counts if c.prunable > 0)
        reason = (
            f"{waiting} rows past their retention ({self._o.retention_days} days, archives "
            f"{self._o.archive_retention_days}) in {_count(holding, 'table')} nobody cleans"
        )
        if total < waiting:
            reason += f"; {total} of them this round, from {_count(len(tables), 'table')} ({', '.join(tables)})"
        expected = (
            ExpectedEffect(
                signal="freelist_ratio",
                direction=Direction.UP,
                amount=1.0 / db.page_count,
                settle_seconds=self._o.settle_seconds,
            )
            if db.page_count > 0
            else None
        )
        return Plan(
            strategy=self.name,
            reason=reason,
            changes=tuple(changes),
            expected=expected,
            actions=(PruneTables(tables=tuple(tables), cutoffs=MappingProxyType({t: cutoffs[t] for t in tables})),),
            family=RETENTION_FAMILY,
        )

    def _plan_vacuum(self, db: DatabaseSample, wall: float) -> Plan | None:
        """VACUUM inside the quiet window when enough pages are free; never outside it, even by hand."""
        ratio = db.freelist_ratio
        if not self.in_vacuum_window(wall) or ratio < self._o.vacuum_min_freelist_ratio or db.page_count <= 0:
            return None
        used = (db.page_count - db.freelist_count) * db.page_size
        return Plan(
            strategy=self.name,
            reason=(
                f"{ratio:.0%} of the database's pages are free (at least {self._o.vacuum_min_freelist_ratio:.0%}) "
                f"and it is inside the quiet window {self._o.vacuum_window}"
            ),
            changes=(
                Change(
                    target="database.file",
                    action=VACUUM,
                    before=f"{_mib(db.file_bytes)}, {db.freelist_count} free pages",
                    after=f"about {_mib(used)}, 0 free pages",
                    reversible=False,
                    risk=Risk.DISRUPTIVE,
                ),
            ),
            expected=ExpectedEffect(
                signal="freelist_ratio",
                direction=Direction.DOWN,
                amount=ratio,
                settle_seconds=self._o.settle_seconds,
            ),
            actions=(Vacuum(),),
            family=VACUUM_FAMILY,
        )

    # acting ------------------------------------------------------------------------------------------------------

    async def apply(self, plan: Plan) -> ApplyResult:
        """Re-read the live state, then checkpoint/optimize, prune in batches, or VACUUM, as planned."""
        match plan.actions:
            case (PruneTables() as action,):
                return await asyncio.to_thread(self._apply_retention, action)
            case (Vacuum(),):
                return await asyncio.to_thread(self._apply_vacuum)
        steps = [a for a in plan.actions if isinstance(a, MaintenanceStep)]
        if not steps or len(steps) != len(plan.actions):
            raise StrategyError(f"database: no such action: {', '.join(a.kind for a in plan.actions) or 'none'}")
        return await asyncio.to_thread(self._apply_blocking, steps)

    def _apply_blocking(self, steps: Sequence[MaintenanceStep]) -> ApplyResult:
        done: list[Change] = []
        notes: list[str] = []
        for step in steps:
            match step:
                case CheckpointWal():
                    self._checkpoint(step.limit, done, notes)
                case OptimizeStatistics():
                    self._optimize(done, notes)
                case QuickCheck():
                    self._quick_check(done, notes)
        return ApplyResult(changes=tuple(done), detail="; ".join(notes) or "nothing needed")

    def _checkpoint(self, limit: int, done: list[Change], notes: list[str]) -> None:
        """PASSIVE, then TRUNCATE when the live WAL is still at or over ``limit``; deferred while a reader holds it."""
        busy_ms = self._o.busy_timeout_ms
        before = sql.wal_bytes(self._path)
        if before == 0:
            notes.append("WAL already empty")
            return
        passive = sql.checkpoint(self._path, "PASSIVE", busy_ms)
        result = passive
        # the live WAL decides, not the plan: a WAL that grew past its limit since the plan's sample
        # (a request planned "WAL is 0.6 MiB" while it was 71.5 MiB) is truncated all the same
        if passive.wal_bytes_after >= limit:
            if passive.busy or passive.checkpointed_frames < passive.log_frames:
                # A TRUNCATE would wait busy_timeout_ms holding off the backend's writer, then fail.
                self._defer(passive)
            result = sql.checkpoint(self._path, "TRUNCATE", busy_ms)
            if result.busy:
                self._defer(result)
        self._held = None
        done.append(
            Change(
                target="database.wal",
                action="wal_checkpoint",
                before=_mib(before),
                after=_mib(result.wal_bytes_after),
                reversible=False,
            )
        )
        notes.append(f"checkpoint {result.mode}: WAL {_mib(before)} -> {_mib(result.wal_bytes_after)}")

    def _optimize(self, done: list[Change], notes: list[str]) -> None:
        """Refresh the planner's statistics."""
        sql.optimize(self._path, self._o.busy_timeout_ms)
        self._last_optimize = self._clock()
        done.append(
            Change(target="database.statistics", action="optimize", before="stale", after="fresh", reversible=False)
        )
        notes.append("PRAGMA optimize")

    def _quick_check(self, done: list[Change], notes: list[str]) -> None:
        """Check every page, read-only; the problems found feed the integrity finding."""
        # read-only and bounded by the busy timeout; run on a slow schedule because it reads every page
        self._integrity_problems = sql.quick_check(self._path, self._o.busy_timeout_ms)
        self._last_quick_check = self._clock()
        found = self._integrity_problems
        done.append(
            Change(
                target="database.integrity",
                action="quick_check",
                before="unchecked",
                after="ok" if not found else f"{len(found)} problem(s)",
                reversible=False,
            )
        )
        notes.append("quick_check ok" if not found else f"quick_check found {len(found)} problem(s)")

    def _defer(self, checkpoint: sql.CheckpointResult) -> NoReturn:
        """Remember that a reader holds the WAL and give the attempt back (StrategyDeferred)."""
        since = self._held[0] if self._held is not None else self._clock()
        self._held = (since, checkpoint.wal_bytes_after, checkpoint.checkpointed_frames, checkpoint.log_frames)
        raise StrategyDeferred(
            f"a reader holds the WAL: {checkpoint.mode} copied {checkpoint.checkpointed_frames}/"
            f"{checkpoint.log_frames} frames, WAL {_mib(checkpoint.wal_bytes_after)}; truncated once it lets go"
        )

    def _apply_retention(self, action: PruneTables) -> ApplyResult:
        """Prune table by table within the row and time budgets; a busy start fails, a busy middle stops."""
        o = self._o
        cutoffs = action.cutoffs
        deadline = self._clock() + o.maintenance_max_seconds
        left = o.retention_max_rows_per_run
        done: list[Change] = []
        notes: list[str] = []
        saved_note: str | None = None
        for table in action.tables:
            rule = ret.RULES_BY_TABLE.get(table)
            cutoff = cutoffs.get(table)
            if rule is None or cutoff is None or table in ret.PROTECTED_TABLES:
                notes.append(f"{table}: not a table this strategy prunes")
                continue
            if left <= 0 or self._clock() >= deadline:
                notes.append(f"{table}: left for the next round")
                continue
            try:
                live = ret.count_candidates(
                    self._path, (rule,), {table: cutoff}, o.busy_timeout_ms, max_seconds=PLAN_COUNT_SECONDS
                )
                if not live or live[0].prunable == 0:
                    notes.append(f"{table}: nothing older than {cutoff} any more")
                    continue
                if saved_note is None:
                    # a backup before the first batch: with no room for one, StrategyDeferred ends the run here
                    saved, saved_note = self._backup()
                    done.append(saved)
                    notes.append(saved_note)
                result = ret.prune_table(
                    self._path,
                    rule,
                    cutoff,
                    batch_rows=o.retention_batch_rows,
                    max_rows=left,
                    deadline=deadline,
                    busy_timeout_ms=o.busy_timeout_ms,
                    clock=self._clock,
                )
            except StrategyError as exc:
                if len(done) <= 1:  # at most the backup: nothing was deleted
                    raise StrategyError(f"{exc}" + (f" ({saved_note})" if saved_note else "")) from None
                notes.append(f"{table}: stopped: {exc}")
                break
            left -= result.deleted
            rows = live[0].rows
            done.append(
                Change(
                    target=f"table:{table}",
                    action=PRUNE,
                    before=f"{rows} rows",
                    after=f"{rows - result.deleted} rows",
                    reversible=False,
                    risk=Risk.DISRUPTIVE,
                )
            )
            note = f"{table}: deleted {result.deleted} rows in {result.batches} batches"
            if result.stopped is not None:
                note += f" (stopped: {result.stopped})"
            notes.append(note)
            if result.stopped == "database busy":
                break
        return ApplyResult(changes=tuple(done), detail="; ".join(notes) or "nothing to prune")

    def _apply_vacuum(self) -> ApplyResult:
        """Re-check the window and the freelist, then VACUUM and truncate the WAL."""
        o = self._o
        if not self.in_vacuum_window(self._wall()):
            return ApplyResult(changes=(), detail=f"outside the quiet window {o.vacuum_window} now; nothing done")
        figures = ret.file_figures(self._path, o.busy_timeout_ms)
        if figures.freelist_ratio < o.vacuum_min_freelist_ratio:
            return ApplyResult(
                changes=(), detail=f"only {figures.freelist_ratio:.0%} of the pages are free now; nothing done"
            )
        saved, saved_note = self._backup()
        try:
            result = ret.vacuum(
                self._path, busy_timeout_ms=o.busy_timeout_ms, max_seconds=o.maintenance_max_seconds, clock=self._clock
            )
        except StrategyError as exc:
            raise StrategyError(f"{exc} ({saved_note})") from None
        before, after = result.before, result.after
        detail = (
            f"{saved_note}; VACUUM: {_mib(before.file_bytes)} with {before.freelist_count} free pages -> "
            f"{_mib(after.file_bytes)} with {after.freelist_count}"
        )
        if not result.wal_truncated:
            detail += f"; WAL left at {_mib(after.wal_bytes)} (readers held it)"
        return ApplyResult(
            changes=(
                saved,
                Change(
                    target="database.file",
                    action=VACUUM,
                    before=f"{_mib(before.file_bytes)}, {before.freelist_count} free pages",
                    after=f"{_mib(after.file_bytes)}, {after.freelist_count} free pages",
                    reversible=False,
                    risk=Risk.DISRUPTIVE,
                ),
            ),
            detail=detail,
        )

    async def reconcile(self, plan: Plan) -> str:
        """Report what SQLite left after an interrupted apply (each step is atomic): the WAL, or the prune, or VACUUM."""
        if any(isinstance(a, PruneTables) for a in plan.actions):
            return (
                "retention pruning was interrupted: committed batches stay deleted, SQLite rolled back the batch "
                "in flight; the next round continues"
            )
        if any(isinstance(a, Vacuum) for a in plan.actions):
            figures = await asyncio.to_thread(ret.file_figures, self._path, self._o.busy_timeout_ms)
            return (
                f"VACUUM was interrupted: SQLite either finished or rolled it back; the file is "
                f"{_mib(figures.file_bytes)} with {figures.freelist_count} free pages"
            )
        # an interrupted checkpoint or optimize left nothing half-done: report the WAL now
        wal = await asyncio.to_thread(sql.wal_bytes, self._path)
        limit = next((a.limit for a in plan.actions if isinstance(a, CheckpointWal)), self._o.wal_limit_bytes)
        state = "over" if wal >= limit else "under"
        return f"WAL is {_mib(wal)} now, {state} its limit of {_mib(limit)}; the checkpoint will run again when needed"

    def legacy_actions(self, params: Mapping[str, object]) -> tuple[Action, ...]:
        """A plan journaled as ``{"retention": true, "tables", "cutoffs"}``, ``{"vacuum": true}`` or with the flags
        ``checkpoint`` (and ``limit``, ``truncate``), ``optimize`` and ``quick_check``."""
        if params.get("retention"):
            return (decode(PruneTables, {"tables": [], **params}),)
        if params.get("vacuum"):
            return (Vacuum(),)
        steps: list[Action] = []
        if params.get("checkpoint"):
            steps.append(decode(CheckpointWal, {"limit": self._o.wal_limit_bytes, **params}))
        if params.get("optimize"):
            steps.append(OptimizeStatistics())
        if params.get("quick_check"):
            steps.append(QuickCheck())
        return tuple(steps)
