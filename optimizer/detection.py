"""Detection: whether a strategy is armed, by hysteresis over the sample windows.

A strategy arms when N of the last M samples are past a trigger's enter line (an event trigger needs one),
and disarms only when every trigger's latest value is back past its exit line. Pure: windows in, state out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from config.settings import DetectionSettings
from metrics.window import Windows
from strategies.base import TriggerSpec


@dataclass(slots=True)
class Detector:
    """Hysteresis over the windows: arm on N of M samples past enter, disarm when all are back past exit."""

    armed: bool = False
    armed_signals: tuple[str, ...] = ()

    def update(self, specs: Sequence[TriggerSpec], windows: Windows, detection: DetectionSettings) -> bool:
        """Re-evaluate on the current windows; returns whether the strategy is armed."""
        n, m = detection.samples_required, detection.window_samples
        firing: list[str] = []
        for spec in specs:
            values = windows.values(spec.signal, m)
            hits = sum(1 for v in values if (v >= spec.enter if spec.above else v <= spec.enter))
            if hits >= min(spec.samples_required or n, m):
                firing.append(spec.signal)
        if firing:
            self.armed = True
            self.armed_signals = tuple(firing)
        elif self.armed:
            calm = True
            for spec in specs:
                last = windows.last(spec.signal)
                if last is not None and (last >= spec.exit if spec.above else last <= spec.exit):
                    calm = False
            if calm:
                self.armed = False
                self.armed_signals = ()
        return self.armed
