"""The Alertmanager webhook receiver: firing alerts become decision rounds of the strategy their label names.

Alertmanager posts a version 4 notification per alert group. Each firing alert names a strategy in a label
(``optimize_strategy`` by default, ``alertmanager.strategy_label``); one round runs per distinct strategy,
with the trigger ``alertmanager:<alertname>``. Such a round skips detection but never the gates (mode,
cooldown, budget, breaker). Resolved alerts start nothing.

Alertmanager repeats itself (``repeat_interval``, retries after errors, one notification per peer in an HA
cluster), so an alert of a group (group key, fingerprint, ``startsAt``) that was handled less than
``alertmanager.dedupe_seconds`` ago starts no new round; when nothing in a notification is new, the answer
says ``deduplicated``. What is remembered per alert is a 16-byte digest of its key, never the key itself (group
keys are as long as the sender makes them), so the memory it takes is bounded in bytes; logs show a group key
shortened to ``LOGGED_KEY_LIMIT`` characters.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import structlog

from config.settings import AlertmanagerSettings
from optimizer.api import ApiError
from optimizer.engine import Engine, EngineStopping, RoundResult

WEBHOOK_VERSION = "4"
MAX_ALERTS = 1000
NAME_LIMIT = 128
# A round joined while it ran for another trigger did not run our strategy on demand: ask again, a bounded
# number of times (the engine runs one round at a time, so each wait ends with that round).
JOIN_ATTEMPTS = 3
UNNAMED = "unnamed"

LOGGED_KEY_LIMIT = 160
DIGEST_BYTES = 16

AlertKey = bytes


class AlertStatus(StrEnum):
    """Whether an alert (or the group as a whole) is firing or resolved."""

    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert of a notification."""

    status: AlertStatus
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str

    @property
    def name(self) -> str:
        """The alert's ``alertname`` label, shortened to a bounded length."""
        return (self.labels.get("alertname") or UNNAMED)[:NAME_LIMIT]


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """A version 4 webhook notification of one alert group."""

    version: str
    group_key: str
    status: AlertStatus
    receiver: str
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    alerts: tuple[Alert, ...]

    def key(self, alert: Alert) -> AlertKey:
        """What identifies one firing episode of an alert in this group: a fixed-size digest of it."""
        digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
        for part in (self.group_key, alert.fingerprint, alert.starts_at):
            encoded = part.encode("utf-8", "surrogatepass")
            # length-prefixed, so no two different triples hash the same input
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
        return digest.digest()


def _bad(where: str, message: str) -> ApiError:
    return ApiError(400, "invalid_alertmanager_payload", f"{where}: {message}")


def _string(data: Mapping[str, Any], key: str, where: str, *, required: bool = True, empty: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise _bad(f"{where}{key}", "must be a string" if key in data else "is required")
    if not empty and not value:
        raise _bad(f"{where}{key}", "must not be empty")
    return value


def _labels(data: Mapping[str, Any], key: str, where: str, *, required: bool) -> Mapping[str, str]:
    value = data.get(key)
    if value is None and not required:
        return MappingProxyType({})
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _bad(f"{where}{key}", "must be an object of strings" if key in data else "is required")
    return MappingProxyType(dict(value))


def _status(data: Mapping[str, Any], where: str) -> AlertStatus:
    raw = data.get("status")
    if isinstance(raw, str) and raw in (AlertStatus.FIRING, AlertStatus.RESOLVED):
        return AlertStatus(raw)
    raise _bad(f"{where}status", "must be 'firing' or 'resolved'")


def _alert(data: Any, index: int) -> Alert:
    where = f"alerts[{index}]."
    if not isinstance(data, dict):
        raise _bad(f"alerts[{index}]", "must be an object")
    return Alert(
        status=_status(data, where),
        labels=_labels(data, "labels", where, required=True),
        annotations=_labels(data, "annotations", where, required=False),
        starts_at=_string(data, "startsAt", where, empty=False),
        ends_at=_string(data, "endsAt", where, required=False),
        fingerprint=_string(data, "fingerprint", where, empty=False),
    )


def parse_notification(payload: Mapping[str, Any]) -> Notification:
    """Validate a webhook body; raise ApiError 400 naming the first field that is wrong."""
    version = payload.get("version")
    if version != WEBHOOK_VERSION:
        raise _bad("version", f"must be {WEBHOOK_VERSION!r} (Alertmanager webhook version 4), got {version!r:.40}")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise _bad("alerts", "must be a non-empty list")
    if len(alerts) > MAX_ALERTS:
        raise _bad("alerts", f"at most {MAX_ALERTS} alerts per notification")
    return Notification(
        version=version,
        group_key=_string(payload, "groupKey", "", empty=False),
        status=_status(payload, ""),
        receiver=_string(payload, "receiver", "", required=False),
        group_labels=_labels(payload, "groupLabels", "", required=False),
        common_labels=_labels(payload, "commonLabels", "", required=False),
        alerts=tuple(_alert(a, i) for i, a in enumerate(alerts)),
    )


def shorten(text: str, limit: int = LOGGED_KEY_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _names(alerts: Sequence[Alert]) -> list[str]:
    return sorted({a.name for a in alerts})


class AlertmanagerReceiver:
    """Runs one decision round per strategy named by the firing alerts of a notification, once per alert."""

    def __init__(
        self,
        engine: Engine,
        settings: Callable[[], AlertmanagerSettings],
        *,
        monotonic: Callable[[], float],
        max_remembered: int = 4096,
        log: Any = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._monotonic = monotonic
        self._max_remembered = max_remembered
        self._log = log if log is not None else structlog.get_logger("alertmanager")
        # insertion-ordered, so the oldest entries are the first ones
        self._handled: dict[AlertKey, float] = {}

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Handle one webhook body; the answer says what ran and what was not run and why."""
        note = parse_notification(payload)
        settings = self._settings()
        label = settings.strategy_label
        self._forget_old(settings.dedupe_seconds)
        firing = [a for a in note.alerts if a.status is AlertStatus.FIRING]
        fresh = [a for a in firing if note.key(a) not in self._handled]
        repeated = [a for a in firing if note.key(a) in self._handled]
        by_strategy: dict[str, list[Alert]] = {}
        unknown: dict[str, list[Alert]] = {}
        disabled: dict[str, list[Alert]] = {}
        unmapped: list[Alert] = []
        for alert in fresh:
            name = alert.labels.get(label, "")
            if not name:
                unmapped.append(alert)
            elif name not in self._engine.strategy_names():
                unknown.setdefault(name[:NAME_LIMIT], []).append(alert)
            elif not self._engine.view(name).enabled:
                disabled.setdefault(name, []).append(alert)
            else:
                by_strategy.setdefault(name, []).append(alert)
        # Remembered before any round runs, so a duplicate arriving meanwhile (an HA peer) starts nothing.
        self._remember([note.key(a) for a in fresh])
        rounds: list[dict[str, Any]] = []
        pending = sorted(by_strategy)
        try:
            while pending:
                strategy = pending[0]
                alerts = by_strategy[strategy]
                trigger = f"alertmanager:{_names(alerts)[0]}"
                result = await self._run(trigger, strategy)
                pending.pop(0)
                rounds.append(
                    {
                        "strategy": strategy,
                        "trigger": trigger,
                        "alerts": _names(alerts),
                        "runId": result.run_id,
                        "joined": result.joined,
                        "decisions": list(result.decision_ids),
                    }
                )
        except BaseException:
            # Alertmanager retries a failed notification: what did not run must not look handled then.
            for strategy in pending:
                for alert in by_strategy[strategy]:
                    self._handled.pop(note.key(alert), None)
            raise
        answer = {
            "receiver": note.receiver,
            "groupKey": note.group_key,
            "status": str(note.status),
            "firing": len(firing),
            "resolved": len(note.alerts) - len(firing),
            "deduplicated": bool(firing) and not fresh,
            "rounds": rounds,
            "repeated": _names(repeated),
            "unknownStrategies": {name: _names(a) for name, a in sorted(unknown.items())},
            "disabledStrategies": {name: _names(a) for name, a in sorted(disabled.items())},
            "unmapped": _names(unmapped),
        }
        self._log.info(
            "alertmanager_notification",
            group_key=shorten(note.group_key),
            status=str(note.status),
            firing=len(firing),
            resolved=answer["resolved"],
            deduplicated=answer["deduplicated"],
            strategies=[r["strategy"] for r in rounds],
            run_ids=[r["runId"] for r in rounds],
            unknown_strategies=sorted(unknown) or None,
            disabled_strategies=sorted(disabled) or None,
            unmapped=answer["unmapped"] or None,
        )
        return answer

    async def _run(self, trigger: str, strategy: str) -> RoundResult:
        """One on-demand round of ``strategy``; 503 when the daemon is stopping."""
        attempt = 1
        while True:
            try:
                result = await self._engine.request_round(trigger=trigger, strategy=strategy, manual=True)
            except EngineStopping:
                raise ApiError(503, "stopping", "the daemon is stopping") from None
            if not result.joined or result.trigger == trigger or attempt >= JOIN_ATTEMPTS:
                return result
            attempt += 1

    def stored_bytes(self) -> int:
        """The bytes the dedupe memory takes: the table and every key and time in it."""
        return sys.getsizeof(self._handled) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self._handled.items())

    def _remember(self, keys: Sequence[AlertKey]) -> None:
        now = self._monotonic()
        for key in keys:
            self._handled[key] = now
        while len(self._handled) > self._max_remembered:
            del self._handled[next(iter(self._handled))]

    def _forget_old(self, window: float) -> None:
        now = self._monotonic()
        for key, at in list(self._handled.items()):
            if now - at < window:
                break
            del self._handled[key]
