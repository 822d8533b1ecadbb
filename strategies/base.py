"""The strategy contract: detect on windows, plan read-only, apply after re-reading, revert saved values.

Dry-run, timeouts, cooldowns, budgets, verification and the breaker belong to the engine; a strategy
only says what it watches (its triggers), what it would change (a Plan), and how to do and undo it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from config.settings import Mode, Settings, StrategyOptions
from metrics.backend import BackendClient
from metrics.hls import HlsReader
from metrics.process import ProcessReader
from metrics.snapshot import Snapshot
from metrics.window import Windows

JsonValue = Any
_EMPTY: Mapping[str, JsonValue] = MappingProxyType({})
# the pacing family of a plan that names none: every such action of a strategy shares one cooldown and budget
DEFAULT_FAMILY = "default"


class StrategyError(Exception):
    """An expected failure of a strategy (busy database, backend 500, permission denied): a warning, no traceback."""


class StrategyDeferred(Exception):
    """apply() found the target not ready (a reader holds the WAL) and changed nothing; try again next round.

    Not a failure: no score, no breaker count, and the attempt is given back (no cooldown, no budget spent).
    """


class Risk(StrEnum):
    """Safe changes run by default; disruptive ones only when enabled by configuration."""

    SAFE = "safe"
    DISRUPTIVE = "disruptive"


class Direction(StrEnum):
    """Which way the expected metric should move."""

    DOWN = "down"
    UP = "up"


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One change a plan makes: its target, the value before and after, whether it can be undone, its risk."""

    target: str
    action: str
    before: str
    after: str
    reversible: bool
    risk: Risk = Risk.SAFE

    def as_dict(self) -> dict[str, JsonValue]:
        """A JSON-ready form for history rows and the API."""
        return {
            "target": self.target,
            "action": self.action,
            "before": self.before,
            "after": self.after,
            "reversible": self.reversible,
            "risk": str(self.risk),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpectedEffect:
    """What should happen after the change: this signal moves this way by this much within this time."""

    signal: str
    direction: Direction
    amount: float
    settle_seconds: float

    def as_dict(self) -> dict[str, JsonValue]:
        """A JSON-ready form."""
        return {
            "signal": self.signal,
            "direction": str(self.direction),
            "amount": self.amount,
            "settle_seconds": self.settle_seconds,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What a strategy would do and why; ``params`` carries what apply() needs (JSON-ready, for the journal)."""

    strategy: str
    reason: str
    changes: tuple[Change, ...]
    expected: ExpectedEffect | None = None
    params: Mapping[str, JsonValue] = field(default_factory=lambda: _EMPTY)
    # the action family this plan is paced in: each family of a strategy has its own cooldown and budget
    # (a WAL checkpoint does not wait for a retention run); plans that name none share DEFAULT_FAMILY
    family: str | None = None
    # the plan only undoes this strategy's own earlier change (gives recorders their priority back): it is never
    # held by a cooldown or the budget, since waiting would only keep the earlier change in effect longer
    restores: bool = False

    @property
    def pacing_family(self) -> str:
        """The family whose cooldown and budget this plan uses."""
        return self.family or DEFAULT_FAMILY

    @property
    def reversible(self) -> bool:
        """Whether every change can be undone."""
        return all(c.reversible for c in self.changes)

    @property
    def disruptive(self) -> bool:
        """Whether any change is disruptive."""
        return any(c.risk is Risk.DISRUPTIVE for c in self.changes)

    @property
    def action(self) -> str:
        """The main action's name (the metric label)."""
        return self.changes[0].action if self.changes else "none"

    def as_dict(self) -> dict[str, JsonValue]:
        """A JSON-ready form, for the journal and the history."""
        return {
            "strategy": self.strategy,
            "reason": self.reason,
            "changes": [c.as_dict() for c in self.changes],
            "expected": self.expected.as_dict() if self.expected else None,
            "params": dict(self.params),
            "family": self.family,
            "restores": self.restores,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JsonValue]) -> Plan:
        """Rebuild a plan from its journal record."""
        expected = data.get("expected")
        return cls(
            strategy=str(data["strategy"]),
            reason=str(data["reason"]),
            changes=tuple(change_from_dict(c) for c in data.get("changes", [])),
            expected=ExpectedEffect(
                signal=str(expected["signal"]),
                direction=Direction(expected["direction"]),
                amount=float(expected["amount"]),
                settle_seconds=float(expected["settle_seconds"]),
            )
            if isinstance(expected, Mapping)
            else None,
            params=MappingProxyType(dict(data.get("params") or {})),
            family=str(data["family"]) if data.get("family") else None,
            restores=bool(data.get("restores", False)),
        )


def change_from_dict(data: Mapping[str, JsonValue]) -> Change:
    """Rebuild a change from its JSON form."""
    return Change(
        target=str(data["target"]),
        action=str(data["action"]),
        before=str(data["before"]),
        after=str(data["after"]),
        reversible=bool(data["reversible"]),
        risk=Risk(data.get("risk", "safe")),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    """What apply() did: the changes as actually made, a short detail, and what revert() needs."""

    changes: tuple[Change, ...]
    detail: str
    revert_data: Mapping[str, JsonValue] = field(default_factory=lambda: _EMPTY)

    @property
    def changed(self) -> bool:
        """Whether the re-read found anything to change: some change whose value after differs from before."""
        return any(c.before != c.after for c in self.changes)

    def as_dict(self) -> dict[str, JsonValue]:
        """A JSON-ready form, for the journal."""
        return {
            "changes": [c.as_dict() for c in self.changes],
            "detail": self.detail,
            "revert_data": dict(self.revert_data),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, JsonValue]) -> ApplyResult:
        """Rebuild from the journal."""
        return cls(
            changes=tuple(change_from_dict(c) for c in data.get("changes", [])),
            detail=str(data.get("detail", "")),
            revert_data=MappingProxyType(dict(data.get("revert_data") or {})),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerSpec:
    """A signal the strategy watches, with its enter and (lower) exit thresholds."""

    signal: str
    enter: float
    exit: float
    above: bool = True
    # an event (a cache found emptied) is true for one sample: it arms at once instead of needing N of M
    samples_required: int | None = None
    # "restore": a calm line that arms the strategy to undo its own changes, not a sign of trouble
    role: str = "arm"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """Advice with evidence and no change; the id is stable while the condition lasts."""

    id: str
    strategy: str
    severity: str
    summary: str
    evidence: Mapping[str, JsonValue] = field(default_factory=lambda: _EMPTY)
    # what sort of finding this is, for grouping many of one sort (one per table): the id when unset
    kind: str | None = None

    def as_dict(self) -> dict[str, JsonValue]:
        """A JSON-ready form."""
        return {
            "id": self.id,
            "kind": self.kind or self.id,
            "strategy": self.strategy,
            "severity": self.severity,
            "summary": self.summary,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorOverride:
    """A value the strategy manages that someone else changed: the strategy let it go, the engine backs off."""

    target: str
    expected: str
    found: str

    def as_dict(self) -> dict[str, JsonValue]:
        """A JSON-ready form."""
        return {"target": self.target, "expected": self.expected, "found": self.found}


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyContext:
    """What a strategy sees when it plans: the latest snapshot, the windows, and why it is asked."""

    snapshot: Snapshot
    windows: Windows
    armed: tuple[str, ...]
    manual: bool
    now: float
    baselines: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyDeps:
    """The daemon's shared readers and clients, handed to every strategy's ``from_config``."""

    backend: BackendClient | None
    hls: HlsReader | None
    process: ProcessReader | None
    windows: Windows
    monotonic: Callable[[], float]
    trim_history: Callable[[], None] | None = None
    state_directory: Path | None = None


@dataclass(frozen=True, slots=True)
class Built:
    """A strategy built from the configuration: the instance, its configured mode, and whether it runs."""

    strategy: Strategy
    mode: Mode | None
    enabled: bool


@dataclass(frozen=True, slots=True)
class Skipped:
    """A strategy that cannot run with this configuration, and why (logged once at start)."""

    reason: str


class Strategy(ABC):
    """A pluggable optimisation. Subclasses set ``name`` and document themselves in their docstring.

    A subclass also declares ``Options`` (a frozen dataclass deriving from StrategyOptions: the settings
    ``strategies.<name>.*``) and ``from_config``, which builds it from those options, the whole settings and the
    shared readers. Built-in strategies and plugins are built the same way.
    """

    name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions

    @classmethod
    def from_config(cls, options: StrategyOptions, settings: Settings, deps: StrategyDeps) -> Built | Skipped:
        """Build the strategy from its options (an instance of ``cls.Options``), or say why it cannot run.

        Every strategy the registry builds, built-in or plugin, defines it; a strategy made by hand (in a test)
        need not.
        """
        raise NotImplementedError(f"{cls.__name__} does not define from_config")

    @abstractmethod
    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """The signals that arm this strategy, with thresholds (which may depend on learned baselines)."""

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """Advice from the current state; none by default."""
        return ()

    @abstractmethod
    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """Read the current state and return a Plan, or None when there is nothing to do. Never writes."""

    @abstractmethod
    async def apply(self, plan: Plan) -> ApplyResult:
        """Re-read the live values, then make the changes; raise StrategyError on an expected failure."""

    async def revert(self, result: ApplyResult) -> ApplyResult:
        """Restore the values saved by apply(); irreversible changes cannot be reverted."""
        raise StrategyError(f"{self.name}: these changes cannot be reverted")

    @property
    def sample_interval_factor(self) -> float:
        """How much this strategy asks the daemon to stretch its own sample interval now (1.0: not at all)."""
        return 1.0

    def take_overrides(self) -> Sequence[OperatorOverride]:
        """Operator changes to managed values noticed since the last call (then forgotten); none by default."""
        return ()

    async def reconcile(self, plan: Plan) -> str:
        """Settle a plan whose apply was interrupted (the daemon died); say what was found and done."""
        return "nothing to reconcile: the changes are idempotent or irreversible"

    # the attributes an instance learns while it runs (not its options): a reload rebuilds the strategy with the new
    # options and hands these over, so that rate limits and held state survive it
    RUNTIME_STATE: ClassVar[tuple[str, ...]] = ()

    def carry_over(self, previous: Strategy) -> None:
        """Take over what ``previous`` (the instance before a reload) learned while running."""
        if type(previous) is type(self):
            for attr in self.RUNTIME_STATE:
                setattr(self, attr, getattr(previous, attr))

    def describe(self) -> str:
        """The user documentation: the class docstring."""
        return (self.__class__.__doc__ or "").strip()

    async def close(self) -> None:
        """Release anything held (HTTP sessions, connections)."""
        return None


OptionsT = TypeVar("OptionsT", bound=StrategyOptions)


def options_as(options: StrategyOptions, kind: type[OptionsT]) -> OptionsT:
    """``options`` as the strategy's own Options class (the registry passes nothing else; a mix-up is a bug)."""
    if not isinstance(options, kind):
        raise TypeError(f"options must be {kind.__name__}, not {type(options).__name__}")
    return options
