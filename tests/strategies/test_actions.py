"""Typed actions: declared by kind, journaled as JSON and rebuilt as the same type, checked field by field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest

from strategies.base import (
    Action,
    ApplyResult,
    Change,
    Plan,
    Risk,
    action_kinds,
    decode,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    """A nested plain dataclass."""

    x: int
    y: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Everything(Action):
    """An action with a field of every supported type."""

    kind = "test.everything"
    name: str
    count: int
    share: float
    flag: bool
    maybe: str | None = None
    items: tuple[str, ...] = ()
    pair: tuple[int, str] = (0, "")
    limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    risk: Risk = Risk.SAFE
    point: Point | None = None
    inner: Action | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Nothing(Action):
    """An action without fields."""

    kind = "test.nothing"


FULL = Everything(
    name="n",
    count=3,
    share=0.5,
    flag=True,
    maybe="m",
    items=("a", "b"),
    pair=(1, "x"),
    limits=MappingProxyType({"a": 1}),
    risk=Risk.DISRUPTIVE,
    point=Point(x=1, y=2.0),
    inner=Nothing(),
)


def through_json(value: object) -> object:
    """What the journal gives back: the value written as JSON text and read again."""
    return json.loads(json.dumps(value))


def record_copy(record: dict[str, object]) -> dict[str, object]:
    """A journal record as the journal gives it back."""
    copy = through_json(record)
    assert isinstance(copy, dict)
    return copy


def test_an_action_round_trips_through_json_as_the_same_type() -> None:
    """Every field type survives the journal and the rebuilt action equals the original."""
    data = through_json(FULL.to_json())
    assert isinstance(data, dict) and data["kind"] == "test.everything"
    assert Action.from_json(data) == FULL
    assert Action.from_json(through_json(Nothing().to_json())) == Nothing()


def test_defaults_fill_missing_fields_and_unknown_keys_are_ignored() -> None:
    """A field absent from the record takes its default; a key the class does not declare is left out."""
    rebuilt = Action.from_json({"kind": "test.everything", "name": "n", "count": 1, "share": 1, "flag": False, "x": 9})
    assert rebuilt == Everything(name="n", count=1, share=1.0, flag=False)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"kind": "test.unknown"}, "unknown action kind 'test.unknown'", id="unknown-kind"),
        pytest.param({"name": "n"}, "unknown action kind None", id="no-kind"),
        pytest.param(
            {"kind": "test.everything", "count": 1, "share": 1.0, "flag": True},
            "Everything: name is missing",
            id="field-missing",
        ),
        pytest.param(
            {"kind": "test.everything", "name": "n", "count": "1", "share": 1.0, "flag": True},
            "expected int",
            id="text-for-an-int",
        ),
        pytest.param(
            {"kind": "test.everything", "name": "n", "count": True, "share": 1.0, "flag": True},
            "expected int",
            id="bool-for-an-int",
        ),
        pytest.param(
            {"kind": "test.everything", "name": "n", "count": 1, "share": 1.0, "flag": True, "items": "ab"},
            "a list",
            id="text-for-a-list",
        ),
        pytest.param(
            {"kind": "test.everything", "name": "n", "count": 1, "share": 1.0, "flag": True, "risk": "odd"},
            "not a Risk",
            id="bad-enum-value",
        ),
        pytest.param("not an object", "must be an object", id="not-an-object"),
    ],
)
def test_a_malformed_record_is_a_value_error_that_says_what_is_wrong(data: object, message: str) -> None:
    """A damaged or foreign journal record raises ValueError naming the field, never a TypeError or KeyError."""
    with pytest.raises(ValueError, match=message):
        Action.from_json(data)


def test_a_kind_declared_twice_is_refused() -> None:
    """Two classes cannot share a kind: the journal could not tell them apart."""
    with pytest.raises(TypeError, match=r"test\.nothing"):

        @dataclass(frozen=True, slots=True, kw_only=True)
        class Again(Action):
            kind = "test.nothing"

    assert action_kinds()["test.nothing"] is Nothing


def test_an_action_without_a_kind_is_refused() -> None:
    """Every action names its kind."""
    with pytest.raises(TypeError, match="declares no kind"):

        class Nameless(Action):
            pass


def test_decode_builds_a_plain_dataclass() -> None:
    """decode() checks and builds any dataclass of supported fields."""
    assert decode(Point, {"x": 1, "y": 2}) == Point(x=1, y=2.0)


def test_a_plan_and_a_result_journal_their_actions_by_kind() -> None:
    """Plan and ApplyResult write their actions tagged with the kind and rebuild them as the same types."""
    change = Change(target="t", action="a", before="1", after="2", reversible=True)
    plan = Plan(strategy="s", reason="r", changes=(change,), actions=(FULL, Nothing()), family="f")
    rebuilt = Plan.from_dict(record_copy(plan.as_dict()))
    assert rebuilt == plan
    result = ApplyResult(changes=(change,), detail="d", revert=(Nothing(),))
    assert ApplyResult.from_dict(record_copy(result.as_dict())) == result


def test_a_record_of_the_older_untyped_shape_is_rebuilt_through_the_legacy_decoder() -> None:
    """A plan journaled with ``params`` (and a result with ``revert_data``) goes through the strategy's decoder."""
    old_plan: dict[str, object] = {
        "strategy": "s",
        "reason": "r",
        "changes": [],
        "expected": None,
        "params": {"n": "x"},
    }
    seen: list[Mapping[str, object]] = []

    def legacy(params: Mapping[str, object]) -> tuple[Action, ...]:
        seen.append(params)
        return (Everything(name=str(params["n"]), count=0, share=0.0, flag=False),)

    assert Plan.from_dict(old_plan, legacy=legacy).actions == (Everything(name="x", count=0, share=0.0, flag=False),)
    old_result: dict[str, object] = {"changes": [], "detail": "d", "revert_data": {"n": "y"}}
    assert ApplyResult.from_dict(old_result, legacy=legacy).revert[0] == Everything(
        name="y", count=0, share=0.0, flag=False
    )
    assert seen == [{"n": "x"}, {"n": "y"}]


def built_in_examples() -> list[Action]:
    """One action of every kind the built-in strategies declare, with every field set away from its default."""
    from strategies import cache, connection, cpu, database, memory

    ref = cpu.RecorderRef(pid=7, start_ticks=99, camera_id=3)
    return [
        cache.WarmCache(warm=("/a", "/b")),
        cache.CleanCache(
            cause=cache.Cause.JUNK,
            prefixes=("/a",),
            warm=("/a",),
            limit=5,
            clear_fallback=True,
            entries_before=9,
            recent_lookups=50,
            recent_hit_rate=0.5,
            junk_share=0.75,
            response_seconds=1.5,
            response_limit_seconds=0.5,
        ),
        connection.EndStuckSessions(count=4, oldest_heartbeat="2026-01-01 00:00:00"),
        connection.KickReaders(readers=(connection.IdleReader(kind="rtspsessions", id="x", bytes_sent=3),)),
        cpu.LowerRecorders(recorders=(ref,), factor=2.0, firing=("cpu_ratio",)),
        cpu.RestoreRecorders(recorders=(ref,)),
        cpu.UndoLowering(recorders=(ref,), factor_before=1.5),
        database.CheckpointWal(limit=1024, truncate=True),
        database.OptimizeStatistics(),
        database.QuickCheck(),
        database.PruneTables(tables=("a", "b"), cutoffs=MappingProxyType({"a": "x", "b": "y"})),
        database.Vacuum(),
        memory.PruneHls(root="/hls", stale_age=60.0, max_files=10),
        memory.TrimBackendCache(prefixes=("/a",), limit=10, warm=("/a",)),
        memory.CleanSelf(line=1024.0),
        memory.RestartBackend(pid=5, start_ticks=6, enter=7.0),
    ]


BUILT_IN_STRATEGIES = {"cache", "connection", "cpu", "database", "memory"}


@pytest.mark.parametrize("action", [pytest.param(a, id=a.kind) for a in built_in_examples()])
def test_every_built_in_action_kind_round_trips_through_the_journal(action: Action) -> None:
    """Each built-in kind is named after its strategy and comes back from JSON as an equal action."""
    assert action.kind.split(".", 1)[0] in BUILT_IN_STRATEGIES
    assert Action.from_json(through_json(action.to_json())) == action, action.kind


def test_the_round_trip_table_misses_no_built_in_kind() -> None:
    """Every kind a built-in strategy declares has an example above."""
    built_in = {k for k in action_kinds() if k.split(".", 1)[0] in BUILT_IN_STRATEGIES}
    assert {a.kind for a in built_in_examples()} == built_in
