"""The Alertmanager webhook receiver: payload validation, strategy mapping, one round per strategy, idempotency."""

from __future__ import annotations

import asyncio
import copy
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from config.settings import AlertmanagerSettings, Mode
from optimizer.alertmanager import AlertmanagerReceiver, parse_notification
from optimizer.api import ApiError
from optimizer.clock import FakeClock
from optimizer.engine import Engine
from optimizer.state import StateStore
from tests.optimizer.fakes import RecordingLog, ScriptedStrategy, SnapshotBuilder, StrategyEntry, make_engine

DEDUPE = 600.0
STARTS = "2026-11-23T10:00:00.000Z"


def alert(
    name: str = "CctvSqliteWalGrowing",
    *,
    strategy: str | None = "database",
    status: str = "firing",
    fingerprint: str | None = None,
    starts_at: str = STARTS,
    label: str = "optimize_strategy",
) -> dict[str, Any]:
    """One alert of a version 4 notification."""
    labels = {"alertname": name, "instance": "cctv-1:9877"}
    if strategy is not None:
        labels[label] = strategy
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": f"{name} fired"},
        "startsAt": starts_at,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": fingerprint or f"fp-{name}-{strategy}",
    }


def notification(*alerts: dict[str, Any], group_key: str = '{}:{alertname="X"}') -> dict[str, Any]:
    """A version 4 webhook body around the given alerts."""
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if firing else "resolved",
        "receiver": "cctv-optimizer-cctv-1",
        "groupLabels": {"alertname": "X"},
        "commonLabels": {"instance": "cctv-1:9877"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example",
        "alerts": list(alerts),
    }


class Rig:
    """An engine over scripted strategies, its store and clock, and a receiver in front of it."""

    def __init__(self, store: StateStore, clock: FakeClock, samples: SnapshotBuilder) -> None:
        self.store = store
        self.clock = clock
        self.samples = samples
        self.settings = AlertmanagerSettings(dedupe_seconds=DEDUPE)
        self.log = RecordingLog()
        self.engines: list[Engine] = []

    def build(self, entries: list[StrategyEntry], **engine: Any) -> tuple[Engine, AlertmanagerReceiver]:
        """An engine (with one snapshot, so rounds have something to read) and its receiver."""
        eng = make_engine(entries, store=self.store, clock=self.clock, cooldown_seconds=1.0, **engine)
        eng.on_snapshot(self.samples.build())
        self.engines.append(eng)
        receiver = AlertmanagerReceiver(eng, lambda: self.settings, monotonic=self.clock.monotonic, log=self.log)
        return eng, receiver

    def triggers(self, strategy: str | None = None) -> list[str]:
        """The trigger of every decision row, oldest first."""
        return [r.trigger for r in self.store.decisions(limit=1000, strategy=strategy)]


@pytest.fixture
async def rig(store: StateStore, clock: FakeClock) -> AsyncIterator[Rig]:
    """A rig whose engines are stopped at the end of the test."""
    r = Rig(store, clock, SnapshotBuilder(clock))
    yield r
    for eng in r.engines:
        await eng.stop(1.0)


# mapping and rounds ------------------------------------------------------------------------------------------------


async def test_a_firing_alert_runs_one_round_of_the_strategy_its_label_names(rig: Rig) -> None:
    """optimize_strategy="database" plans the database strategy only, with the trigger alertmanager:<alertname>."""
    db, cpu = ScriptedStrategy("database"), ScriptedStrategy("cpu")
    _, receiver = rig.build([db, cpu])
    answer = await receiver(notification(alert("CctvSqliteWalGrowing")))
    assert [r["strategy"] for r in answer["rounds"]] == ["database"]
    assert answer["rounds"][0]["trigger"] == "alertmanager:CctvSqliteWalGrowing"
    assert answer["rounds"][0]["alerts"] == ["CctvSqliteWalGrowing"]
    assert answer["deduplicated"] is False
    assert (answer["firing"], answer["resolved"]) == (1, 0)
    assert len(db.plan_calls) == 1 and db.plan_calls[0].manual is True
    assert cpu.plan_calls == []
    [row] = rig.store.decisions(limit=10)
    assert (row.strategy, row.trigger, row.outcome) == ("database", "alertmanager:CctvSqliteWalGrowing", "applied")
    assert answer["rounds"][0]["decisions"] == [row.id]
    assert answer["rounds"][0]["runId"] == row.run_id


async def test_alerts_for_several_strategies_run_one_round_per_distinct_strategy(rig: Rig) -> None:
    """Two alerts naming database and one naming memory give exactly two rounds, one per strategy."""
    db, mem = ScriptedStrategy("database"), ScriptedStrategy("memory")
    _, receiver = rig.build([db, mem])
    answer = await receiver(
        notification(
            alert("WalB", strategy="database"),
            alert("WalA", strategy="database"),
            alert("HlsFull", strategy="memory"),
        )
    )
    assert [(r["strategy"], r["alerts"]) for r in answer["rounds"]] == [
        ("database", ["WalA", "WalB"]),
        ("memory", ["HlsFull"]),
    ]
    assert (len(db.plan_calls), len(mem.plan_calls)) == (1, 1)
    assert rig.triggers("database") == ["alertmanager:WalA"]
    assert rig.triggers("memory") == ["alertmanager:HlsFull"]
    assert len({r["runId"] for r in answer["rounds"]}) == 2


async def test_the_strategy_label_is_configurable(rig: Rig) -> None:
    """With strategy_label="tune", that label names the strategy and optimize_strategy is ignored."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([db])
    rig.settings = AlertmanagerSettings(strategy_label="tune", dedupe_seconds=DEDUPE)
    answer = await receiver(notification(alert("A", label="tune"), alert("B", strategy="database")))
    assert [r["strategy"] for r in answer["rounds"]] == ["database"]
    assert answer["rounds"][0]["alerts"] == ["A"]
    assert answer["unmapped"] == ["B"]


async def test_unknown_disabled_and_unlabelled_alerts_are_reported_not_run(rig: Rig) -> None:
    """Unknown and disabled strategies and alerts without the label are listed in the answer; nothing fails."""
    db, cache = ScriptedStrategy("database"), ScriptedStrategy("cache")
    _, receiver = rig.build([db, (cache, None, False)])
    answer = await receiver(
        notification(
            alert("Typo", strategy="databse"),
            alert("CacheSlow", strategy="cache"),
            alert("CctvBackendDown", strategy=None),
        )
    )
    assert answer["rounds"] == []
    assert answer["unknownStrategies"] == {"databse": ["Typo"]}
    assert answer["disabledStrategies"] == {"cache": ["CacheSlow"]}
    assert answer["unmapped"] == ["CctvBackendDown"]
    assert answer["deduplicated"] is False
    assert (db.plan_calls, cache.plan_calls) == ([], [])
    assert rig.store.decisions(limit=10) == []
    [event] = rig.log.events("alertmanager_notification")
    assert event.fields["unknown_strategies"] == ["databse"]


async def test_resolved_alerts_start_nothing(rig: Rig) -> None:
    """A resolved notification runs no round and is not reported as deduplicated."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([db])
    answer = await receiver(notification(alert(status="resolved")))
    assert (answer["status"], answer["firing"], answer["resolved"]) == ("resolved", 0, 1)
    assert answer["rounds"] == [] and answer["deduplicated"] is False
    assert db.plan_calls == []


async def test_only_the_firing_alerts_of_a_mixed_group_run(rig: Rig) -> None:
    """In a group with one firing and one resolved alert, only the firing one's strategy runs."""
    db, mem = ScriptedStrategy("database"), ScriptedStrategy("memory")
    _, receiver = rig.build([db, mem])
    answer = await receiver(notification(alert("Wal"), alert("Hls", strategy="memory", status="resolved")))
    assert [r["strategy"] for r in answer["rounds"]] == ["database"]
    assert (answer["firing"], answer["resolved"]) == (1, 1)
    assert mem.plan_calls == []


async def test_the_gates_still_apply_to_an_alert_round(rig: Rig) -> None:
    """A strategy in observe mode only records observed: an alert skips detection, never the mode gate."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([(db, Mode.OBSERVE, True)])
    await receiver(notification(alert("Wal")))
    [row] = rig.store.decisions(limit=10)
    assert (row.outcome, row.trigger) == ("observed", "alertmanager:Wal")
    assert db.applied == []


# idempotency -------------------------------------------------------------------------------------------------------


async def test_a_repeated_notification_within_the_window_is_deduplicated(rig: Rig) -> None:
    """The same group, fingerprints and startsAt again runs no second round and says deduplicated."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([db])
    body = notification(alert("Wal"))
    await receiver(copy.deepcopy(body))
    rig.clock.advance(DEDUPE - 1)
    again = await receiver(copy.deepcopy(body))
    assert again["deduplicated"] is True
    assert again["rounds"] == [] and again["repeated"] == ["Wal"]
    assert len(db.plan_calls) == 1
    assert rig.triggers() == ["alertmanager:Wal"]


async def test_after_the_window_the_same_alert_runs_again(rig: Rig) -> None:
    """Once dedupe_seconds have passed, a repeat of the alert is handled as new."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([db])
    body = notification(alert("Wal"))
    await receiver(copy.deepcopy(body))
    rig.clock.advance(DEDUPE + 1)
    again = await receiver(copy.deepcopy(body))
    assert again["deduplicated"] is False
    assert len(db.plan_calls) == 2
    assert rig.triggers() == ["alertmanager:Wal", "alertmanager:Wal"]


async def test_a_new_alert_in_a_known_group_runs_only_for_what_is_new(rig: Rig) -> None:
    """A repeat that adds an alert runs the new alert's strategy only; one that re-fires (new startsAt) runs again."""
    db, mem = ScriptedStrategy("database"), ScriptedStrategy("memory")
    _, receiver = rig.build([db, mem])
    await receiver(notification(alert("Wal")))
    grown = await receiver(notification(alert("Wal"), alert("Hls", strategy="memory")))
    assert [r["strategy"] for r in grown["rounds"]] == ["memory"]
    assert grown["repeated"] == ["Wal"] and grown["deduplicated"] is False
    refired = await receiver(notification(alert("Wal", starts_at="2026-11-23T11:00:00.000Z")))
    assert [r["strategy"] for r in refired["rounds"]] == ["database"]
    assert (len(db.plan_calls), len(mem.plan_calls)) == (2, 1)


async def test_the_same_alert_in_another_group_is_not_a_repeat(rig: Rig) -> None:
    """Deduplication is per alert group: another groupKey with the same alert runs a round."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([db])
    await receiver(notification(alert("Wal"), group_key="a"))
    other = await receiver(notification(alert("Wal"), group_key="b"))
    assert other["deduplicated"] is False
    assert len(db.plan_calls) == 2


async def test_a_duplicate_arriving_while_the_round_runs_starts_nothing(rig: Rig) -> None:
    """An HA peer's copy of a notification, arriving mid-round, is deduplicated: one round in all."""
    db = ScriptedStrategy("database")
    db.plan_gate = asyncio.Event()
    _, receiver = rig.build([db])
    body = notification(alert("Wal"))
    first = asyncio.create_task(receiver(copy.deepcopy(body)))
    await asyncio.wait_for(db.plan_started.wait(), timeout=10)
    second = await asyncio.wait_for(receiver(copy.deepcopy(body)), timeout=10)
    db.plan_gate.set()
    answer = await asyncio.wait_for(first, timeout=10)
    assert second["deduplicated"] is True and second["rounds"] == []
    assert answer["rounds"][0]["joined"] is False
    assert len(db.plan_calls) == 1


async def test_an_alert_arriving_during_another_round_gets_its_own_round(rig: Rig) -> None:
    """When a round for another trigger is running, the alert's strategy runs afterwards with the alert's trigger."""
    db = ScriptedStrategy("database")
    db.plan_gate = asyncio.Event()
    eng, receiver = rig.build([db])
    other = asyncio.create_task(eng.request_round(trigger="manual", manual=True))
    await asyncio.wait_for(db.plan_started.wait(), timeout=10)
    pending = asyncio.create_task(receiver(notification(alert("Wal"))))
    await asyncio.sleep(0)  # let the receiver join the running round before the gate opens
    db.plan_gate.set()
    await asyncio.wait_for(other, timeout=10)
    answer = await asyncio.wait_for(pending, timeout=10)
    assert answer["rounds"][0]["trigger"] == "alertmanager:Wal"
    assert answer["rounds"][0]["joined"] is False
    assert rig.triggers() == ["manual", "alertmanager:Wal"]


async def test_a_notification_that_could_not_run_is_not_remembered(rig: Rig) -> None:
    """While the engine stops the answer is 503, and Alertmanager's retry is not mistaken for a repeat."""
    db = ScriptedStrategy("database")
    eng, receiver = rig.build([db])
    await eng.stop(1.0)
    body = notification(alert("Wal"))
    for _ in range(2):
        with pytest.raises(ApiError) as caught:
            await receiver(copy.deepcopy(body))
        assert (caught.value.status, caught.value.code) == (503, "stopping")
    assert db.plan_calls == []


# validation --------------------------------------------------------------------------------------------------------


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.pop(key)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body.__setitem__(key, value)


def _alert_set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["alerts"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_set("version", "3"), "version"),
        (_without("version"), "version"),
        (_without("groupKey"), "groupKey"),
        (_set("groupKey", ""), "groupKey"),
        (_set("status", "pending"), "status"),
        (_set("alerts", []), "alerts"),
        (_set("alerts", {"a": 1}), "alerts"),
        (_set("alerts", [7]), "alerts[0]"),
        (_set("commonLabels", {"a": 1}), "commonLabels"),
        (_alert_set("status", "active"), "alerts[0].status"),
        (_alert_set("labels", None), "alerts[0].labels"),
        (_alert_set("labels", {"alertname": ["x"]}), "alerts[0].labels"),
        (_alert_set("fingerprint", 12), "alerts[0].fingerprint"),
        (_alert_set("startsAt", ""), "alerts[0].startsAt"),
    ],
)
async def test_a_malformed_notification_is_a_400_naming_the_field(
    rig: Rig, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    """A body that is not a version 4 notification is refused with 400, and no round runs."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([db])
    body = notification(alert("Wal"))
    change(body)
    with pytest.raises(ApiError) as caught:
        await receiver(body)
    assert (caught.value.status, caught.value.code) == (400, "invalid_alertmanager_payload")
    assert caught.value.message.startswith(f"{field}:")
    assert db.plan_calls == []


def test_too_many_alerts_are_refused() -> None:
    """A notification over the alert limit is a 400, so one request cannot hold the daemon for long."""
    body = notification(*[alert(f"A{i}", fingerprint=f"f{i}") for i in range(1001)])
    with pytest.raises(ApiError) as caught:
        parse_notification(body)
    assert caught.value.status == 400 and caught.value.message.startswith("alerts:")


def test_a_real_alertmanager_body_parses() -> None:
    """The fields Alertmanager 0.25 sends, extra keys included, parse into the notification."""
    note = parse_notification(notification(alert("Wal"), alert("Hls", strategy="memory", status="resolved")))
    assert note.version == "4" and note.receiver == "cctv-optimizer-cctv-1"
    assert [a.name for a in note.alerts] == ["Wal", "Hls"]
    assert note.alerts[0].labels["optimize_strategy"] == "database"
    assert len(note.key(note.alerts[0])) == 16
    assert note.key(note.alerts[0]) != note.key(note.alerts[1])


def _deep_bytes(value: object) -> int:
    """What an object takes with what it holds (tuples, strings, bytes, floats): no shared-object discount."""
    size = sys.getsizeof(value)
    if isinstance(value, tuple):
        size += sum(_deep_bytes(v) for v in value)
    return size


async def test_dedupe_memory_is_bounded_in_bytes_whatever_the_group_keys(store: StateStore, clock: FakeClock) -> None:
    """Thousands of 60 KB group keys: the dedupe table holds fixed-size digests, its bytes stay under a bound.

    The bound comes from the structure: a hash table with room for twice the entries (a dict with steady
    insertions and deletions keeps up to that many slots), plus every 16-byte key and float time.
    """
    remembered = 256
    eng = make_engine([ScriptedStrategy("database")], store=store, clock=clock)
    log = RecordingLog()
    receiver = AlertmanagerReceiver(
        eng,
        lambda: AlertmanagerSettings(dedupe_seconds=DEDUPE),
        monotonic=clock.monotonic,
        max_remembered=remembered,
        log=log,
    )
    big = "k" * 60_000
    for i in range(2000):
        await receiver(notification(alert("Wal", strategy=None, fingerprint=f"fp{i}"), group_key=f"{i}:{big}"))
    handled = receiver._handled
    assert len(handled) == remembered
    table = sys.getsizeof({i.to_bytes(16, "big"): 0.0 for i in range(2 * remembered)})
    per_entry = sys.getsizeof(b"\0" * 16) + sys.getsizeof(0.0)
    stored = sys.getsizeof(handled) + sum(_deep_bytes(k) + _deep_bytes(v) for k, v in handled.items())
    assert stored <= table + remembered * per_entry
    assert receiver.stored_bytes() == stored
    logged = [r.fields["group_key"] for r in log.records if r.event == "alertmanager_notification"]
    assert len(logged) == 2000
    assert max(len(k) for k in logged) <= 200
    assert logged[-1].startswith("1999:kkk") and logged[-1].endswith("(60005 characters)")
    await eng.stop(1.0)


async def test_a_digest_still_tells_groups_fingerprints_and_starts_apart(rig: Rig) -> None:
    """Keys that would run together when joined (a|bc vs ab|c) are different alerts."""
    db = ScriptedStrategy("database")
    _, receiver = rig.build([db])
    await receiver(notification(alert("Wal", fingerprint="bc"), group_key="a"))
    other = await receiver(notification(alert("Wal", fingerprint="c"), group_key="ab"))
    assert other["deduplicated"] is False
