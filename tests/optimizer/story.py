"""The closing story of the self-tuning issue, on the real engine with the fake clock and a scripted strategy.

A useless action is backed off (neutral: the cooldown doubles), a harmful one is reverted (regressed), three
regressions in a row open the circuit breaker, an operator re-arms it, and an operator's own change makes the
strategy back off. ``scripts/story.py`` prints the history as ``cctv-optimizer history`` does.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from config.settings import DetectionSettings, EngineSettings, Mode
from metrics.prometheus import DaemonMetrics
from metrics.window import Windows
from optimizer.cli import _print_decision
from optimizer.clock import FakeClock
from optimizer.engine import Engine
from optimizer.state import DecisionRecord, StateStore
from strategies.base import OperatorOverride
from tests.optimizer.fakes import RecordingLog, ScriptedStrategy, SnapshotBuilder, cpu_down, make_plan

STEP = 30.0
# 2026-01-15 12:00:00 UTC, so the printed times read naturally
START_WALL = 1_768_478_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Story:
    """What the story produced: the history rows, the log events worth showing, and the strategy's end state."""

    rows: list[DecisionRecord]
    log: RecordingLog
    cooldowns: list[float]
    breaker_open: bool


class Narrator:
    """Drives one engine through the story: samples every STEP seconds, a scheduled round after each."""

    def __init__(self, engine: Engine, strategy: ScriptedStrategy, clock: FakeClock) -> None:
        self.engine = engine
        self.strategy = strategy
        self.clock = clock
        self.samples = SnapshotBuilder(clock)

    async def tick(self, cpu: float, *, rounds: bool = True) -> None:
        """One sample (verifying whatever is due) and, unless told otherwise, one scheduled round."""
        self.clock.advance(STEP)
        self.engine.on_snapshot(self.samples.build(cpu=cpu))
        await self.engine.verify_due()
        if rounds:
            await self.engine.request_round(trigger="scheduled")

    async def until_applied(self, cpu: float) -> None:
        """Keep the signal at ``cpu`` until the strategy's next change is applied."""
        done = len(self.strategy.applied)
        while len(self.strategy.applied) == done:
            await self.tick(cpu)

    async def hold(self, cpu: float, seconds: float) -> None:
        """Keep the signal at ``cpu`` for ``seconds``."""
        for _ in range(int(seconds // STEP)):
            await self.tick(cpu)


async def run_story(state_directory: Path) -> Story:
    """Run the story against a fresh state database in ``state_directory``."""
    clock = FakeClock(start_wall=START_WALL)
    store = StateStore(state_directory, wall_clock=clock.wall)
    store.open()
    log = RecordingLog()
    strategy = ScriptedStrategy("tuner", plan=make_plan("tuner", reason="cpu is hot", expected=cpu_down(0.2, 60.0)))
    engine = Engine(
        [(strategy, None, True)],
        engine=EngineSettings(cooldown_seconds=300.0, cooldown_max_seconds=3600.0, breaker_failures=3),
        detection=DetectionSettings(samples_required=3, window_samples=5),
        global_mode=Mode.ENFORCE,
        windows=Windows(50),
        store=store,
        metrics=DaemonMetrics(CollectorRegistry()),
        clock=clock,
        log=log,
    )
    rt = engine.runtimes["tuner"]
    story = Narrator(engine, strategy, clock)
    cooldowns: list[float] = []
    try:
        # 1. useless: the host stays as hot after the change (neutral), so the cooldown doubles
        await story.until_applied(0.95)
        await story.hold(0.95, 60.0)  # judged after the 60 s settle time
        cooldowns.append(rt.cooldown)
        # 2. harmful: after the next change the host gets hotter (regressed), so it is reverted
        await story.until_applied(0.95)  # the doubled cooldown has to pass first: one skip row
        await story.hold(1.0, 60.0)
        cooldowns.append(rt.cooldown)
        # 3. two more regressions in a row open the breaker
        for _ in range(2):
            await story.until_applied(0.95)
            await story.hold(1.0, 60.0)
        await story.hold(1.0, STEP)  # the breaker blocks the next round
        # 4. an operator re-arms it (POST /strategies/tuner/reset); later the operator sets the knob by hand
        await engine.reset("tuner")
        strategy.overrides_on_plan = [OperatorOverride(target="knob", expected="2", found="5")]
        await story.hold(0.95, STEP)  # plans, notices the operator's value, backs off
        cooldowns.append(rt.cooldown)
        return Story(rows=store.decisions(limit=1000), log=log, cooldowns=cooldowns, breaker_open=rt.breaker_open)
    finally:
        await engine.stop(1.0)
        store.close()


def history_lines(rows: list[DecisionRecord]) -> list[str]:
    """The rows as ``cctv-optimizer history`` prints them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for row in rows:
            _print_decision(row.as_dict())
    return out.getvalue().splitlines()


LOGGED = ("strategy_backed_off", "change_reverted", "breaker_opened", "strategy_reset")


def log_lines(log: RecordingLog) -> list[str]:
    """The log events that tell the story, one line each."""
    lines = []
    for record in log.records:
        if record.event in LOGGED or record.event == "effect_verified":
            keys = ("verdict", "before", "after", "reverted", "cooldown_seconds", "reason", "changes")
            fields = " ".join(f"{k}={record.fields[k]}" for k in keys if k in record.fields)
            lines.append(f"{record.level:<7} {record.event} {fields}")
    return lines
