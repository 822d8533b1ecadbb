"""The cpu strategy: while the host is hot, the recorders yield the CPU and the disks to the backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from config import units
from config.settings import CpuOptions, DetectionSettings, Settings, StrategyOptions
from metrics.recorders import RecorderProcess, RecorderReader, RecorderScan
from metrics.window import Windows
from strategies.actions.priority import (
    IOPRIO_CLASS_BE,
    IOPRIO_CLASS_IDLE,
    Priority,
    ProcessGone,
    Renicer,
    SavedPriority,
    io_lower_than,
    ioprio_value,
)
from strategies.base import (
    Action,
    ApplyResult,
    Built,
    Change,
    Direction,
    ExpectedEffect,
    Finding,
    OperatorOverride,
    Plan,
    Skipped,
    Strategy,
    StrategyContext,
    StrategyDeps,
    StrategyError,
    TriggerSpec,
    decode,
    options_as,
)

STATE_VERSION = 1
EXPECTED_RESPONSE_GAIN = 0.5
# below this a response-time change is noise, not an effect of the priorities
MIN_RESPONSE_EFFECT_SECONDS = 0.05


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderRef:
    """A recorder process as a plan names it: its pid, with its start time so a reused pid is not mistaken for it."""

    pid: int
    start_ticks: int
    camera_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LowerRecorders(Action):
    """Lower these recorders' CPU and IO priority, and stretch the daemon's sample interval by ``factor``."""

    kind = "cpu.lower"
    recorders: tuple[RecorderRef, ...]
    factor: float = 1.0
    # the signals that armed it, for the journal
    firing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreRecorders(Action):
    """Give these held recorders their saved priority back (and the sample interval its normal length)."""

    kind = "cpu.restore"
    recorders: tuple[RecorderRef, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UndoLowering(Action):
    """What reverting a LowerRecorders needs: the recorders it lowered and the interval factor before it."""

    kind = "cpu.undo_lowering"
    recorders: tuple[RecorderRef, ...]
    factor_before: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeldRecorder:
    """A recorder whose priority the strategy lowered: what it had before, and what it was given."""

    pid: int
    start_ticks: int
    camera_id: int | None
    saved: SavedPriority
    applied: Priority

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the state file."""
        return {
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "camera_id": self.camera_id,
            "saved": self.saved.as_dict(),
            "applied": self.applied.as_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldRecorder:
        """Rebuild from the state file."""
        camera = data.get("camera_id")
        return cls(
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            camera_id=int(camera) if camera is not None else None,
            saved=SavedPriority.from_dict(data["saved"]),
            applied=Priority.from_dict(data["applied"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Override:
    """A managed recorder an operator changed behind the strategy's back."""

    pid: int
    expected: str
    found: str


def _label(pid: int, camera: int | None) -> str:
    return f"recorder.camera{camera}.pid{pid}" if camera is not None else f"recorder.pid{pid}"


def _fixed(priority: Priority) -> Callable[[Priority], Priority]:
    """A target that gives every thread the same priority."""
    return lambda _current: priority


def _percent(value: float | None) -> str:
    return units.percent(value, 0) if value is not None else "-"


class CpuStrategy(Strategy):
    """Lowers the priority of the recorder ffmpeg processes while the host is hot, and restores it when calm.

    Watches: host CPU (signal ``cpu_ratio``) against ``CPU_THRESHOLD``, the one-minute load per core
    (``load_per_core``) and PSI ``cpu some avg10`` (``psi_cpu_some``); any of them past its line in N of
    the last M samples arms the strategy. The recorders are found by command line (``argv[0]`` is
    ``ffmpeg`` and ``-segment_time`` is an argument, or an output matches
    ``*/camera<ID>/pending/*.mp4.partial``), because they run detached and are often not children of the
    backend; the backend and the daemon themselves are never touched.

    Changes (safe, reversible): every thread of each recorder gets nice ``recorder_nice`` (default 10)
    and IO priority best-effort 7 (or ``idle`` with ``recorder_ionice_idle``); a recorder already at a
    lower priority is left alone, and a real-time IO class is never demoted. The values each thread had
    are saved first (also to ``cpu-priorities.json`` in the state directory, so a restart or a reload
    still restores them). While it holds lowered recorders, ``sample_interval_factor`` asks the daemon to
    stretch its own sample interval by ``hot_sample_interval_factor`` (the daemon multiplies its adapted interval
    by the largest factor any strategy asks for, up to ``sampler.max_interval_ms``). The expected effect is a
    faster backend (``response_time_seconds`` down) after ``settle_seconds``; if it got slower the engine reverts.
    With no recorder to lower (a host without recorders) it plans nothing and writes no row.

    Restoring: while it holds lowered recorders, the strategy also arms on calm (``cpu_ratio`` at or
    below its exit line), so it is asked to plan although the heat is gone; it restores the saved
    values once every watched signal has stayed under its exit line for the whole window (M samples).
    This keeps the restore a plan of its own, recorded like any other change; as it only undoes the
    strategy's own change, no cooldown or budget holds it (sampling is not left stretched on a calm host).

    Operators win: if a managed recorder's nice or IO priority is no longer what the strategy set, it
    is dropped from management without a fight (log event ``operator_override``, and the finding
    ``recorder-priority-overridden`` while that process runs). Recorders that exit are forgotten.

    Options (``CCTV_OPTIMIZER_STRATEGIES__CPU__*``): ``load_per_core``, ``psi_some_avg10``,
    ``recorder_pattern``, ``recordings_directory``, ``recorder_nice``, ``recorder_ionice_idle``,
    ``hot_sample_interval_factor``, ``settle_seconds``; the CPU line is ``CPU_THRESHOLD``.

    Risks: a reniced recorder gets less CPU only when the CPU is contended; on a machine that is truly
    saturated it may fall behind and drop frames (``idle`` IO makes that likelier, hence off by default).
    Raising the priority back, and touching processes of another user, needs ``CAP_SYS_NICE``; without
    it the action fails with "permission denied" and changes nothing.
    """

    name = "cpu"
    RUNTIME_STATE = ("_held", "_overrides", "_new_overrides", "_factor")

    Options = CpuOptions

    @classmethod
    def from_config(cls, options: StrategyOptions, settings: Settings, deps: StrategyDeps) -> Built | Skipped:
        """Build from ``strategies.cpu`` and the shared readers."""
        s = options_as(options, CpuOptions)
        process = deps.process
        strategy = cls(
            s,
            cpu_threshold=settings.cpu_threshold,
            exit_ratio=settings.detection.exit_ratio,
            detection=settings.detection,
            recorders=RecorderReader(
                marker=s.recorder_pattern,
                recordings_root=s.recordings_directory,
                exclude=lambda: (process.pid if process is not None else None,),
            ),
            state_file=deps.state_directory / "cpu-priorities.json" if deps.state_directory is not None else None,
            restore_on_close=settings.engine.revert_on_exit,
        )
        return Built(strategy, s.mode, s.enabled)

    def __init__(  # noqa: PLR0913 -- keyword-only collaborators and settings of one object
        self,
        options: CpuOptions,
        *,
        cpu_threshold: float,
        exit_ratio: float,
        detection: DetectionSettings,
        recorders: RecorderReader,
        renicer: Renicer | None = None,
        state_file: Path | None = None,
        restore_on_close: bool = False,
        log: Any = None,
    ) -> None:
        self._o = options
        self._threshold = cpu_threshold
        self._exit_ratio = exit_ratio
        self._detection = detection
        self._recorders = recorders
        self._renicer = renicer if renicer is not None else Renicer()
        self._state_file = state_file
        self._restore_on_close = restore_on_close
        self._log = log if log is not None else structlog.get_logger("strategy.cpu")
        self._held: dict[int, HeldRecorder] = {}
        self._overrides: dict[int, Override] = {}
        self._new_overrides: list[OperatorOverride] = []
        self._factor = 1.0
        self._load()

    # state -------------------------------------------------------------------------------------------------------

    @property
    def held(self) -> Mapping[int, HeldRecorder]:
        """The recorders held at a lower priority now."""
        return dict(self._held)

    @property
    def sample_interval_factor(self) -> float:
        """How much the daemon should stretch its sample interval (1.0: not at all)."""
        return self._factor

    def _load(self) -> None:
        """Adopt the recorders a previous run lowered; drop those that are gone or were never changed."""
        if self._state_file is None:
            return
        try:
            data = json.loads(self._state_file.read_text(encoding="utf-8"))
            entries = [HeldRecorder.from_dict(e) for e in data.get("recorders", [])]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            self._log.warning("cpu_state_unreadable", path=str(self._state_file), error=str(exc))
            return
        for held in entries:
            try:
                current = self._renicer.current(held.pid, held.start_ticks)
            except StrategyError:
                continue
            if current == held.saved.main and current != held.applied:
                # the daemon stopped between recording the intent and making the change
                continue
            self._held[held.pid] = held
        if len(self._held) != len(entries):
            self._persist()

    def _persist(self) -> None:
        """Write the held recorders to the state file (atomically); a failure is logged, not fatal."""
        if self._state_file is None:
            return
        data = {"version": STATE_VERSION, "recorders": [h.as_dict() for h in self._held.values()]}
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self._state_file)
        except OSError as exc:
            self._log.warning("cpu_state_not_saved", path=str(self._state_file), error=exc.strerror)

    # detection ---------------------------------------------------------------------------------------------------

    def _hot_specs(self) -> tuple[TriggerSpec, ...]:
        r = self._exit_ratio
        return (
            TriggerSpec(signal="cpu_ratio", enter=self._threshold, exit=self._threshold * r),
            TriggerSpec(signal="load_per_core", enter=self._o.load_per_core, exit=self._o.load_per_core * r),
            TriggerSpec(signal="psi_cpu_some", enter=self._o.psi_some_avg10, exit=self._o.psi_some_avg10 * r),
        )

    @property
    def _holding(self) -> bool:
        return bool(self._held) or self._factor != 1.0

    def triggers(self, baselines: Mapping[str, float]) -> Sequence[TriggerSpec]:
        """Heat arms the strategy; while it holds lowered recorders, calm arms it too (so it can restore)."""
        hot = self._hot_specs()
        if not self._holding:
            return hot
        calm_line = self._threshold * self._exit_ratio
        # listed first: the engine keys recorded thresholds by signal, and the heat line is the one to show
        return (TriggerSpec(signal="cpu_ratio", enter=calm_line, exit=calm_line, above=False, role="restore"), *hot)

    def _hot(self, windows: Windows, manual: bool) -> list[str]:
        """The signals past their enter line in N of the last M samples (the latest one when manual)."""
        n, m = self._detection.samples_required, self._detection.window_samples
        firing = []
        for spec in self._hot_specs():
            if manual:
                last = windows.last(spec.signal)
                if last is not None and last >= spec.enter:
                    firing.append(spec.signal)
            elif windows.count_above(spec.signal, spec.enter, m) >= n:
                firing.append(spec.signal)
        return firing

    def _calm(self, windows: Windows) -> bool:
        """Every watched signal under its exit line for the whole window (host CPU must have been seen)."""
        m = self._detection.window_samples
        if len(windows.values("cpu_ratio", m)) < min(m, self._detection.samples_required):
            return False
        return all(all(v < spec.exit for v in windows.values(spec.signal, m)) for spec in self._hot_specs())

    # targets -----------------------------------------------------------------------------------------------------

    def _target_io(self) -> int:
        return ioprio_value(IOPRIO_CLASS_IDLE, 0) if self._o.recorder_ionice_idle else ioprio_value(IOPRIO_CLASS_BE, 7)

    def _target(self, current: Priority) -> Priority:
        """The lowered priority for a thread that has ``current``; never higher than it was."""
        io = current.ioprio
        target_io = self._target_io()
        if io is not None and io_lower_than(io, target_io):
            io = target_io
        return Priority(nice=max(current.nice, self._o.recorder_nice), ioprio=io)

    @staticmethod
    def _scanned(recorder: RecorderProcess) -> Priority:
        io = None
        if recorder.ioprio_class is not None and recorder.ioprio_level is not None:
            io = ioprio_value(recorder.ioprio_class, recorder.ioprio_level)
        return Priority(nice=recorder.nice, ioprio=io)

    # bookkeeping -------------------------------------------------------------------------------------------------

    def _drop_override(self, held: HeldRecorder, current: Priority) -> None:
        del self._held[held.pid]
        self._overrides[held.pid] = Override(pid=held.pid, expected=held.applied.describe(), found=current.describe())
        # the engine drains these to back the whole strategy off (take_overrides)
        self._new_overrides.append(
            OperatorOverride(
                target=_label(held.pid, held.camera_id), expected=held.applied.describe(), found=current.describe()
            )
        )
        self._log.warning(
            "operator_override",
            strategy=self.name,
            pid=held.pid,
            camera_id=held.camera_id,
            expected=held.applied.describe(),
            found=current.describe(),
            note="the priority was changed by someone else; the recorder is no longer managed",
        )

    def _refresh(self, scan: RecorderScan) -> None:
        """Forget held recorders that exited; let go of those an operator changed (blocking)."""
        changed = False
        for held in list(self._held.values()):
            try:
                current = self._renicer.current(held.pid, held.start_ticks)
            except StrategyError:
                del self._held[held.pid]
                changed = True
                continue
            if current != held.applied:
                self._drop_override(held, current)
                changed = True
        live_pids = {r.pid for r in scan.recorders}
        self._overrides = {p: o for p, o in self._overrides.items() if p in live_pids}
        if changed:
            self._persist()

    # the contract ------------------------------------------------------------------------------------------------

    def take_overrides(self) -> Sequence[OperatorOverride]:
        """Recorders an operator re-prioritised since the last call: the engine backs the strategy off."""
        taken, self._new_overrides = self._new_overrides, []
        return taken

    def findings(self, ctx: StrategyContext) -> Sequence[Finding]:
        """Report recorders whose priority an operator changed while the strategy managed them."""
        if not self._overrides:
            return ()
        items = sorted(self._overrides.values(), key=lambda o: o.pid)
        return (
            Finding(
                id="recorder-priority-overridden",
                strategy=self.name,
                severity="info",
                summary=f"{len(items)} recorder(s) had their priority changed by someone else and are left alone",
                evidence={
                    "pids": [o.pid for o in items],
                    "expected": [o.expected for o in items],
                    "found": [o.found for o in items],
                },
            ),
        )

    async def plan(self, ctx: StrategyContext) -> Plan | None:
        """While hot: lower the recorders not yet lowered. While holding and calm for the window: restore."""
        scan = await asyncio.to_thread(self._recorders.scan, ctx.now)
        await asyncio.to_thread(self._refresh, scan)
        firing = self._hot(ctx.windows, ctx.manual)
        if firing:
            return self._renice_plan(ctx, scan, firing)
        if self._holding and self._calm(ctx.windows):
            return self._restore_plan(ctx)
        return None

    def _renice_plan(self, ctx: StrategyContext, scan: RecorderScan, firing: list[str]) -> Plan | None:
        changes: list[Change] = []
        targets: list[RecorderRef] = []
        busy = 0.0
        for recorder in scan.recorders:
            if recorder.pid in self._held or recorder.pid in self._overrides:
                continue  # already lowered, or an operator set it by hand: theirs to keep
            current = self._scanned(recorder)
            want = self._target(current)
            if want == current:
                continue
            busy += recorder.cpu_ratio
            targets.append(
                RecorderRef(pid=recorder.pid, start_ticks=recorder.start_ticks, camera_id=recorder.camera_id)
            )
            changes.append(
                Change(
                    target=_label(recorder.pid, recorder.camera_id),
                    action="renice",
                    before=current.describe(),
                    after=want.describe(),
                    reversible=True,
                )
            )
        if not targets:
            # no recorder to lower (none on this host, or all lowered already): nothing to plan, and no row
            return None
        factor = self._o.hot_sample_interval_factor
        if factor > self._factor:
            changes.append(
                Change(
                    target="daemon.sample_interval",
                    action="stretch_sampling",
                    before=f"x{self._factor:g}",
                    after=f"x{factor:g}",
                    reversible=True,
                )
            )
        signals = ctx.snapshot.signals()
        response = signals.get("response_time_seconds")
        expected = None
        if response is not None and response > 0:
            expected = ExpectedEffect(
                signal="response_time_seconds",
                direction=Direction.DOWN,
                amount=max(response * EXPECTED_RESPONSE_GAIN, MIN_RESPONSE_EFFECT_SECONDS),
                settle_seconds=self._o.settle_seconds,
            )
        heat = (
            f"host CPU {_percent(signals.get('cpu_ratio'))} (line {_percent(self._threshold)}), "
            f"load per core {units.number(signals.get('load_per_core', 0.0))},"
            f" PSI cpu {units.named('psi_cpu_some', signals.get('psi_cpu_some', 0.0))}"
        )
        reason = f"{heat}: {len(targets)} recorder(s) at normal priority using {busy:.0%} CPU yield to the backend"
        return Plan(
            strategy=self.name,
            reason=reason,
            changes=tuple(changes),
            expected=expected,
            actions=(LowerRecorders(recorders=tuple(targets), factor=factor, firing=tuple(firing)),),
        )

    def _restore_plan(self, ctx: StrategyContext) -> Plan:
        changes = [
            Change(
                target=_label(h.pid, h.camera_id),
                action="restore_priority",
                before=h.applied.describe(),
                after=h.saved.main.describe(),
                reversible=False,
            )
            for h in self._held.values()
        ]
        if self._factor != 1.0:
            changes.append(
                Change(
                    target="daemon.sample_interval",
                    action="restore_sampling",
                    before=f"x{self._factor:g}",
                    after="x1",
                    reversible=False,
                )
            )
        m = self._detection.window_samples
        cpu = max(ctx.windows.values("cpu_ratio", m), default=0.0)
        what = (
            f"{len(self._held)} recorder(s) get their priority back"
            if self._held
            else "the sample interval goes back to normal (the lowered recorders have exited)"
        )
        return Plan(
            strategy=self.name,
            reason=(
                f"calm for the last {m} samples (host CPU at most {cpu:.0%}, exit line "
                f"{_percent(self._threshold * self._exit_ratio)}): {what}"
            ),
            changes=tuple(changes),
            actions=(RestoreRecorders(recorders=self._held_refs()),),
            # undoing its own change: no cooldown holds it, so sampling is not left stretched on a calm host
            restores=True,
        )

    def _held_refs(self) -> tuple[RecorderRef, ...]:
        return tuple(RecorderRef(pid=h.pid, start_ticks=h.start_ticks) for h in self._held.values())

    async def apply(self, plan: Plan) -> ApplyResult:
        """Re-read each recorder's priority and lower (or restore) it; a failure puts back what was done."""
        match plan.actions:
            case (LowerRecorders() as action,):
                return await asyncio.to_thread(self._renice_blocking, action)
            case (RestoreRecorders() as action,):
                return await asyncio.to_thread(self._restore_blocking, action.recorders)
        raise StrategyError(f"cpu: no such action: {', '.join(a.kind for a in plan.actions) or 'none'}")

    def _renice_blocking(self, action: LowerRecorders) -> ApplyResult:
        done: list[Change] = []
        lowered: list[HeldRecorder] = []
        notes: list[str] = []
        for entry in action.recorders:
            pid, start, camera = entry.pid, entry.start_ticks, entry.camera_id
            if pid in self._held:
                continue
            try:
                current = self._renicer.current(pid, start)
            except ProcessGone:
                notes.append(f"pid {pid} exited")
                continue
            except StrategyError as exc:
                self._roll_back(lowered)
                raise StrategyError(self._failure(str(exc), lowered)) from None
            want = self._target(current)
            if want == current:
                notes.append(f"pid {pid} already at {current.describe()}")
                continue
            # the intent goes to the state file before the change, so a crash cannot lose the saved values
            self._held[pid] = HeldRecorder(
                pid=pid,
                start_ticks=start,
                camera_id=camera,
                saved=SavedPriority(main=current, threads={}),
                applied=want,
            )
            self._persist()
            try:
                saved = self._renicer.lower(pid, start, self._target)
            except ProcessGone:
                del self._held[pid]
                self._persist()
                notes.append(f"pid {pid} exited")
                continue
            except StrategyError as exc:
                del self._held[pid]
                self._roll_back(lowered)
                raise StrategyError(self._failure(str(exc), lowered)) from None
            held = HeldRecorder(
                pid=pid,
                start_ticks=start,
                camera_id=camera,
                saved=saved,
                applied=self._target(saved.main),
            )
            self._held[pid] = held
            self._persist()
            lowered.append(held)
            done.append(
                Change(
                    target=_label(pid, held.camera_id),
                    action="renice",
                    before=saved.main.describe(),
                    after=held.applied.describe(),
                    reversible=True,
                )
            )
        factor_before = self._factor
        factor = action.factor
        # the daemon samples less often only while it holds lowered recorders (all exited: nothing to stretch for)
        if factor > self._factor and self._held:
            self._factor = factor
            done.append(
                Change(
                    target="daemon.sample_interval",
                    action="stretch_sampling",
                    before=f"x{factor_before:g}",
                    after=f"x{factor:g}",
                    reversible=True,
                )
            )
        if lowered:
            self._log.info(
                "recorders_reniced",
                strategy=self.name,
                pids=[h.pid for h in lowered],
                priority=lowered[0].applied.describe(),
            )
        detail = f"lowered {len(lowered)} recorder(s)" + (f"; {'; '.join(notes)}" if notes else "")
        return ApplyResult(
            changes=tuple(done),
            detail=detail,
            revert=(
                UndoLowering(
                    recorders=tuple(RecorderRef(pid=h.pid, start_ticks=h.start_ticks) for h in lowered),
                    factor_before=factor_before,
                ),
            ),
        )

    @staticmethod
    def _failure(error: str, lowered: list[HeldRecorder]) -> str:
        if not lowered:
            return f"{error}; nothing was changed"
        return f"{error}; the {len(lowered)} recorder(s) lowered before it were put back"

    def _roll_back(self, lowered: list[HeldRecorder]) -> None:
        """Put back the recorders lowered in a failed apply (best effort; what cannot be put back stays held)."""
        for held in reversed(lowered):
            try:
                self._renicer.restore(held.pid, held.start_ticks, held.saved)
            except ProcessGone:
                pass
            except StrategyError as exc:
                self._log.warning("rollback_failed", strategy=self.name, pid=held.pid, error=str(exc))
                continue
            self._held.pop(held.pid, None)
        self._persist()

    def _restore_blocking(self, entries: Sequence[RecorderRef]) -> ApplyResult:
        done: list[Change] = []
        restored: list[HeldRecorder] = []
        notes: list[str] = []
        for entry in entries:
            pid, start = entry.pid, entry.start_ticks
            held = self._held.get(pid)
            if held is None or held.start_ticks != start:
                continue
            try:
                current = self._renicer.current(pid, start)
            except ProcessGone:
                del self._held[pid]
                notes.append(f"pid {pid} exited")
                continue
            except StrategyError as exc:
                self._re_lower(restored)
                raise StrategyError(self._restore_failure(str(exc), restored)) from None
            if current != held.applied:
                self._drop_override(held, current)
                notes.append(f"pid {pid} changed by someone else: left at {current.describe()}")
                continue
            try:
                self._renicer.restore(pid, start, held.saved)
            except ProcessGone:
                del self._held[pid]
                notes.append(f"pid {pid} exited")
                continue
            except StrategyError as exc:
                self._re_lower(restored)
                raise StrategyError(self._restore_failure(str(exc), restored)) from None
            del self._held[pid]
            restored.append(held)
            done.append(
                Change(
                    target=_label(pid, held.camera_id),
                    action="restore_priority",
                    before=held.applied.describe(),
                    after=held.saved.main.describe(),
                    reversible=False,
                )
            )
        self._persist()
        if self._factor != 1.0 and not self._held:
            done.append(
                Change(
                    target="daemon.sample_interval",
                    action="restore_sampling",
                    before=f"x{self._factor:g}",
                    after="x1",
                    reversible=False,
                )
            )
            self._factor = 1.0
        if restored:
            self._log.info("recorders_restored", strategy=self.name, pids=[h.pid for h in restored])
        detail = f"restored {len(restored)} recorder(s)" + (f"; {'; '.join(notes)}" if notes else "")
        return ApplyResult(changes=tuple(done), detail=detail)

    @staticmethod
    def _restore_failure(error: str, restored: list[HeldRecorder]) -> str:
        if not restored:
            return f"{error}; nothing was changed"
        return f"{error}; the {len(restored)} recorder(s) restored before it were lowered again"

    def _re_lower(self, restored: list[HeldRecorder]) -> None:
        """Undo the restores of a failed restore: the recorders go back to the lowered priority, still held."""
        for held in reversed(restored):
            with contextlib.suppress(StrategyError):
                self._renicer.lower(held.pid, held.start_ticks, _fixed(held.applied))
                self._held[held.pid] = held
        self._persist()

    async def revert(self, result: ApplyResult) -> ApplyResult:
        """Restore the recorders a renice lowered (those still held and unchanged since)."""
        undo = next((a for a in result.revert if isinstance(a, UndoLowering)), UndoLowering(recorders=()))
        restored = await asyncio.to_thread(self._restore_blocking, undo.recorders)
        factor_before = undo.factor_before
        changes = list(restored.changes)
        if self._factor != factor_before and not any(c.action == "restore_sampling" for c in changes):
            changes.append(
                Change(
                    target="daemon.sample_interval",
                    action="restore_sampling",
                    before=f"x{self._factor:g}",
                    after=f"x{factor_before:g}",
                    reversible=False,
                )
            )
            self._factor = factor_before
        return ApplyResult(changes=tuple(changes), detail=f"reverted: {restored.detail}")

    async def reconcile(self, plan: Plan) -> str:
        """After a crash mid-apply: the state file (written before each change) says what is held."""
        held = len(self._held)
        match plan.actions:
            case (LowerRecorders(),):
                return f"{held} recorder(s) held at a lower priority per the state file; they are restored when calm"
            case (RestoreRecorders(),):
                return f"{held} recorder(s) still held after an interrupted restore; the next calm round restores them"
        return "nothing to reconcile"

    async def close(self) -> None:
        """With revert on exit, give every held recorder its priority back."""
        if not self._restore_on_close or not self._held:
            return
        try:
            result = await asyncio.to_thread(self._restore_blocking, self._held_refs())
        except StrategyError as exc:
            self._log.warning("restore_on_exit_failed", strategy=self.name, error=str(exc))
            return
        self._log.info("restored_on_exit", strategy=self.name, detail=result.detail)

    def legacy_actions(self, params: Mapping[str, object]) -> tuple[Action, ...]:
        """A plan journaled as ``{"mode": "renice" | "restore", "recorders": [...], "factor": ...}``."""
        mode = params.get("mode")
        if mode == "renice":
            return (decode(LowerRecorders, params),)
        if mode == "restore":
            return (decode(RestoreRecorders, params),)
        raise ValueError(f"cpu: a journaled plan of unknown mode {mode!r}")

    def legacy_revert(self, revert_data: Mapping[str, object]) -> tuple[Action, ...]:
        """A renice journaled with ``{"recorders": [{"pid", "start_ticks"}], "factor_before": ...}``."""
        return (decode(UndoLowering, revert_data),)
