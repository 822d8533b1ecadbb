"""The read-only strategy view and the engine's commands: what other modules see and may change."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest

from config.settings import Mode
from optimizer.clock import FakeClock
from tests.optimizer.fakes import EngineFactory, ScriptedStrategy, SnapshotBuilder


class Learning(ScriptedStrategy):
    """A scripted strategy with state that a reload carries over, and a factor."""

    RUNTIME_STATE: ClassVar[tuple[str, ...]] = ("learned",)

    def __init__(self, name: str, factor: float = 1.0) -> None:
        super().__init__(name)
        self.learned = 0
        self.factor = factor
        self.closed = False

    @property
    def sample_interval_factor(self) -> float:
        """The scripted factor."""
        return self.factor

    async def close(self) -> None:
        """Note the close."""
        self.closed = True


async def test_the_view_shows_the_runtime_and_reading_it_changes_nothing(
    build: EngineFactory, samples: SnapshotBuilder, clock: FakeClock
) -> None:
    """After an apply the view shows the pacing; taking it twice, long after, leaves the runtime as it was."""
    engine = build([ScriptedStrategy("cpu")], budget_actions=2, budget_window_seconds=100.0)
    engine.on_snapshot(samples.build(cpu=0.95))
    await engine.request_round(trigger="manual", manual=True)
    view = engine.view("cpu")
    assert (view.name, view.enabled, view.mode, view.last_outcome) == ("cpu", True, Mode.ENFORCE, "applied")
    assert view.budget_left == 1 and view.cooldown_left_seconds == 300.0
    assert set(view.pacing) == {"default"} and [t.signal for t in view.triggers] == ["cpu_ratio"]
    clock.advance(1000.0)
    before = copy.deepcopy(engine.runtimes["cpu"].pacing)
    assert engine.view("cpu").budget_left == 2
    assert engine.runtimes["cpu"].pacing == before
    assert [v.name for v in engine.views()] == engine.strategy_names() == ["cpu"]
    with pytest.raises(KeyError):
        engine.view("nope")


async def test_set_mode_and_reset_are_the_ways_to_change_a_strategy(build: EngineFactory) -> None:
    """A run-time mode shows in the view; a reset closes the breaker."""
    engine = build([ScriptedStrategy("cpu")])
    await engine.set_mode("cpu", Mode.DRY_RUN)
    assert engine.view("cpu").mode is Mode.DRY_RUN and engine.view("cpu").mode_override is Mode.DRY_RUN
    engine.runtimes["cpu"].breaker_open = True
    assert engine.view("cpu").breaker_open and not engine.view("cpu").can_act
    await engine.reset("cpu")
    assert not engine.view("cpu").breaker_open and engine.view("cpu").can_act


async def test_replacing_a_strategy_keeps_what_was_learned(build: EngineFactory) -> None:
    """A reload's new instance takes over the old one's state; the engine keeps the mode override and the
    score; the view shows the new configured state and factor at once; the old instance is closed."""
    old = Learning("cpu")
    engine = build([old])
    old.learned = 7
    await engine.set_mode("cpu", Mode.DRY_RUN)
    engine.runtimes["cpu"].scores = [1, 1]
    new = Learning("cpu", factor=2.0)
    await engine.replace_strategies({"cpu": (new, Mode.OBSERVE, False)})
    assert new.learned == 7
    view = engine.view("cpu")
    # the run-time override still wins over the configured mode
    assert (view.enabled, view.mode, view.mode_override, view.score) == (False, Mode.DRY_RUN, Mode.DRY_RUN, 1.0)
    assert engine.runtimes["cpu"].config_mode is Mode.OBSERVE
    assert view.factor == 2.0 and view.watch().factor == 2.0
    assert old.closed and not new.closed
    await engine.close()
    assert new.closed
