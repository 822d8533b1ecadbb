"""A strategy's runtime: the strategy with what the engine learned about it (persisted in the state database).

Owned by the engine; other modules read it through the engine's view (optimizer/view.py) and change it only
through the engine's commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from config.settings import Mode
from optimizer import guarded
from optimizer.detection import Detector
from optimizer.pacing import Paced
from strategies.base import Strategy


@dataclass(slots=True, kw_only=True)
class StrategyRuntime(Paced):
    """A strategy with its detector, mode, pacing and last results."""

    strategy: Strategy
    config_mode: Mode | None
    enabled: bool
    detector: Detector = field(default_factory=Detector)
    mode_override: Mode | None = None
    last_outcome: str | None = None
    last_verdict: str | None = None
    # the stretch of the sample interval the strategy asked for, as the engine last read it on the event loop
    factor: float = 1.0
    # what the last history row was about (outcome, family, action, gate): a skip for another reason is a new row
    last_row: tuple[str, ...] | None = None
    # its last plan had nothing to do: while it stays armed, closer samples bring it nothing before its next turn
    planned_nothing: bool = False

    @property
    def idle_armed(self) -> bool:
        """Armed by a condition its last plan found nothing to do about (it plans again at its next turn)."""
        return self.detector.armed and self.planned_nothing

    @property
    def name(self) -> str:
        """The strategy's name."""
        return self.strategy.name

    def take_factor(self) -> None:
        """Note the stretch of the sample interval the strategy asks for. The engine calls this on the event loop
        once a turn, revert or replacement is over, never while an apply runs in a worker thread: the cadence
        reads the noted figure, so a stretch shows once its apply has been recorded."""
        self.factor = guarded.factor(self.strategy)

    def to_state(self, now_mono: float, now_wall: float) -> dict[str, Any]:
        """What survives a restart; attempt times are stored as wall time."""
        return {
            "mode_override": str(self.mode_override) if self.mode_override else None,
            **self.pacing_state(now_mono, now_wall),
            "last_outcome": self.last_outcome,
            "last_verdict": self.last_verdict,
        }

    def load_state(self, data: Mapping[str, Any], now_mono: float, now_wall: float) -> None:
        """Restore what a previous run learned; attempt times in the future (the clock went back) become now."""
        mode = data.get("mode_override")
        self.mode_override = Mode(mode) if mode else None
        self.load_pacing(data, now_mono, now_wall)
        self.last_outcome = data.get("last_outcome")
        self.last_verdict = data.get("last_verdict")
