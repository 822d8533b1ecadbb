"""The pacing rules on their own (optimizer/pacing.py): plain state, the fake clock, no engine, no store."""

from __future__ import annotations

import copy
import math

import pytest

from config.settings import EngineSettings
from optimizer.clock import FakeClock
from optimizer.pacing import Paced, Pacer

SETTINGS = EngineSettings(
    cooldown_seconds=100.0, cooldown_max_seconds=800.0, budget_actions=2, budget_window_seconds=1000.0
)


@pytest.fixture
def clock() -> FakeClock:
    """The fake clock the pacer reads."""
    return FakeClock()


@pytest.fixture
def pacer(clock: FakeClock) -> Pacer:
    """A pacer: 100 s cooldown (800 s at most), two attempts per 1000 s, the breaker at three failures."""
    return Pacer(SETTINGS, clock)


def test_an_attempt_starts_its_familys_cooldown_only(pacer: Pacer, clock: FakeClock) -> None:
    """After an attempt at "a", "a" waits 100 s; "b" (never used) may act; the strategy as a whole waits too."""
    paced = Paced(base_cooldown=100.0)
    pacer.attempt(paced, "a")
    clock.advance(30.0)
    assert pacer.cooldown_left(paced, "a") == pytest.approx(70.0)
    assert pacer.cooldown_left(paced, "b") == 0.0
    assert pacer.cooldown_left(paced) == pytest.approx(70.0)
    assert pacer.hold(paced, "b") is None and paced.held_until is None
    held = pacer.hold(paced, "a")
    assert held is not None and held.gate == "cooldown" and held.why == "cooldown: 70 s left"
    assert paced.held_until == pytest.approx(clock.monotonic() + 70.0)
    assert not pacer.can_act(paced)
    clock.advance(70.0)
    assert pacer.can_act(paced) and pacer.hold(paced, "a") is None


def test_the_budget_is_a_rolling_window(pacer: Pacer, clock: FakeClock) -> None:
    """Two attempts spend the budget; it is free again when the oldest leaves the 1000 s window."""
    paced = Paced(base_cooldown=0.0)
    pacer.attempt(paced, "a")
    clock.advance(200.0)
    pacer.attempt(paced, "a")
    assert pacer.budget_left(paced, "a") == 0 and pacer.budget_left(paced, "b") == 2
    held = pacer.hold(paced, "a")
    assert held is not None and held.gate == "budget"
    assert paced.held_until == pytest.approx(clock.monotonic() + 800.0)
    clock.advance(801.0)
    assert pacer.budget_left(paced, "a") == 1


def test_reading_the_budget_changes_nothing(pacer: Pacer, clock: FakeClock) -> None:
    """budget_left, cooldown_left and the view are reads: attempts that left the window stay until the next write.

    Before the split, budget_left dropped old attempts as it counted, so a GET /strategies changed the state.
    """
    paced = Paced(base_cooldown=100.0)
    pacer.attempt(paced, "a")
    clock.advance(2000.0)
    before = copy.deepcopy(paced)
    assert pacer.budget_left(paced) == 2
    assert pacer.budget_left(paced, "a") == 2
    assert pacer.cooldown_left(paced) == 0.0
    assert pacer.view(paced) == {"a": {"cooldownSeconds": 100.0, "cooldownLeftSeconds": 0.0, "budgetLeft": 2}}
    assert paced == before
    pacer.attempt(paced, "a")  # a write drops what left the window
    assert paced.pacing["a"].attempts == [clock.monotonic()]


def test_an_unneeded_apply_is_given_back_once_in_a_row(pacer: Pacer) -> None:
    """Changing nothing gives the attempt back the first time; the second in a row counts."""
    paced = Paced(base_cooldown=100.0)
    pacer.attempt(paced, "a").settle(changed=False)
    assert pacer.cooldown_left(paced, "a") == 0.0 and pacer.budget_left(paced, "a") == 2
    pacer.attempt(paced, "a").settle(changed=False)
    assert pacer.cooldown_left(paced, "a") == 100.0 and pacer.budget_left(paced, "a") == 1
    pacer.attempt(paced, "a").settle(changed=True)
    assert not paced.pacing["a"].unneeded


def test_verdicts_move_the_familys_cooldown_within_bounds(pacer: Pacer) -> None:
    """No effect doubles it (at most the maximum), an improvement halves it (not below the base)."""
    paced = Paced(base_cooldown=100.0)
    assert [pacer.no_effect(paced, "a") for _ in range(4)] == [200.0, 400.0, 800.0, 800.0]
    assert paced.cooldown == 800.0 and paced.pace("b").cooldown == 100.0
    for expected in (400.0, 200.0, 100.0, 100.0):
        pacer.improved(paced, "a")
        assert paced.pacing["a"].cooldown == expected


def test_the_breaker_opens_on_the_third_failure_in_a_row(pacer: Pacer) -> None:
    """A success in between breaks the run; the third in a row opens it once; a reset closes it."""
    paced = Paced(base_cooldown=100.0)
    assert pacer.failed(paced, "x") is None
    pacer.succeeded(paced)
    assert [pacer.failed(paced, why) for why in ("x", "y")] == [None, None]
    assert pacer.failed(paced, "timeout") == "3 consecutive failures or regressions (last: timeout)"
    assert pacer.failed(paced, "again") is None and paced.breaker_open
    assert not pacer.can_act(paced)
    pacer.attempt(paced, "a")
    assert pacer.reset(paced) is True
    assert (paced.breaker_open, paced.consecutive_failures, paced.pacing) == (False, 0, {})


def test_the_score_keeps_the_last_ten(pacer: Pacer) -> None:
    """The score is the mean of the last ten verdicts."""
    paced = Paced(base_cooldown=100.0)
    for value in [-1] * 5 + [1] * 10:
        pacer.scored(paced, value)
    assert paced.scores == [1] * 10 and paced.score == 1.0


def test_backing_off_doubles_every_family_from_now(pacer: Pacer, clock: FakeClock) -> None:
    """An operator's change: every family (and the one that noticed it) waits twice its cooldown from now."""
    paced = Paced(base_cooldown=100.0)
    pacer.attempt(paced, "a")
    clock.advance(500.0)
    pacer.back_off(paced, "b")
    assert pacer.cooldown_left(paced, "a") == 200.0 and pacer.cooldown_left(paced, "b") == 200.0


def test_a_reload_moves_cooldowns_into_the_new_bounds(pacer: Pacer) -> None:
    """A new base cooldown raises shorter cooldowns to it; the new maximum caps longer ones."""
    paced = Paced(base_cooldown=100.0)
    paced.pace("a").cooldown, paced.pace("b").cooldown = 100.0, 800.0
    pacer.reconfigure(EngineSettings(cooldown_seconds=150.0, cooldown_max_seconds=600.0), paced)
    assert paced.base_cooldown == 150.0
    assert (paced.pacing["a"].cooldown, paced.pacing["b"].cooldown) == (150.0, 600.0)


def test_the_state_survives_a_restart_and_a_clock_set_back(clock: FakeClock) -> None:
    """Attempts are kept as wall time; one in the future (the wall clock went back) is read as now."""
    paced = Paced(base_cooldown=100.0, scores=[1, 0], consecutive_failures=1)
    paced.pace("a").last_attempt = clock.monotonic() - 10.0
    paced.pace("a").attempts = [clock.monotonic() - 10.0]
    saved = paced.pacing_state(clock.monotonic(), clock.wall())
    restored = Paced(base_cooldown=100.0)
    restored.load_pacing(saved, clock.monotonic() + 5000.0, clock.wall() - 20.0)
    assert restored.scores == [1, 0] and restored.consecutive_failures == 1
    assert restored.pacing["a"].last_attempt == clock.monotonic() + 5000.0


def test_a_disruptive_hold_lasts_until_released() -> None:
    """Held for ever until a round lets it act or plans something else."""
    paced = Paced(base_cooldown=100.0)
    Pacer.hold_for_ever(paced)
    assert paced.held_until == math.inf
    Pacer.release(paced)
    assert paced.held_until is None
