"""The strategy contract: detect on windows, plan read-only, apply after re-reading, revert saved values.

Dry-run, timeouts, cooldowns, budgets, verification and the breaker belong to the engine; a strategy
only says what it watches (its triggers), what it would change (a Plan), and how to do and undo it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
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


class Action:
    """One thing a plan asks its strategy to do, with what it needs to do it; declared by the strategy.

    A subclass is a frozen dataclass naming its ``kind`` (unique, "<strategy>.<what>"); declaring it registers
    the kind, so that a journaled plan is rebuilt as the same type (``to_json`` / ``Action.from_json``). Field
    types are what JSON can carry: str, int, float, bool, None, StrEnums, tuples, str-keyed mappings and
    dataclasses of those (another action included).
    """

    __slots__ = ()
    kind: ClassVar[str] = ""
    # set by @dataclass on each subclass; declared here so that the type checker knows an action is a dataclass
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[object]]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        kind = cls.__dict__.get("kind")
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"action {cls.__qualname__} declares no kind")
        known = _ACTION_KINDS.get(kind)
        # a slotted dataclass is made twice (plain, then with slots): the same class, not a second one
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"action kind {kind!r} is declared by both {known.__qualname__} and {cls.__qualname__}")
        _ACTION_KINDS[kind] = cls

    def to_json(self) -> dict[str, object]:
        """A JSON-ready form, tagged with the kind."""
        out: dict[str, object] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @staticmethod
    def from_json(data: object) -> Action:
        """Rebuild an action from its JSON form by its kind; ValueError when the kind or a field is unknown or wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an action must be an object, not {type(data).__name__}")
        kind = data.get("kind")
        cls = _ACTION_KINDS.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"unknown action kind {kind!r}")
        return decode(cls, data)


_ACTION_KINDS: dict[str, type[Action]] = {}
_T = TypeVar("_T")


def action_kinds() -> Mapping[str, type[Action]]:
    """Every declared action kind and its class."""
    return MappingProxyType(_ACTION_KINDS)


def _encode(value: object) -> object:
    if isinstance(value, Action):
        return value.to_json()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


@functools.cache
def _field_types(cls: type) -> dict[str, object]:
    """The resolved field types of a dataclass (resolving them is slow: once per class)."""
    return typing.get_type_hints(cls)


def decode(cls: type[_T], data: Mapping[str, object]) -> _T:
    """Build the dataclass ``cls`` from a JSON object, checking every field against its declared type.

    Keys the class does not declare are ignored; a field missing from ``data`` takes its default.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__qualname__} is not a dataclass")
    hints = _field_types(cls)
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{cls.__qualname__}: {f.name} is missing")
            continue
        values[f.name] = _decode(hints[f.name], data[f.name], f"{cls.__qualname__}.{f.name}")
    return cls(**values)


def _decode(tp: object, value: object, where: str) -> object:  # noqa: PLR0911, PLR0912 -- one branch per field type an action may hold
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is object or tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors) or f"{where}: no type fits {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return MappingProxyType({str(k): _decode(args[1], v, f"{where}[{k}]") for k, v in value.items()})
    if not isinstance(tp, type):
        raise ValueError(f"{where}: cannot decode the type {tp!r}")
    if tp is Action:
        return Action.from_json(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
        return decode(tp, value)
    if issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not a {tp.__name__}") from None
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")


def decode_actions(items: object) -> tuple[Action, ...]:
    """The actions of a journal record's list."""
    if not isinstance(items, list | tuple):
        raise ValueError(f"actions must be a list, not {type(items).__name__}")
    return tuple(Action.from_json(item) for item in items)


# rebuilds the actions of a record journaled before actions were typed, from its untyped ``params`` / ``revert_data``
LegacyDecoder = Callable[[Mapping[str, object]], tuple[Action, ...]]


def _actions_of(
    data: Mapping[str, object], key: str, legacy_key: str, legacy: LegacyDecoder | None
) -> tuple[Action, ...]:
    """The typed actions under ``key``; from a record of the older shape, its untyped ``legacy_key`` via ``legacy``."""
    if key in data:
        return decode_actions(data[key])
    untyped = data.get(legacy_key)
    if not untyped:
        return ()
    if not isinstance(untyped, Mapping):
        raise ValueError(f"{legacy_key} must be an object, not {type(untyped).__name__}")
    if legacy is None:
        raise ValueError(f"journaled before actions were typed ({legacy_key}), and nothing here can rebuild it")
    return legacy(untyped)


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

    def as_dict(self) -> dict[str, object]:
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

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        return {
            "signal": self.signal,
            "direction": str(self.direction),
            "amount": self.amount,
            "settle_seconds": self.settle_seconds,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What a strategy would do and why; ``actions`` are what apply() does, typed by the strategy, in order."""

    strategy: str
    reason: str
    changes: tuple[Change, ...]
    expected: ExpectedEffect | None = None
    actions: tuple[Action, ...] = ()
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

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form, for the journal and the history."""
        return {
            "strategy": self.strategy,
            "reason": self.reason,
            "changes": [c.as_dict() for c in self.changes],
            "expected": self.expected.as_dict() if self.expected else None,
            "actions": [a.to_json() for a in self.actions],
            "family": self.family,
            "restores": self.restores,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, legacy: LegacyDecoder | None = None) -> Plan:
        """Rebuild a plan from its journal record; ValueError when its actions cannot be rebuilt.

        A record journaled before actions were typed has ``params`` instead: ``legacy`` (the strategy's
        ``legacy_actions``) rebuilds its actions from them.
        """
        expected = data.get("expected")
        actions = _actions_of(data, "actions", "params", legacy)
        return cls(
            strategy=str(data["strategy"]),
            reason=str(data["reason"]),
            changes=_changes_of(data),
            expected=decode(ExpectedEffect, expected) if isinstance(expected, Mapping) else None,
            actions=actions,
            family=str(data["family"]) if data.get("family") else None,
            restores=bool(data.get("restores", False)),
        )


def change_from_dict(data: object) -> Change:
    """Rebuild a change from its JSON form; ValueError when it is not one."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a change must be an object, not {type(data).__name__}")
    return decode(Change, data)


def _changes_of(data: Mapping[str, object]) -> tuple[Change, ...]:
    items = data.get("changes") or []
    if not isinstance(items, list | tuple):
        raise ValueError(f"changes must be a list, not {type(items).__name__}")
    return tuple(change_from_dict(c) for c in items)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyResult:
    """What apply() did: the changes as actually made, a short detail, and what revert() needs (typed actions)."""

    changes: tuple[Change, ...]
    detail: str
    revert: tuple[Action, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the re-read found anything to change: some change whose value after differs from before."""
        return any(c.before != c.after for c in self.changes)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form, for the journal."""
        return {
            "changes": [c.as_dict() for c in self.changes],
            "detail": self.detail,
            "revert": [a.to_json() for a in self.revert],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, legacy: LegacyDecoder | None = None) -> ApplyResult:
        """Rebuild from the journal; a record of the older shape has ``revert_data``, which ``legacy`` rebuilds."""
        revert = _actions_of(data, "revert", "revert_data", legacy)
        return cls(
            changes=_changes_of(data),
            detail=str(data.get("detail", "")),
            revert=revert,
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

    def legacy_actions(self, params: Mapping[str, object]) -> tuple[Action, ...]:
        """The actions of a plan journaled before actions were typed, rebuilt from its untyped ``params``.

        A state database outlives upgrades: an interrupted plan of the older shape is still reconciled, a
        change of the older shape still reverted. ValueError when they cannot be rebuilt (the record is then
        closed with that reason).
        """
        raise ValueError(f"{self.name}: a plan journaled in the older untyped shape cannot be rebuilt")

    def legacy_revert(self, revert_data: Mapping[str, object]) -> tuple[Action, ...]:
        """What revert() needs, rebuilt from the untyped ``revert_data`` of a change journaled before actions were typed."""
        raise ValueError(f"{self.name}: revert data journaled in the older untyped shape cannot be rebuilt")

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
