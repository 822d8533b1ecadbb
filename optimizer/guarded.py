"""Calls into a strategy, each within its timeout, with every way it can fail turned into a value.

A strategy may be a plugin: its bugs must not cost the other strategies their turn or stop the daemon. Every
call the engine makes into one goes through here; each failure is logged here once, and the engine decides
what it counts for (a history row, the breaker).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optimizer.decisions import Outcome
from optimizer.executors import watch_queueing
from strategies.base import (
    ApplyResult,
    OperatorOverride,
    Plan,
    Strategy,
    StrategyContext,
    StrategyDeferred,
    StrategyError,
    TriggerSpec,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    """A plan() that returned no plan: the row to write, and the failure the breaker counts (None: not one)."""

    outcome: Outcome
    reason: str
    error: str | None = None
    counted: str | None = None
    # a deferral writes a row only when a person asked for the round
    manual_only: bool = False


async def plan(strategy: Strategy, ctx: StrategyContext, limit: float, log: Any) -> Plan | Failed | None:
    """Ask for a plan within ``limit`` seconds; a Failed for a timeout, a deferral, an expected failure or a crash."""
    try:
        with watch_queueing() as queueing:
            return await asyncio.wait_for(strategy.plan(ctx), limit)
    except TimeoutError:
        queued = queueing.queued()
        if queued >= limit / 2:
            # Most of the time went waiting for a worker thread: the daemon's own queueing, not the strategy's.
            log.warning("plan_queued", strategy=strategy.name, queued_seconds=round(queued, 3))
            return Failed(
                outcome=Outcome.DEFERRED,
                reason=f"plan waited {queued:.1f} s for a worker thread; not counted as a failure",
                error=f"plan exceeded {limit} s while queued",
            )
        error = f"plan exceeded {limit} s"
        return Failed(outcome=Outcome.TIMEOUT, reason="plan timed out", error=error, counted="plan timed out")
    except StrategyDeferred as exc:
        # What the strategy reads is not usable now (the backend database is damaged, missing or closed): it
        # plans nothing. Not a failure, so no breaker count; a manual request gets a row saying why.
        log.info("plan_deferred", strategy=strategy.name, reason=str(exc))
        return Failed(outcome=Outcome.DEFERRED, reason=str(exc), manual_only=True)
    except StrategyError as exc:
        log.warning("plan_failed", strategy=strategy.name, error=str(exc))
        return Failed(outcome=Outcome.FAILED, reason="plan failed", error=str(exc))
    except Exception as exc:
        log.exception("plan_crashed", strategy=strategy.name)
        return Failed(
            outcome=Outcome.ERROR,
            reason="plan crashed",
            error=f"{exc.__class__.__name__}: {exc}",
            counted=f"plan crashed: {exc.__class__.__name__}",
        )


async def apply(
    strategy: Strategy, plan: Plan, limit: float, log: Any
) -> tuple[Outcome, str | None, ApplyResult | None]:
    """Run the apply within ``limit`` seconds: (outcome, error, result); a result only when it returned."""
    try:
        return Outcome.APPLIED, None, await asyncio.wait_for(strategy.apply(plan), limit)
    except TimeoutError:
        return Outcome.TIMEOUT, f"apply exceeded {limit} s", None
    except StrategyDeferred as exc:
        return Outcome.DEFERRED, str(exc), None
    except StrategyError as exc:
        log.warning("apply_failed", strategy=strategy.name, error=str(exc))
        return Outcome.FAILED, str(exc), None
    except Exception as exc:
        log.exception("apply_crashed", strategy=strategy.name)
        return Outcome.ERROR, f"{exc.__class__.__name__}: {exc}", None


async def revert(
    strategy: Strategy, applied: ApplyResult, limit: float, log: Any, *, reason: str
) -> ApplyResult | None:
    """Undo an applied result within ``limit`` seconds; the revert's own result, or None when it failed (logged)."""
    try:
        return await asyncio.wait_for(strategy.revert(applied), limit)
    except (StrategyError, TimeoutError) as exc:
        log.warning("revert_failed", strategy=strategy.name, reason=reason, error=str(exc) or "timeout")
    except Exception:
        log.exception("revert_crashed", strategy=strategy.name, reason=reason)
    return None


def triggers(strategy: Strategy, baselines: Mapping[str, float], log: Any = None) -> Sequence[TriggerSpec] | Exception:
    """The strategy's triggers, or what it raised (logged when a log is given)."""
    try:
        return strategy.triggers(baselines)
    except Exception as exc:
        if log is not None:
            log.exception("triggers_crashed", strategy=strategy.name)
        return exc


def overrides(strategy: Strategy, log: Any) -> list[OperatorOverride]:
    """The operator changes the strategy noticed since it was last asked; a crash counts as none."""
    try:
        return list(strategy.take_overrides())
    except Exception:
        log.exception("take_overrides_crashed", strategy=strategy.name)
        return []


def factor(strategy: Strategy) -> float:
    """The stretch of the sample interval the strategy asks for (1.0: none; a crashing hook asks none)."""
    try:
        return float(strategy.sample_interval_factor)
    except Exception:
        return 1.0


async def close(strategy: Strategy, log: Any) -> None:
    """Close the strategy (what it holds: sessions, files); a failure is logged, never raised."""
    try:
        await strategy.close()
    except Exception as exc:
        log.warning("strategy_close_failed", strategy=strategy.name, error=f"{exc.__class__.__name__}: {exc}")
