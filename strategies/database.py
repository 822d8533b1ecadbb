"""The database strategy: keep the backend's SQLite WAL bounded and its statistics fresh."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from config.settings import DatabaseOptions
from strategies.actions import sqlite as sql
from strategies.base import (
    ApplyResult,
    Change,
    Direction,
    ExpectedEffect,
    Finding,
    Plan,
    Strategy,
    StrategyContext,
    StrategyError,
    TriggerSpec,
)


def _mib(n: float) -> str:
    return f"{n / 1048576:.1f} MiB"


class DatabaseStrategy(Strategy):
    """Keeps the backend's SQLite write-ahead log bounded and its query statistics fresh.

    Watches: the size of ``<database>-wal`` (signal ``wal_bytes``), the freelist ratio and the probe
    query latency, from read-only samples.

    Changes (safe): when the WAL has stayed over ``wal_limit_bytes`` (default 64 MiB) for N of the last
    M samples, runs ``PRAGMA wal_checkpoint(PASSIVE)`` and, when the WAL is still over the limit,
    ``PRAGMA wal_checkpoint(TRUNCATE)``; runs ``PRAGMA optimize`` every ``optimize_interval_seconds``.

    Options (``CCTV_OPTIMIZER_STRATEGIES__DATABASE__*``): ``wal_limit_bytes``, ``busy_timeout_ms``
    (default 1000: how long a checkpoint may wait for the backend's writer before giving up),
    ``optimize_interval_seconds``, ``settle_seconds``.

    Risks: a checkpoint holds SQLite's checkpoint lock for at most ``busy_timeout_ms``; the backend's
    own ``busy_timeout=5000`` absorbs that. When a long reader pins the WAL the TRUNCATE cannot finish:
    the action is recorded as failed with that reason and nothing is left half-done. It never holds a
    transaction open and never changes the journal mode.
    """

    name = "database"

    def __init__(
        self,
        database: Path,
        options: DatabaseOptions,
        *,
        exit_ratio: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = database
        self._o = options
        self._exit_ratio = exit_ratio
        self._clock = clock
        self._last_optimize: float | None = None

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """Armed by the WAL size over its limit."""
        limit = float(self._o.wal_limit_bytes)
        return (TriggerSpec(signal="wal_bytes", enter=limit, exit=limit * self._exit_ratio),)

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """Report a database the sampler found busy."""
        db = ctx.snapshot.database
        if db is not None and db.busy:
            return (
                Finding(
                    id="database-busy",
                    strategy=self.name,
                    severity="warning",
                    summary="the backend database was locked when sampled",
                    evidence={"probe_seconds": round(db.probe_seconds, 4)},
                ),
            )
        return ()

    def _optimize_due(self) -> bool:
        return self._last_optimize is None or self._clock() - self._last_optimize >= self._o.optimize_interval_seconds

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """Plan a checkpoint when the WAL is over its limit, and PRAGMA optimize when due."""
        db = ctx.snapshot.database
        if db is None:
            return None
        wal = db.wal_bytes
        limit = self._o.wal_limit_bytes
        changes: list[Change] = []
        params: dict[str, object] = {"database": str(self._path), "limit": limit}
        expected: ExpectedEffect | None = None
        over = wal >= limit
        if over or (ctx.manual and wal > 0):
            changes.append(
                Change(
                    target="database.wal",
                    action="wal_checkpoint",
                    before=_mib(wal),
                    after="0.0 MiB" if over else "checkpointed",
                    reversible=False,
                )
            )
            params["checkpoint"] = True
            params["truncate"] = over
            if over:
                expected = ExpectedEffect(
                    signal="wal_bytes",
                    direction=Direction.DOWN,
                    amount=float(wal - limit * self._exit_ratio),
                    settle_seconds=self._o.settle_seconds,
                )
        if self._optimize_due() and (changes or ctx.manual):
            changes.append(
                Change(target="database.statistics", action="optimize", before="stale", after="fresh", reversible=False)
            )
            params["optimize"] = True
        if not changes:
            return None
        reason = (
            f"WAL is {_mib(wal)}, over its limit of {_mib(limit)}"
            if over
            else f"requested: WAL is {_mib(wal)} (limit {_mib(limit)})"
        )
        return Plan(strategy=self.name, reason=reason, changes=tuple(changes), expected=expected, params=params)

    async def reconcile(self, plan: Plan) -> str:
        """An interrupted checkpoint or optimize left nothing half-done (SQLite makes each atomic): report the WAL now."""
        wal = await asyncio.to_thread(sql.wal_bytes, self._path)
        limit = int(plan.params.get("limit", self._o.wal_limit_bytes))
        state = "over" if wal >= limit else "under"
        return f"WAL is {_mib(wal)} now, {state} its limit of {_mib(limit)}; the checkpoint will run again when needed"

    async def apply(self, plan: Plan) -> ApplyResult:
        """Re-read the WAL size, checkpoint PASSIVE then TRUNCATE if still over; optimize when planned."""
        return await asyncio.to_thread(self._apply_blocking, plan)

    def _apply_blocking(self, plan: Plan) -> ApplyResult:
        done: list[Change] = []
        notes: list[str] = []
        limit = int(plan.params.get("limit", self._o.wal_limit_bytes))
        busy_ms = self._o.busy_timeout_ms
        if plan.params.get("checkpoint"):
            before = sql.wal_bytes(self._path)
            if before == 0:
                notes.append("WAL already empty")
            else:
                passive = sql.checkpoint(self._path, "PASSIVE", busy_ms)
                result = passive
                if plan.params.get("truncate") and passive.wal_bytes_after >= limit:
                    result = sql.checkpoint(self._path, "TRUNCATE", busy_ms)
                    if result.busy:
                        raise StrategyError(
                            f"database busy: TRUNCATE checkpoint could not finish (readers hold the WAL); "
                            f"WAL {_mib(result.wal_bytes_after)}, PASSIVE copied {passive.checkpointed_frames}"
                            f"/{passive.log_frames} frames"
                        )
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
        if plan.params.get("optimize"):
            sql.optimize(self._path, busy_ms)
            self._last_optimize = self._clock()
            done.append(
                Change(target="database.statistics", action="optimize", before="stale", after="fresh", reversible=False)
            )
            notes.append("PRAGMA optimize")
        return ApplyResult(changes=tuple(done), detail="; ".join(notes) or "nothing needed")
