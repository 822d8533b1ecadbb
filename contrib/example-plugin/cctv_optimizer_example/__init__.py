"""An example plugin strategy: while the host's load per core stays high, append one line saying so to a file.

It shows everything a third-party strategy needs: a Strategy subclass with a ``name``, its ``Options`` (a frozen
dataclass deriving from StrategyOptions; its fields become the settings ``strategies.loadnote.*``, checked like
every other setting), ``from_config``, the signals that arm it (``triggers``), its action (``AppendNote``: a frozen
dataclass with a unique ``kind``, which the journal stores and rebuilds), a read-only ``plan`` and an ``apply``
that dispatches on the action's type. The entry point in pyproject.toml makes it loadable by name:
``CCTV_OPTIMIZER_STRATEGIES__PLUGINS=loadnote``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from config.settings import Settings, StrategyOptions
from strategies.base import (
    Action,
    ApplyResult,
    Built,
    Change,
    Plan,
    Skipped,
    Strategy,
    StrategyContext,
    StrategyDeps,
    StrategyError,
    TriggerSpec,
    options_as,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadNoteOptions(StrategyOptions):
    """``load_per_core``: the load per core that arms the strategy; ``note_file``: the file the lines go to."""

    load_per_core: float = field(default=4.0, metadata={"min": 0.1, "max": 1000.0})
    note_file: Path | None = field(default=None, metadata={"example": "/var/lib/cctv-optimizer/load-notes.txt"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendNote(Action):
    """Append ``line`` to the note file."""

    kind = "loadnote.append"
    line: str


class LoadNoteStrategy(Strategy):
    """Notes high load: while the load per core is over its line, appends one line to ``note_file`` per round."""

    name = "loadnote"
    Options = LoadNoteOptions

    @classmethod
    def from_config(cls, options: StrategyOptions, settings: Settings, deps: StrategyDeps) -> Built | Skipped:
        """Build from ``strategies.loadnote``; without a note file there is nothing to write to."""
        opts = options_as(options, LoadNoteOptions)
        if opts.note_file is None:
            return Skipped("strategies.loadnote.note_file is not set")
        return Built(
            cls(opts.note_file, load_per_core=opts.load_per_core, exit_ratio=settings.detection.exit_ratio),
            opts.mode,
            opts.enabled,
        )

    def __init__(self, note_file: Path, *, load_per_core: float, exit_ratio: float) -> None:
        self._file = note_file
        self._line = load_per_core
        self._exit_ratio = exit_ratio

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """Armed by the load per core over its line."""
        return (TriggerSpec(signal="load_per_core", enter=self._line, exit=self._line * self._exit_ratio),)

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """One line for the file, with the load that armed it."""
        load = ctx.windows.last("load_per_core")
        if load is None or load < self._line:
            return None
        line = f"load per core {load:.2f}"
        return Plan(
            strategy=self.name,
            reason=f"load per core {load:.2f} is over its line of {self._line:.2f}",
            changes=(
                Change(
                    target=str(self._file),
                    action="note",
                    before="-",
                    after=line,
                    reversible=False,
                ),
            ),
            actions=(AppendNote(line=line),),
        )

    async def apply(self, plan: Plan) -> ApplyResult:
        """Append the planned line to the note file."""
        match plan.actions:
            case (AppendNote(line=line),):
                pass
            case _:
                raise StrategyError(f"loadnote: no such action: {', '.join(a.kind for a in plan.actions) or 'none'}")
        try:
            await asyncio.to_thread(_append, self._file, line + "\n")
        except OSError as exc:
            raise StrategyError(f"cannot write {self._file}: {exc.strerror}") from None
        return ApplyResult(changes=plan.changes, detail=f"noted in {self._file}")


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(text)
