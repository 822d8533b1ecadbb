"""The cpu strategy, its recorder finder and its priority action, on real processes of this host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil
import pytest
import structlog

from config.settings import CpuOptions, DetectionSettings
from metrics.recorders import RecorderReader, parse_stat, recorder_output
from metrics.snapshot import ProbeSample, Snapshot
from metrics.window import Windows
from optimizer.clock import FakeClock
from optimizer.state import StateStore
from strategies.actions.priority import (
    IOPRIO_CLASS_BE,
    IOPRIO_CLASS_IDLE,
    IOPRIO_CLASS_NONE,
    IOPRIO_CLASS_RT,
    Priority,
    ProcessGone,
    Renicer,
    SystemPriorityOps,
    describe_ioprio,
    io_lower_than,
    ioprio_value,
)
from strategies.base import Plan, StrategyContext, StrategyError
from strategies.cpu import CpuStrategy, LowerRecorders, RecorderRef, RestoreRecorders
from testbed.harness import wait_until
from tests.optimizer.fakes import make_engine

DETECTION = DetectionSettings(samples_required=2, window_samples=3, exit_ratio=0.9)
BE7 = ioprio_value(IOPRIO_CLASS_BE, 7)
HOLD = "import threading, time\n[threading.Thread(target=time.sleep, args=(60,), daemon=True).start() for _ in range({n})]\ntime.sleep(60)"


# ----- helpers ---------------------------------------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start processes whose argv[0] is chosen (e.g. ``ffmpeg``); all are killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, argv0: str = "ffmpeg", threads: int = 0) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [argv0, "-c", HOLD.format(n=threads), *args],
            executable=sys.executable,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(process)
        # wait until the interpreter runs the code: its argv[0] (set by exec; before it the child still reads as
        # this test's python, not a recorder) and the thread count are the sign
        wait_until(
            lambda: (
                Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[0] == argv0.encode()
                and len(os.listdir(f"/proc/{process.pid}/task")) == threads + 1
            ),
            timeout=10,
        )
        return process

    yield start
    for process in started:
        process.kill()
        process.wait(timeout=10)


def recorder_args(root: Path, camera: int) -> list[str]:
    """Arguments that read like the backend's recorder command line."""
    output = root / f"camera{camera}" / "pending" / "20260101_000000.mp4.partial"
    return ["-i", "rtsp://127.0.0.1:8554/x", "-f", "segment", "-segment_time", "600", str(output)]


def nices(pid: int) -> set[int]:
    """The nice value of every thread."""
    return {
        int(Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[16])
        for t in os.listdir(f"/proc/{pid}/task")
    }


def ioprios(pid: int) -> set[int | None]:
    """The packed IO priority of every thread."""
    ops = SystemPriorityOps()
    return {ops.get_ioprio(int(t)) for t in os.listdir(f"/proc/{pid}/task")}


def snapshot(response: float | None = 0.2) -> Snapshot:
    """A snapshot whose only part is a probe with the given response time."""
    probe = (
        ProbeSample(
            available=True,
            response_time_seconds=response,
            endpoint_seconds=MappingProxyType({}),
            requests=1,
            errors=0,
            bytes_received=0,
        )
        if response is not None
        else None
    )
    return Snapshot(
        seq=1,
        monotonic=0.0,
        wall_time=0.0,
        duration_seconds=0.0,
        host=None,
        backend=None,
        tcp=None,
        probe=probe,
        cache=None,
        database=None,
        hls=None,
        mediamtx=None,
        sessions=None,
        own=None,
        sources=MappingProxyType({}),
    )


def windows_with(cpu: list[float], load: float = 0.1, psi: float = 0.0) -> Windows:
    """Windows holding these host CPU values (and a steady load and PSI)."""
    windows = Windows(20)
    for index, value in enumerate(cpu):
        windows.push(float(index), {"cpu_ratio": value, "load_per_core": load, "psi_cpu_some": psi})
    return windows


def ctx(windows: Windows, *, manual: bool = False, now: float = 100.0, response: float | None = 0.2) -> StrategyContext:
    """A planning context."""
    return StrategyContext(snapshot=snapshot(response), windows=windows, armed=(), manual=manual, now=now)


def make_strategy(
    root: Path, *, state_file: Path | None = None, renicer: Renicer | None = None, **options: Any
) -> CpuStrategy:
    """A cpu strategy managing only recorders writing under ``root``."""
    return CpuStrategy(
        CpuOptions(settle_seconds=5.0, **options),
        cpu_threshold=0.9,
        exit_ratio=0.9,
        detection=DETECTION,
        recorders=RecorderReader(recordings_root=root),
        renicer=renicer,
        state_file=state_file,
    )


# ----- finding recorders -----------------------------------------------------------------------------------------


PENDING = "/rec/camera7/pending/20260101_000000.mp4.partial"


@pytest.mark.parametrize(
    ("argv", "root", "expected"),
    [
        pytest.param(["ffmpeg", "-i", "x", PENDING], None, (True, 7, PENDING), id="pending-output"),
        pytest.param(
            ["/usr/bin/ffmpeg", "-segment_time", "600", "/rec/out.mp4"],
            None,
            (True, None, "/rec/out.mp4"),
            id="segment-marker",
        ),
        pytest.param(
            ["ffmpeg", "-i", "x", "-frames:v", "1", "/thumbs/1.jpg"], None, (False, None, None), id="thumbnail"
        ),
        pytest.param(["node", "-segment_time", PENDING], None, (False, None, None), id="not-ffmpeg"),
        pytest.param(
            ["ffmpeg", "-segment_time", "600", PENDING], Path("/other"), (False, None, None), id="outside-the-root"
        ),
        pytest.param(["ffmpeg", PENDING], Path("/rec"), (True, 7, PENDING), id="inside-the-root"),
    ],
)
def test_recorder_is_ffmpeg_with_the_marker_or_the_pending_output(
    argv: list[str], root: Path | None, expected: tuple[bool, int | None, str | None]
) -> None:
    """argv[0] ffmpeg plus -segment_time or a camera<ID>/pending/*.mp4.partial output (under the recordings root
    when one is set); thumbnails and others are not."""
    assert recorder_output(argv, "-segment_time", root) == expected


def test_stat_is_parsed_after_the_last_parenthesis() -> None:
    """A command name with spaces and parentheses does not shift the fields."""
    fields = ["S", *["0"] * 10, "7", "5", "0", "0", "20", "3", "1", "0", "4242", *["0"] * 30]
    stat = parse_stat("123 (ff (mpeg) x) " + " ".join(fields))
    assert (stat.cpu_ticks, stat.nice, stat.start_ticks) == (12, 3, 4242)


def test_scan_finds_detached_recorders_and_skips_the_backend(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Real processes: recorders under the root are found with camera, nice and IO class; excluded PIDs never are."""
    root = tmp_path / "rec"
    first = spawn(*recorder_args(root, 3), threads=2)
    backend_like = spawn(*recorder_args(root, 4))
    spawn("-frames:v", "1", str(tmp_path / "thumb.jpg"))
    spawn(*recorder_args(root, 5), argv0="node")
    os.setpriority(os.PRIO_PROCESS, first.pid, 4)
    reader = RecorderReader(recordings_root=root, exclude=lambda: (backend_like.pid, None))
    scan = reader.scan(1.0)
    assert [r.pid for r in scan.recorders] == [first.pid]
    found = scan.recorders[0]
    assert (found.camera_id, found.nice, found.threads) == (3, 4, 3)
    assert found.output is not None and found.output.endswith("camera3/pending/20260101_000000.mp4.partial")
    assert (found.ioprio_class, found.ioprio_level) == (IOPRIO_CLASS_NONE, 0)
    assert found.start_ticks == Renicer().start_ticks(first.pid)
    assert scan.other_ffmpeg >= 1
    assert reader.last_scan is scan


def test_scan_reads_a_fixture_proc_tree(tmp_path: Path) -> None:
    """A /proc fixture: the recorder is found, its CPU share comes from two scans, IO priority is unknown."""
    proc = tmp_path / "proc"
    (proc / "4242" / "task" / "4242").mkdir(parents=True)
    (proc / "uptime").write_text("1000.00 500.00\n")
    (proc / "4242" / "cmdline").write_bytes(
        b"\0".join([b"ffmpeg", b"-segment_time", b"600", b"/r/camera2/pending/a.mp4.partial"])
    )
    fields = ["S", *["0"] * 10, "{u}", "0", "0", "0", "20", "0", "1", "0", "50000", *["0"] * 30]

    def stat(utime: int) -> None:
        (proc / "4242" / "stat").write_text("4242 (ffmpeg) " + " ".join(fields).replace("{u}", str(utime)))

    stat(100)
    reader = RecorderReader(proc_root=proc)
    ticks = os.sysconf("SC_CLK_TCK")
    first = reader.scan(10.0).recorders[0]
    assert (first.pid, first.camera_id, first.ioprio_class) == (4242, 2, None)
    # first sight: the average since start (100 ticks over 1000 s of uptime minus 50000 ticks of start)
    assert first.cpu_ratio == pytest.approx(100 / (1000 * ticks - 50000))
    stat(100 + ticks)
    assert reader.scan(12.0).recorders[0].cpu_ratio == pytest.approx(0.5)


# ----- the priority action ---------------------------------------------------------------------------------------


NONE = ioprio_value(IOPRIO_CLASS_NONE, 0)
IDLE = ioprio_value(IOPRIO_CLASS_IDLE, 0)


@pytest.mark.parametrize(
    ("current", "target", "lower"),
    [
        pytest.param(NONE, BE7, True, id="none-to-be7"),
        pytest.param(ioprio_value(IOPRIO_CLASS_BE, 4), BE7, True, id="be4-to-be7"),
        pytest.param(BE7, BE7, False, id="be7-to-be7"),
        pytest.param(IDLE, BE7, False, id="idle-to-be7"),
        pytest.param(BE7, IDLE, True, id="be7-to-idle"),
        pytest.param(ioprio_value(IOPRIO_CLASS_RT, 0), IDLE, False, id="real-time-is-never-demoted"),
    ],
)
def test_io_priorities_are_compared(current: int, target: int, lower: bool) -> None:
    """be/7 is lower than none and be/4; idle is lowest; real-time is never demoted."""
    assert io_lower_than(current, target) is lower


def test_io_priorities_are_described() -> None:
    """Each IO priority has a short name; an unknown one reads as a dash."""
    assert [describe_ioprio(v) for v in (NONE, BE7, IDLE, None)] == ["none", "be/7", "idle", "-"]


def test_unknown_machines_change_only_the_nice_value() -> None:
    """Without known syscall numbers the IO priority reads as None and setting it does nothing."""
    ops = SystemPriorityOps(machine="vax")
    assert ops.ioprio_supported is False
    assert ops.get_ioprio(os.getpid()) is None
    ops.set_ioprio(os.getpid(), BE7)
    assert SystemPriorityOps().get_ioprio(os.getpid()) == 0


def test_lower_and_restore_every_thread(spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """Each thread gets nice 10 and be/7 (renice -p would change one); restore gives each its own value back."""
    process = spawn(threads=3)
    pid = process.pid
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    os.setpriority(os.PRIO_PROCESS, tids[-1], 3)
    renicer = Renicer()
    start = renicer.start_ticks(pid)
    assert start is not None
    saved = renicer.lower(pid, start, lambda p: Priority(nice=max(p.nice, 10), ioprio=BE7))
    assert saved.main == Priority(nice=0, ioprio=0)
    assert saved.threads[tids[-1]] == Priority(nice=3, ioprio=0)
    assert nices(pid) == {10} and ioprios(pid) == {BE7}
    assert renicer.current(pid, start) == Priority(nice=10, ioprio=BE7)
    before = renicer.restore(pid, start, saved)
    assert before == Priority(nice=10, ioprio=BE7)
    assert {t: os.getpriority(os.PRIO_PROCESS, t) for t in tids} == {**dict.fromkeys(tids, 0), tids[-1]: 3}
    assert ioprios(pid) == {0}


def test_a_different_or_gone_process_is_never_touched(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """A start time that does not match (PID reused) or an exited process raises ProcessGone, nothing changes."""
    process = spawn()
    renicer = Renicer()
    start = renicer.start_ticks(process.pid)
    assert start is not None
    with pytest.raises(ProcessGone):
        renicer.lower(process.pid, start + 1, lambda p: Priority(nice=10, ioprio=None))
    assert nices(process.pid) == {0}
    process.kill()
    process.wait(timeout=10)
    with pytest.raises(ProcessGone):
        renicer.current(process.pid, start)


class FailOnThread:
    """Real calls, but setting the nice of one thread fails as without CAP_SYS_NICE."""

    def __init__(self, tid: int) -> None:
        self.real = SystemPriorityOps()
        self.tid = tid

    def get_nice(self, tid: int) -> int:
        """Read for real."""
        return self.real.get_nice(tid)

    def set_nice(self, tid: int, value: int) -> None:
        """Refuse for the chosen thread."""
        if tid == self.tid:
            raise PermissionError(1, "Operation not permitted")
        self.real.set_nice(tid, value)

    def get_ioprio(self, tid: int) -> int | None:
        """Read for real."""
        return self.real.get_ioprio(tid)

    def set_ioprio(self, tid: int, value: int) -> None:
        """Set for real."""
        self.real.set_ioprio(tid, value)


def test_a_failure_midway_puts_the_changed_threads_back(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """The last thread refuses: the error says why, and the threads already lowered are restored."""
    process = spawn(threads=2)
    last = max(int(t) for t in os.listdir(f"/proc/{process.pid}/task"))
    renicer = Renicer(ops=FailOnThread(last))
    start = renicer.start_ticks(process.pid)
    assert start is not None
    with pytest.raises(StrategyError, match="permission denied"):
        renicer.lower(process.pid, start, lambda p: Priority(nice=10, ioprio=BE7))
    assert nices(process.pid) == {0} and ioprios(process.pid) == {0}


def _as_nobody(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child that dropped root for uid/gid 65534; return what it returned or raised."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            text = work()
        except BaseException as exc:
            text = f"{exc.__class__.__name__}: {exc}"
        os.write(write_end, text.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        out = pipe.read().decode()
    os.waitpid(child, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_without_cap_sys_nice_the_error_says_permission_denied(spawn: Callable[..., subprocess.Popen[bytes]]) -> None:
    """As an ordinary user: another user's recorder cannot be lowered, and one's own cannot be raised back."""
    victim = spawn()
    start = Renicer().start_ticks(victim.pid)
    assert start is not None

    def lower_roots_process() -> str:
        Renicer().lower(victim.pid, start, lambda p: Priority(nice=10, ioprio=BE7))
        return "changed"

    assert _as_nobody(lower_roots_process).startswith("StrategyError: cannot lower the priority")
    assert "permission denied" in _as_nobody(lower_roots_process)
    assert nices(victim.pid) == {0}

    def restore_own_process() -> str:
        own = os.fork()
        if own == 0:  # pragma: no cover - the grandchild only waits to be killed
            signal.pause()
            os._exit(0)
        try:
            renicer = Renicer()
            own_start = renicer.start_ticks(own)
            assert own_start is not None
            saved = renicer.lower(own, own_start, lambda p: Priority(nice=10, ioprio=p.ioprio))
            try:
                renicer.restore(own, own_start, saved)
            except StrategyError as exc:
                return f"{exc} | nice now {os.getpriority(os.PRIO_PROCESS, own)}"
            return "restored"
        finally:
            os.kill(own, signal.SIGKILL)
            os.waitpid(own, 0)

    out = _as_nobody(restore_own_process)
    assert out.startswith("cannot restore the priority") and "permission denied" in out
    assert out.endswith("nice now 10")


# ----- the strategy ------------------------------------------------------------------------------------------------


def test_triggers_add_the_calm_line_only_while_holding(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Heat lines always; the calm spec (cpu at or below the exit line) only while recorders are held."""
    strategy = make_strategy(tmp_path / "rec")
    specs = strategy.triggers({})
    assert [(s.signal, s.enter, s.above) for s in specs] == [
        ("cpu_ratio", 0.9, True),
        ("load_per_core", 1.5, True),
        ("psi_cpu_some", 40.0, True),
    ]
    assert specs[0].exit == pytest.approx(0.81)


async def test_hot_plan_apply_revert_and_calm_restore(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Hot: a plan lowers the recorder and stretches sampling; revert undoes it; calm for the window restores."""
    root = tmp_path / "rec"
    recorder = spawn(*recorder_args(root, 1), threads=1)
    state = tmp_path / "state" / "cpu.json"
    strategy = make_strategy(root, state_file=state)
    assert await strategy.plan(ctx(windows_with([0.95, 0.5, 0.5]))) is None  # 1 of 3 is not sustained
    plan = await strategy.plan(ctx(windows_with([0.95, 0.97, 0.5])))
    assert plan is not None
    assert [(c.action, c.before, c.after) for c in plan.changes] == [
        ("renice", "nice 0, io none", "nice 10, io be/7"),
        ("stretch_sampling", "x1", "x2"),
    ]
    assert plan.changes[0].target == f"recorder.camera1.pid{recorder.pid}"
    assert plan.expected is not None and plan.expected.signal == "response_time_seconds"
    assert plan.expected.amount == pytest.approx(0.1) and plan.expected.settle_seconds == 5.0
    assert plan.reversible
    assert nices(recorder.pid) == {0}  # planning changes nothing

    result = await strategy.apply(plan)
    assert nices(recorder.pid) == {10} and ioprios(recorder.pid) == {BE7}
    assert strategy.sample_interval_factor == 2.0
    assert set(strategy.held) == {recorder.pid}
    assert json.loads(state.read_text())["recorders"][0]["saved"]["threads"]
    calm_line = strategy.triggers({})[0]
    assert (calm_line.signal, calm_line.above) == ("cpu_ratio", False)
    assert calm_line.enter == pytest.approx(0.81)
    # nothing more to do while hot
    assert await strategy.plan(ctx(windows_with([0.95, 0.97, 0.99]))) is None

    reverted = await strategy.revert(result)
    assert [c.action for c in reverted.changes] == ["restore_priority", "restore_sampling"]
    assert nices(recorder.pid) == {0} and ioprios(recorder.pid) == {0}
    assert strategy.held == {} and strategy.sample_interval_factor == 1.0

    again = await strategy.plan(ctx(windows_with([0.95, 0.97])))
    assert again is not None
    await strategy.apply(again)
    assert nices(recorder.pid) == {10}
    # calm, but not for the whole window yet
    assert await strategy.plan(ctx(windows_with([0.95, 0.97, 0.5, 0.5]))) is None
    restore = await strategy.plan(ctx(windows_with([0.95, 0.5, 0.5, 0.5])))
    assert restore is not None and restore.expected is None
    assert [c.action for c in restore.changes] == ["restore_priority", "restore_sampling"]
    done = await strategy.apply(restore)
    assert (done.changes[0].before, done.changes[0].after) == ("nice 10, io be/7", "nice 0, io none")
    assert nices(recorder.pid) == {0} and strategy.held == {}
    assert json.loads(state.read_text())["recorders"] == []
    assert len(strategy.triggers({})) == 3


async def test_a_renice_journaled_before_typed_actions_is_still_reverted_on_exit(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A state database from before the upgrade: its renice (``params`` and ``revert_data``) is undone by revert_all."""
    root = tmp_path / "rec"
    recorder = spawn(*recorder_args(root, 1), threads=1)
    state = tmp_path / "state" / "cpu.json"
    strategy = make_strategy(root, state_file=state)
    plan = await strategy.plan(ctx(windows_with([0.95, 0.97, 0.5])))
    assert plan is not None
    result = await strategy.apply(plan)
    assert nices(recorder.pid) == {10}
    [action] = plan.actions
    assert isinstance(action, LowerRecorders)
    start = action.recorders[0].start_ticks
    # the rows exactly as the older daemon wrote them
    old_plan = {
        **{k: v for k, v in plan.as_dict().items() if k != "actions"},
        "params": {
            "mode": "renice",
            "recorders": [{"pid": recorder.pid, "start_ticks": start, "camera_id": 1}],
            "factor": 2.0,
            "firing": ["cpu_ratio"],
        },
    }
    old_result = {
        **{k: v for k, v in result.as_dict().items() if k != "revert"},
        "revert_data": {"recorders": [{"pid": recorder.pid, "start_ticks": start}], "factor_before": 1.0},
    }
    clock = FakeClock()
    store = StateStore(tmp_path / "daemon-state", wall_clock=clock.wall)
    store.open()
    try:
        entry = store.journal_intent(decision_id=None, strategy="cpu", plan=old_plan)
        assert entry is not None
        store.journal_finish(entry, "done", old_result)
        rebuilt = Plan.from_dict(store.journal("done")[0].plan, legacy=strategy.legacy_actions)
        assert rebuilt.actions == (
            LowerRecorders(
                recorders=(RecorderRef(pid=recorder.pid, start_ticks=start, camera_id=1),),
                factor=2.0,
                firing=("cpu_ratio",),
            ),
        )
        engine = make_engine([strategy], store=store, clock=clock)
        assert await engine.revert_all() == 1
        await engine.stop(1.0)
        assert nices(recorder.pid) == {0} and strategy.held == {} and strategy.sample_interval_factor == 1.0
        assert [e.status for e in store.journal()] == ["reverted"]
    finally:
        store.close()


async def test_an_interrupted_plan_of_the_older_shape_is_reconciled_or_refused_clearly(tmp_path: Path) -> None:
    """Old ``params`` of a restore become a RestoreRecorders; an unknown mode is a ValueError that says so."""
    strategy = make_strategy(tmp_path / "rec")
    restore = strategy.legacy_actions({"mode": "restore", "recorders": [{"pid": 5, "start_ticks": 9}]})
    assert restore == (RestoreRecorders(recorders=(RecorderRef(pid=5, start_ticks=9),)),)
    note = await strategy.reconcile(Plan(strategy="cpu", reason="r", changes=(), actions=restore))
    assert note.startswith("0 recorder(s) still held after an interrupted restore")
    with pytest.raises(ValueError, match="unknown mode 'spin'"):
        strategy.legacy_actions({"mode": "spin"})


async def test_already_low_recorders_are_left_and_manual_needs_current_heat(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A recorder at nice 15 is never raised; a manual request acts on the latest value alone, not on a calm one."""
    root = tmp_path / "rec"
    low = spawn(*recorder_args(root, 1))
    normal = spawn(*recorder_args(root, 2))
    os.setpriority(os.PRIO_PROCESS, low.pid, 15)
    SystemPriorityOps().set_ioprio(low.pid, ioprio_value(IOPRIO_CLASS_IDLE, 0))
    strategy = make_strategy(root, hot_sample_interval_factor=1.0)
    assert await strategy.plan(ctx(windows_with([0.2, 0.3]), manual=True)) is None
    plan = await strategy.plan(ctx(windows_with([0.2, 0.95]), manual=True, response=None))
    assert plan is not None and plan.expected is None
    assert [c.target for c in plan.changes] == [f"recorder.camera2.pid{normal.pid}"]
    await strategy.apply(plan)
    assert nices(low.pid) == {15} and nices(normal.pid) == {10}


async def test_idle_io_class_when_asked(spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path) -> None:
    """recorder_ionice_idle gives the idle IO class instead of best-effort 7."""
    root = tmp_path / "rec"
    recorder = spawn(*recorder_args(root, 1))
    strategy = make_strategy(root, recorder_ionice_idle=True, recorder_nice=19)
    plan = await strategy.plan(ctx(windows_with([0.95, 0.95])))
    assert plan is not None and plan.changes[0].after == "nice 19, io idle"
    await strategy.apply(plan)
    assert psutil.Process(recorder.pid).ionice().ioclass == psutil.IOPRIO_CLASS_IDLE


async def test_exited_recorders_are_forgotten_and_overrides_reported(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A held recorder that exits is dropped; one reniced by hand is let go with operator_override and a finding."""
    root = tmp_path / "rec"
    gone = spawn(*recorder_args(root, 1))
    touched = spawn(*recorder_args(root, 2))
    strategy = make_strategy(root)
    plan = await strategy.plan(ctx(windows_with([0.95, 0.95])))
    assert plan is not None
    await strategy.apply(plan)
    assert set(strategy.held) == {gone.pid, touched.pid}
    gone.kill()
    gone.wait(timeout=10)
    os.setpriority(os.PRIO_PROCESS, touched.pid, 5)
    with structlog.testing.capture_logs() as logs:
        assert await strategy.plan(ctx(windows_with([0.95, 0.95]))) is None
    assert strategy.held == {}
    events = [e for e in logs if e["event"] == "operator_override"]
    assert [(e["pid"], e["found"]) for e in events] == [(touched.pid, "nice 5, io be/7")]
    (finding,) = strategy.findings(ctx(windows_with([0.95])))
    assert finding.id == "recorder-priority-overridden" and finding.evidence["pids"] == [touched.pid]
    assert nices(touched.pid) == {5}
    touched.kill()
    touched.wait(timeout=10)
    await strategy.plan(ctx(windows_with([0.95, 0.95])))
    assert strategy.findings(ctx(windows_with([0.95]))) == ()


async def test_a_failed_renice_puts_back_the_recorders_done_before(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The second recorder refuses: StrategyError with the reason; the first is back at nice 0, nothing held."""
    root = tmp_path / "rec"
    first = spawn(*recorder_args(root, 1))
    second = spawn(*recorder_args(root, 2))
    strategy = make_strategy(root, renicer=Renicer(ops=FailOnThread(second.pid)), state_file=tmp_path / "s.json")
    plan = await strategy.plan(ctx(windows_with([0.95, 0.95])))
    assert plan is not None
    with pytest.raises(StrategyError, match=r"permission denied.*1 recorder\(s\) lowered before it were put back"):
        await strategy.apply(plan)
    assert nices(first.pid) == {0} and nices(second.pid) == {0} and ioprios(first.pid) == {0}
    assert strategy.held == {} and strategy.sample_interval_factor == 1.0
    assert json.loads((tmp_path / "s.json").read_text())["recorders"] == []


async def test_state_file_is_adopted_and_cleaned_on_start(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """On start, held recorders still lowered are adopted; exited ones and never-applied intents are dropped."""
    root = tmp_path / "rec"
    lowered = spawn(*recorder_args(root, 1))
    untouched = spawn(*recorder_args(root, 2))
    state = tmp_path / "cpu.json"
    first = make_strategy(root, state_file=state)
    plan = await first.plan(ctx(windows_with([0.95, 0.95])))
    assert plan is not None
    await first.apply(plan)
    data = json.loads(state.read_text())
    intent = next(r for r in data["recorders"] if r["pid"] == untouched.pid)
    # as if the daemon died after writing the intent and before the system calls
    Renicer().restore(untouched.pid, intent["start_ticks"], first.held[untouched.pid].saved)
    data["recorders"].append({**intent, "pid": 999_999_999, "start_ticks": 1})
    state.write_text(json.dumps(data))
    second = make_strategy(root, state_file=state)
    assert set(second.held) == {lowered.pid}
    assert [r["pid"] for r in json.loads(state.read_text())["recorders"]] == [lowered.pid]
    state.write_text("{not json")
    with structlog.testing.capture_logs() as logs:
        assert make_strategy(root, state_file=state).held == {}
    assert logs[0]["event"] == "cpu_state_unreadable"


async def test_close_restores_only_with_revert_on_exit(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """close() leaves recorders lowered by default, and restores them when revert on exit is configured."""
    root = tmp_path / "rec"
    recorder = spawn(*recorder_args(root, 1))
    strategy = make_strategy(root)
    result = await strategy.apply(await strategy.plan(ctx(windows_with([0.95, 0.95]))) or _fail())
    await strategy.close()
    assert nices(recorder.pid) == {10}
    await strategy.revert(result)
    assert nices(recorder.pid) == {0}
    keeper = CpuStrategy(
        CpuOptions(),
        cpu_threshold=0.9,
        exit_ratio=0.9,
        detection=DETECTION,
        recorders=RecorderReader(recordings_root=root),
        restore_on_close=True,
    )
    await keeper.apply(await keeper.plan(ctx(windows_with([0.95, 0.95]))) or _fail())
    assert nices(recorder.pid) == {10} and set(keeper.held) == {recorder.pid}
    await keeper.close()
    assert nices(recorder.pid) == {0}


def _fail() -> Any:
    """A plan was expected."""
    raise AssertionError("expected a plan")


@pytest.mark.parametrize(
    ("values", "manual"),
    [
        pytest.param([0.95, 0.97, 0.99], False, id="scheduled"),
        pytest.param([0.99], True, id="asked-by-hand"),
    ],
)
async def test_a_host_without_recorders_plans_nothing_while_hot(
    tmp_path: Path, values: list[float], manual: bool
) -> None:
    """No recorder to lower: no plan (and so no "0 recorder(s)" row), scheduled or asked by hand."""
    strategy = make_strategy(tmp_path / "no-recorders")
    assert await strategy.plan(ctx(windows_with(values), manual=manual)) is None
    assert strategy.sample_interval_factor == 1.0


async def test_the_restore_is_a_restoring_plan_and_names_what_it_gives_back(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The calm plan is marked as undoing the strategy's own change (no cooldown holds it); with every lowered
    recorder gone it says the sampling goes back, not "0 recorder(s)"."""
    root = tmp_path / "rec"
    recorder = spawn(*recorder_args(root, 1))
    strategy = make_strategy(root)
    hot = await strategy.plan(ctx(windows_with([0.95, 0.97])))
    assert hot is not None and hot.restores is False
    await strategy.apply(hot)
    calm = await strategy.plan(ctx(windows_with([0.5, 0.5, 0.5])))
    assert calm is not None and calm.restores is True
    assert "1 recorder(s) get their priority back" in calm.reason

    recorder.kill()
    recorder.wait()
    alone = await strategy.plan(ctx(windows_with([0.5, 0.5, 0.5])))
    assert alone is not None and alone.restores is True
    assert [c.action for c in alone.changes] == ["restore_sampling"]
    assert "recorder(s)" not in alone.reason and "sample interval goes back to normal" in alone.reason
