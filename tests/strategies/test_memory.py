"""The memory strategy: triggers, plans, findings, and its actions on real files, processes and HTTP."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web

from config.settings import MemoryOptions
from metrics.backend import BackendClient, Credentials
from metrics.memory import fit_growth, rss_bytes, same_process_running, start_ticks, steady_growth
from metrics.snapshot import (
    CacheStatsSample,
    HlsSample,
    HostSample,
    MediaMtxSample,
    OwnSample,
    ProcessSample,
    SessionSample,
    Snapshot,
)
from metrics.window import Windows
from optimizer.clock import FakeClock
from strategies.base import Direction, Plan, Risk, StrategyContext, StrategyError
from strategies.memory import CleanSelf, MemoryStrategy, PruneHls, RestartBackend, TrimBackendCache

MIB = 1024 * 1024
NOW = time.time()
OLD = NOW - 600
HOT = ("/api/cameras/active", "/api/areas/public")


# ----- building blocks ------------------------------------------------------------------------------------------


def host(used_ratio: float = 0.3, shm_used: int = 0, shm_total: int = 1024 * MIB) -> HostSample:
    """A host sample with the given memory and /dev/shm figures."""
    return HostSample(
        cpu_ratio=0.1,
        cpu_count=4,
        memory_total_bytes=8192 * MIB,
        memory_available_bytes=int(8192 * MIB * (1 - used_ratio)),
        memory_used_ratio=used_ratio,
        swap_used_ratio=0.0,
        load=(0.1, 0.1, 0.1),
        uptime_seconds=1000.0,
        psi=None,
        net_rx_bytes_per_second=0.0,
        net_tx_bytes_per_second=0.0,
        disk_read_bytes_per_second=0.0,
        disk_write_bytes_per_second=0.0,
        shm_total_bytes=shm_total,
        shm_used_bytes=shm_used,
    )


def backend(rss: int, pid: int = 4242) -> ProcessSample:
    """A backend process sample."""
    return ProcessSample(
        pid=pid, rss_bytes=rss, tree_rss_bytes=rss, cpu_ratio=0.1, children=0, open_files=10, listen_ports=(3000,)
    )


def hls_sample(stale: int = 0, total: int = 4 * MIB, stale_bytes: int | None = None) -> HlsSample:
    """An HLS directory sample."""
    return HlsSample(
        bytes=total,
        files=40 + stale,
        streams=4,
        oldest_segment_age_seconds=600.0,
        stale_files=stale,
        stale_bytes=stale * 65536 if stale_bytes is None else stale_bytes,
    )


def cache_sample(size: int) -> CacheStatsSample:
    """A cache stats sample."""
    return CacheStatsSample(hits=10, misses=size, sets=size, evictions=0, size=size, max_size=None, hit_rate=0.1)


def snapshot(**parts: Any) -> Snapshot:
    """A snapshot with only the given parts present."""
    base: dict[str, Any] = {
        "host": host(),
        "backend": None,
        "tcp": None,
        "probe": None,
        "cache": None,
        "database": None,
        "hls": None,
        "mediamtx": None,
        "sessions": None,
        "own": OwnSample(rss_bytes=40 * MIB, cpu_seconds=1.0),
    }
    base.update(parts)
    return Snapshot(seq=1, monotonic=100.0, wall_time=NOW, duration_seconds=0.01, sources=MappingProxyType({}), **base)


def ctx(snap: Snapshot, *armed: str, manual: bool = False, windows: Windows | None = None) -> StrategyContext:
    """A planning context."""
    return StrategyContext(snapshot=snap, windows=windows or Windows(50), armed=armed, manual=manual, now=100.0)


def strategy(
    options: MemoryOptions | None = None,
    *,
    windows: Windows | None = None,
    hls_root: Path | None = None,
    client: BackendClient | None = None,
    clock: Callable[[], float] | None = None,
    **kwargs: Any,
) -> MemoryStrategy:
    """A memory strategy with test-sized defaults."""
    return MemoryStrategy(
        options or MemoryOptions(),
        memory_threshold=kwargs.pop("memory_threshold", 0.8),
        gc_threshold=kwargs.pop("gc_threshold", 0.5),
        enable_gc=kwargs.pop("enable_gc", True),
        exit_ratio=0.9,
        windows=windows or Windows(50),
        hls_root=hls_root,
        backend=client,
        hot_endpoints=HOT,
        clock=clock or FakeClock().monotonic,
        wall=lambda: NOW,
        **kwargs,
    )


def rising(windows: Windows, start: int, per_second: float, seconds: int, step: int = 10) -> None:
    """Fill the backend RSS window with a steady rise."""
    for t in range(0, seconds + 1, step):
        windows.push(float(t), {"backend_rss_bytes": start + per_second * t})


# ----- growth -----------------------------------------------------------------------------------------------------


def test_steady_growth_is_measured_and_projects_the_kill() -> None:
    """A clean linear rise gives its slope and the time left until a target."""
    points = [(float(t), 500 * MIB + 100_000.0 * t) for t in range(0, 610, 10)]
    growth = steady_growth(points, min_span_seconds=300)
    assert growth is not None
    assert growth.slope == pytest.approx(100_000.0)
    assert growth.r2 == pytest.approx(1.0)
    eta = growth.seconds_to(1024 * MIB)
    assert eta == pytest.approx((524 * MIB - 60_000_000) / 100_000.0)


@pytest.mark.parametrize(
    "points",
    [
        pytest.param([(float(t), 300.0 * MIB) for t in range(0, 600, 10)], id="flat"),
        pytest.param([(float(t), (300 + (50 if t % 20 else -50)) * MIB + t) for t in range(0, 600, 10)], id="zigzag"),
        pytest.param([(float(t), 300.0 * MIB + 1000 * t) for t in range(0, 100, 10)], id="shorter-than-the-span"),
    ],
)
def test_flat_noisy_or_short_series_are_not_steady_growth(points: list[tuple[float, float]]) -> None:
    """No growth is reported for a flat series, a zig-zag, or one shorter than the minimum span."""
    assert steady_growth(points, min_span_seconds=300) is None


def test_points_all_at_one_moment_fit_no_line() -> None:
    """Readings that share one timestamp have no slope to fit."""
    assert fit_growth([(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]) is None


def test_process_figures_come_from_proc() -> None:
    """RSS and start time of a real process are read, and a finished one is gone."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        ticks = start_ticks(proc.pid)
        assert ticks is not None and ticks > 0
        rss = rss_bytes(proc.pid)
        assert rss is not None and rss > MIB
        assert same_process_running(proc.pid, ticks)
        assert not same_process_running(proc.pid, ticks + 1)
    finally:
        proc.communicate(b"", timeout=10)
    assert not same_process_running(proc.pid, ticks)
    assert rss_bytes(proc.pid) is None


# ----- triggers ---------------------------------------------------------------------------------------------------


SETTINGS = MemoryOptions(hls_budget_bytes=64 * MIB, cache_entries_limit=500, own_budget_bytes=200 * MIB)


@pytest.mark.parametrize(
    ("signal", "enter"),
    [
        pytest.param("memory_used_ratio", 0.85, id="host-memory-from-memory-threshold"),
        pytest.param("hls_bytes", 64 * MIB, id="hls-budget"),
        pytest.param("cache_entries", 500, id="cache-entries-limit"),
        pytest.param("backend_rss_bytes", SETTINGS.backend_rss_limit_bytes, id="backend-rss-limit"),
        pytest.param("own_rss_bytes", 100 * MIB, id="own-rss-gc-threshold-of-own-budget"),
        pytest.param("shm_used_ratio", SETTINGS.shm_used_ratio, id="shm-used-ratio"),
    ],
)
def test_triggers_follow_the_settings(signal: str, enter: float) -> None:
    """Enter thresholds come from MEMORY_THRESHOLD, the options and GC_THRESHOLD x own budget; exits are 0.9 of
    them."""
    specs = {s.signal: s for s in strategy(SETTINGS, memory_threshold=0.85, gc_threshold=0.5).triggers({})}
    assert specs[signal].enter == enter
    assert specs[signal].exit == pytest.approx(enter * 0.9)


def test_own_rss_is_not_watched_without_enable_gc() -> None:
    """ENABLE_GC=false removes the self-cleanup trigger."""
    signals = {s.signal for s in strategy(enable_gc=False).triggers({})}
    assert "own_rss_bytes" not in signals
    assert "hls_bytes" in signals


def test_steady_backend_growth_lowers_the_rss_trigger() -> None:
    """Growth that reaches pm2's kill within the lead time arms below the limit; a flat series does not."""
    windows = Windows(200)
    rising(windows, 300 * MIB, per_second=100_000.0, seconds=600)
    o = MemoryOptions(restart_lead_seconds=3600, growth_min_span_seconds=300)
    spec = next(s for s in strategy(o, windows=windows).triggers({}) if s.signal == "backend_rss_bytes")
    assert spec.enter == pytest.approx(1024 * MIB - 100_000.0 * 3600)
    assert spec.enter < o.backend_rss_limit_bytes
    flat = Windows(200)
    for t in range(0, 610, 10):
        flat.push(float(t), {"backend_rss_bytes": 300.0 * MIB})
    spec = next(s for s in strategy(o, windows=flat).triggers({}) if s.signal == "backend_rss_bytes")
    assert spec.enter == o.backend_rss_limit_bytes


# ----- plans ------------------------------------------------------------------------------------------------------


async def test_over_budget_hls_plans_a_prune_expecting_fewer_bytes(tmp_path: Path) -> None:
    """Armed by hls_bytes with stale files: one irreversible prune, expected to free the stale bytes."""
    s = strategy(MemoryOptions(hls_budget_bytes=2 * MIB), hls_root=tmp_path)
    plan = await s.plan(ctx(snapshot(hls=hls_sample(stale=50)), "hls_bytes"))
    assert plan is not None
    assert plan.action == "hls_prune"
    assert [c.reversible for c in plan.changes] == [False]
    assert plan.expected is not None
    assert (plan.expected.signal, plan.expected.direction, plan.expected.amount) == (
        "hls_bytes",
        Direction.DOWN,
        50 * 65536,
    )
    assert plan.actions == (PruneHls(root=str(tmp_path), stale_age=120.0, max_files=10_000),)


async def test_host_memory_pressure_prunes_stale_files_even_under_the_hls_budget(tmp_path: Path) -> None:
    """Host memory over MEMORY_THRESHOLD: stale files in RAM go, verified on the stale count."""
    plan = await strategy(hls_root=tmp_path).plan(ctx(snapshot(hls=hls_sample(stale=7)), "memory_used_ratio"))
    assert plan is not None and plan.expected is not None
    assert (plan.expected.signal, plan.expected.amount) == ("hls_stale_files", 7)


async def test_a_bloated_cache_plans_invalidation_of_the_hot_prefixes(tmp_path: Path) -> None:
    """Cache over its limit: invalidate the junk prefixes (the hot endpoints by default) and warm them."""
    client = BackendClient(
        "http://127.0.0.1:9",
        Credentials(username="a", password="b", api_key=None),
        user_agent="t",
        timeout_seconds=1,
        requests_per_minute=60,
    )
    try:
        s = strategy(MemoryOptions(cache_entries_limit=100), client=client)
        plan = await s.plan(ctx(snapshot(cache=cache_sample(900)), "cache_entries"))
    finally:
        await client.close()
    assert plan is not None and plan.expected is not None
    assert plan.action == "cache_invalidate"
    assert plan.expected.signal == "cache_entries" and plan.expected.amount == 900 - len(HOT)
    assert plan.actions == (TrimBackendCache(prefixes=HOT, limit=100, warm=HOT),)


async def test_own_rss_over_its_line_plans_self_cleanup() -> None:
    """The daemon over GC_THRESHOLD of its budget plans gc.collect with an expected drop."""
    s = strategy(MemoryOptions(own_budget_bytes=64 * MIB), gc_threshold=0.5)
    plan = await s.plan(ctx(snapshot(own=OwnSample(rss_bytes=60 * MIB, cpu_seconds=1)), "own_rss_bytes"))
    assert plan is not None and plan.expected is not None
    assert plan.action == "gc_collect"
    assert plan.expected.signal == "own_rss_bytes"
    assert plan.expected.amount == pytest.approx(60 * MIB - 32 * MIB * 0.9)


async def test_a_manual_request_cleans_up_without_promising_an_effect() -> None:
    """A manual round under every line still collects garbage, with no expected effect to judge."""
    plan = await strategy().plan(ctx(snapshot(), manual=True))
    assert plan is not None and plan.action == "gc_collect" and plan.expected is None
    assert await strategy(enable_gc=False).plan(ctx(snapshot(), manual=True)) is None


def restart_options(**extra: Any) -> MemoryOptions:
    """Options with a restart command configured."""
    values: dict[str, Any] = {
        "backend_rss_limit_bytes": 512 * MIB,
        "restart_command": "true",
        "restart_quiet_max_viewers": 1,
        "restart_min_interval_seconds": 3600,
    }
    return MemoryOptions(**{**values, **extra})


def quiet(viewers: int) -> dict[str, Any]:
    """Snapshot parts saying how many viewers watch."""
    return {
        "sessions": SessionSample(active=viewers, stuck=0, oldest_heartbeat_age_seconds=None),
        "mediamtx": MediaMtxSample(paths=4, ready_paths=4, readers=0),
    }


async def test_a_restart_is_planned_only_when_no_safe_step_applies(tmp_path: Path) -> None:
    """Backend over its limit in a quiet moment: a disruptive restart, unless something safe can be done first."""
    s = strategy(restart_options(), hls_root=tmp_path)
    plan = await s.plan(ctx(snapshot(backend=backend(600 * MIB), **quiet(0)), "backend_rss_bytes"))
    assert plan is not None and plan.action == "backend_restart" and plan.disruptive
    assert plan.changes[0].risk is Risk.DISRUPTIVE
    assert plan.expected is not None and plan.expected.signal == "backend_rss_bytes"
    assert plan.expected.settle_seconds == restart_options().restart_settle_seconds
    with_stale = snapshot(backend=backend(600 * MIB), hls=hls_sample(stale=3), **quiet(0))
    plan = await s.plan(ctx(with_stale, "backend_rss_bytes", "memory_used_ratio"))
    assert plan is not None and plan.action == "hls_prune" and not plan.disruptive


async def test_no_restart_without_a_command_but_a_finding() -> None:
    """Without restart_command nothing is planned for the backend, and a finding says why."""
    s = strategy(MemoryOptions(backend_rss_limit_bytes=512 * MIB), enable_gc=False)
    c = ctx(snapshot(backend=backend(600 * MIB), **quiet(0)), "backend_rss_bytes")
    assert await s.plan(c) is None
    assert [f.id for f in s.findings(c)] == ["memory-backend-rss-over-limit"]


async def test_a_busy_moment_defers_the_restart_unless_the_kill_is_close() -> None:
    """Viewers watching defer the restart (with a finding); a projected kill within the urgent time does not."""
    s = strategy(restart_options(), enable_gc=False)
    busy = ctx(snapshot(backend=backend(600 * MIB), **quiet(5)), "backend_rss_bytes")
    assert await s.plan(busy) is None
    deferred = [f for f in s.findings(busy) if f.id == "memory-restart-deferred"]
    assert len(deferred) == 1 and "5 viewers" in deferred[0].summary
    windows = Windows(200)
    rising(windows, 900 * MIB, per_second=200_000.0, seconds=600)  # ~1014 MiB now, the kill ~50 s away
    urgent = strategy(restart_options(restart_urgent_seconds=900), enable_gc=False, windows=windows)
    plan = await urgent.plan(ctx(snapshot(backend=backend(1000 * MIB), **quiet(5)), "backend_rss_bytes"))
    assert plan is not None and plan.action == "backend_restart"
    assert "projected kill" in plan.reason


@pytest.mark.parametrize(
    ("options", "enable_gc", "with_hls_root", "parts", "armed"),
    [
        pytest.param(
            MemoryOptions(),
            True,
            True,
            {"hls": hls_sample(stale=0, total=900 * MIB), "cache": cache_sample(3)},
            ("hls_bytes", "memory_used_ratio"),
            id="no-stale-file-a-small-cache-and-a-lean-daemon",
        ),
        pytest.param(
            restart_options(),
            False,
            False,
            {"backend": backend(600 * MIB)},
            ("backend_rss_bytes",),
            id="unknown-viewers-never-count-as-quiet",
        ),
    ],
)
async def test_armed_with_nothing_safe_to_do_there_is_no_plan(
    tmp_path: Path,
    options: MemoryOptions,
    enable_gc: bool,
    with_hls_root: bool,
    parts: dict[str, Any],
    armed: tuple[str, ...],
) -> None:
    """Armed, but no stale file, a small cache and a lean daemon; or a restart wanted without session or reader
    figures, so no quiet moment can be chosen: no plan."""
    s = strategy(options, hls_root=tmp_path if with_hls_root else None, enable_gc=enable_gc)
    assert await s.plan(ctx(snapshot(**parts), *armed)) is None


# ----- findings ---------------------------------------------------------------------------------------------------


def test_findings_report_growth_cache_and_shm_with_stable_ids() -> None:
    """Growth toward the kill, an unbounded cache and a full /dev/shm with little HLS to prune are reported."""
    windows = Windows(200)
    rising(windows, 300 * MIB, per_second=50_000.0, seconds=600)
    s = strategy(MemoryOptions(cache_entries_limit=100), windows=windows)
    snap = snapshot(
        backend=backend(330 * MIB),
        cache=cache_sample(5000),
        host=host(shm_used=900 * MIB, shm_total=1000 * MIB),
        hls=hls_sample(stale=1),
    )
    found = {f.id: f for f in s.findings(ctx(snap))}
    assert set(found) == {"memory-backend-rss-growth", "memory-cache-unbounded", "memory-shm-full"}
    growth = found["memory-backend-rss-growth"]
    assert growth.evidence["growth_bytes_per_second"] == pytest.approx(50_000.0)
    assert growth.evidence["seconds_to_kill"] == pytest.approx(
        (1024 * MIB - (300 * MIB + 30_000_000)) / 50_000.0, abs=1
    )
    assert found["memory-cache-unbounded"].evidence["entries"] == 5000
    calm = strategy(MemoryOptions(cache_entries_limit=100))
    assert calm.findings(ctx(snapshot(backend=backend(200 * MIB), cache=cache_sample(5)))) == ()


# ----- apply: prune and self-cleanup --------------------------------------------------------------------------------


def seg(path: Path, mtime: float = OLD) -> Path:
    """An old segment file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * 1000)
    os.utime(path, (mtime, mtime))
    return path


async def test_apply_prunes_the_configured_root_only(tmp_path: Path) -> None:
    """apply() prunes the stale files and records the freed bytes; a plan naming another root is refused."""
    root = tmp_path / "hls"
    stale = [seg(root / "cam" / f"1e1e1e1e1e1e_video_seg{n}.mp4") for n in range(3)]
    elsewhere = seg(tmp_path / "other" / "cam" / "1e1e1e1e1e1e_video_seg0.mp4")
    s = strategy(hls_root=root, enable_gc=False)
    plan = await s.plan(ctx(snapshot(hls=hls_sample(stale=3, stale_bytes=3000)), "hls_bytes"))
    assert plan is not None
    result = await s.apply(plan)
    assert not any(p.exists() for p in stale)
    assert result.changes[0].after == "0 files (freed 2.9 KiB)"
    assert "pruned 3 stale HLS files" in result.detail
    forged = Plan.from_dict(
        {**plan.as_dict(), "actions": [{**plan.actions[0].to_json(), "root": str(tmp_path / "other")}]}
    )
    with pytest.raises(StrategyError, match="not the configured HLS directory"):
        await s.apply(forged)
    assert elsewhere.exists()


async def test_self_cleanup_collects_garbage_and_trims_history() -> None:
    """apply() runs a full collection (cyclic garbage is gone) and the history trim callable."""
    trimmed: list[str] = []

    class Cycle:
        """An object in a reference cycle, only freed by the cycle collector."""

        def __init__(self) -> None:
            self.me = self

    gc.disable()
    try:
        Cycle()
        before = sum(1 for o in gc.get_objects() if isinstance(o, Cycle))
        s = strategy(trim_history=lambda: trimmed.append("history"))
        plan = await s.plan(ctx(snapshot(), manual=True))
        assert plan is not None
        result = await s.apply(plan)
        after = sum(1 for o in gc.get_objects() if isinstance(o, Cycle))
    finally:
        gc.enable()
    assert before >= 1 and after == 0
    assert trimmed == ["history"]
    assert result.changes[0].action == "gc_collect"
    assert "history trimmed" in result.detail


# ----- apply: restart ---------------------------------------------------------------------------------------------


@pytest.fixture
def fake_backend_process() -> Iterator[subprocess.Popen[bytes]]:
    """A real process standing in for the backend; always reaped at the end."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def restart_plan(s: MemoryStrategy, pid: int, enter: float = 1.0) -> Plan:
    """A restart plan for a given PID, as plan() would make it."""
    return Plan(
        strategy="memory",
        reason="test",
        changes=(),
        actions=(RestartBackend(pid=pid, start_ticks=start_ticks(pid), enter=enter),),
    )


async def test_restart_runs_the_command_and_waits_for_the_old_process(
    fake_backend_process: subprocess.Popen[bytes],
) -> None:
    """A successful command that ends the backend is a done restart; a second one within the interval is refused."""
    pid = fake_backend_process.pid
    command = f"{sys.executable} -c 'import os, signal; os.kill({pid}, signal.SIGTERM)'"
    clock = FakeClock()
    s = strategy(restart_options(restart_command=command), clock=clock.monotonic, enable_gc=False)
    result = await s.apply(restart_plan(s, pid))
    fake_backend_process.wait(timeout=10)
    assert [c.action for c in result.changes] == ["backend_restart"]
    assert result.changes[0].risk is Risk.DISRUPTIVE
    assert f"process {pid} has exited" in result.detail
    # the next plan, even for a grown backend, waits for restart_min_interval_seconds
    busy = ctx(snapshot(backend=backend(600 * MIB), **quiet(0)), "backend_rss_bytes")
    assert await s.plan(busy) is None
    assert "ago" in next(f for f in s.findings(busy) if f.id == "memory-restart-deferred").summary
    clock.advance(3601)
    assert await s.plan(busy) is not None


async def test_a_failing_restart_command_is_an_error_and_the_backend_stays(
    fake_backend_process: subprocess.Popen[bytes],
) -> None:
    """A non-zero exit is raised with the command's output; the backend process keeps running."""
    s = strategy(restart_options(restart_command="sh -c 'echo pm2: process not found >&2; exit 3'"))
    with pytest.raises(StrategyError, match="exited with 3: pm2: process not found"):
        await s.apply(restart_plan(s, fake_backend_process.pid))
    assert fake_backend_process.poll() is None


async def test_a_hanging_restart_command_is_killed_at_its_timeout(
    fake_backend_process: subprocess.Popen[bytes],
) -> None:
    """A command that outlives restart_timeout_seconds is killed and reported."""
    s = strategy(
        restart_options(restart_command=f"{sys.executable} -c 'import time; time.sleep(30)'", restart_timeout_seconds=1)
    )
    started = time.monotonic()
    with pytest.raises(StrategyError, match="did not finish within 1 s"):
        await s.apply(restart_plan(s, fake_backend_process.pid))
    assert time.monotonic() - started < 10
    assert fake_backend_process.poll() is None


async def test_restart_rereads_the_backend_rss_first(
    fake_backend_process: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """When the live RSS is already back under the line, no command runs."""
    marker = tmp_path / "ran"
    s = strategy(restart_options(restart_command=f"touch {marker}"))
    result = await s.apply(restart_plan(s, fake_backend_process.pid, enter=float(1 << 40)))
    assert result.changes == ()
    assert "no restart needed" in result.detail
    assert not marker.exists()


async def test_reconcile_says_whether_an_interrupted_restart_happened(
    fake_backend_process: subprocess.Popen[bytes],
) -> None:
    """reconcile() looks at the old backend process: still running means the restart did not happen."""
    s = strategy(restart_options())
    plan = restart_plan(s, fake_backend_process.pid)
    assert "did not happen" in await s.reconcile(plan)
    fake_backend_process.kill()
    fake_backend_process.wait(timeout=10)
    assert "went through" in await s.reconcile(plan)
    assert "idempotent" in await s.reconcile(
        Plan(strategy="memory", reason="x", changes=(), actions=(PruneHls(root="/x", stale_age=1.0, max_files=1),))
    )


async def test_plans_journaled_before_typed_actions_are_rebuilt_and_reconciled(
    fake_backend_process: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """The older ``{"steps": [...], step: {...}}`` shape becomes the same typed actions in order (missing values
    take the options' defaults, as the older apply did); an interrupted restart is reconciled from it."""
    s = strategy(restart_options(), hls_root=tmp_path, gc_threshold=0.5)
    pid = fake_backend_process.pid
    old: dict[str, object] = {
        "strategy": "memory",
        "reason": "x",
        "changes": [],
        "params": {
            "steps": ["hls_prune", "cache_cleanup", "self_cleanup", "backend_restart"],
            "hls_prune": {"root": str(tmp_path), "stale_age": 60, "max_files": 5},
            "cache_cleanup": {"prefixes": ["/api/a"], "limit": 9, "warm": ["/api/a"]},
            "self_cleanup": {"line": 1024},
            "backend_restart": {"pid": pid, "start_ticks": start_ticks(pid), "enter": 2048},
        },
    }
    plan = Plan.from_dict(old, legacy=s.legacy_actions)
    assert plan.actions == (
        PruneHls(root=str(tmp_path), stale_age=60.0, max_files=5),
        TrimBackendCache(prefixes=("/api/a",), limit=9, warm=("/api/a",)),
        CleanSelf(line=1024.0),
        RestartBackend(pid=pid, start_ticks=start_ticks(pid), enter=2048.0),
    )
    assert "did not happen" in await s.reconcile(plan)
    sparse = s.legacy_actions({"steps": ["hls_prune"]})
    assert sparse == (PruneHls(root=str(tmp_path), stale_age=120.0, max_files=10_000),)
    with pytest.raises(ValueError, match="unknown step 'defrag'"):
        s.legacy_actions({"steps": ["defrag"]})


# ----- apply: cache, against a small HTTP stand-in ----------------------------------------------------------------


@dataclass
class CacheServer:
    """The backend's cache admin API with switchable failures."""

    entries: set[str] = field(default_factory=set)
    invalidate_status: int = 200
    clear_missing: bool = False
    calls: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/api/auth/login", self.login)
        app.router.add_get("/api/cache/stats", self.stats)
        app.router.add_post("/api/cache/invalidate", self.invalidate)
        app.router.add_post("/api/cache/clear", self.clear)
        app.router.add_post("/api/admin/cache/clear", self.admin_clear)
        for path in HOT:
            app.router.add_get(path, self.hot)
        return app

    async def login(self, request: web.Request) -> web.Response:
        """Any login works."""
        return web.json_response({"success": True, "data": {"token": "t", "refreshToken": "r"}})

    async def stats(self, request: web.Request) -> web.Response:
        """Current shape of the stats."""
        return web.json_response({"success": True, "data": {"hits": 0, "misses": 0, "size": len(self.entries)}})

    async def invalidate(self, request: web.Request) -> web.Response:
        """Drop by path prefix, or fail as told."""
        self.calls.append(request.path)
        if self.invalidate_status != 200:
            return web.json_response({"success": False, "message": "boom"}, status=self.invalidate_status)
        pattern = (await request.json())["pattern"]
        doomed = {k for k in self.entries if k.split("?")[0].startswith(pattern)}
        self.entries -= doomed
        return web.json_response({"success": True, "count": len(doomed)})

    async def clear(self, request: web.Request) -> web.Response:
        """Empty everything (or pretend the route is missing)."""
        self.calls.append(request.path)
        if self.clear_missing:
            return web.json_response({"success": False}, status=404)
        self.entries.clear()
        return web.json_response({"success": True, "message": "Cache cleared"})

    async def admin_clear(self, request: web.Request) -> web.Response:
        """The admin duplicate of clear."""
        self.calls.append(request.path)
        count = len(self.entries)
        self.entries.clear()
        return web.json_response({"success": True, "data": {"cleared": count}})

    async def hot(self, request: web.Request) -> web.Response:
        """A cached public endpoint: being asked fills its entry."""
        self.entries.add(request.path)
        return web.json_response({"success": True, "data": []})


@pytest.fixture
async def cache_server() -> AsyncIterator[tuple[CacheServer, BackendClient]]:
    """A running stand-in on 127.0.0.1 and a real BackendClient pointed at it."""
    server = CacheServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = BackendClient(
        f"http://127.0.0.1:{port}",
        Credentials(username="admin", password="pw", api_key=None),
        user_agent="test",
        timeout_seconds=5,
        requests_per_minute=90,
    )
    try:
        yield server, client
    finally:
        await client.close()
        await runner.cleanup()


def junk(n: int, path: str = "/api/cameras/active") -> set[str]:
    """Cache keys made by junk query strings."""
    return {f"{path}?_={i}" for i in range(n)}


async def cache_plan(s: MemoryStrategy, size: int) -> Plan:
    """The strategy's plan for a cache of the given size."""
    plan = await s.plan(ctx(snapshot(cache=cache_sample(size)), "cache_entries"))
    assert plan is not None
    return plan


async def test_cache_junk_is_invalidated_and_the_hot_endpoints_warmed(
    cache_server: tuple[CacheServer, BackendClient],
) -> None:
    """Junk under a hot prefix is invalidated without a full clear, then the hot endpoints are filled again."""
    server, client = cache_server
    server.entries = junk(300) | {"/api/other"}
    s = strategy(MemoryOptions(cache_entries_limit=100), client=client, enable_gc=False)
    result = await s.apply(await cache_plan(s, 301))
    assert server.entries == {"/api/other", *HOT}
    assert "/api/cache/clear" not in server.calls
    change = result.changes[0]
    assert (change.action, change.before, change.after) == (
        "cache_invalidate",
        "301 entries",
        "1 entries, then 2 warmed",
    )
    assert "warmed 2 endpoints" in result.detail


async def test_junk_elsewhere_falls_back_to_a_clear(cache_server: tuple[CacheServer, BackendClient]) -> None:
    """When invalidating the prefixes is not enough the cache is cleared (via the admin route if need be)."""
    server, client = cache_server
    server.entries = junk(300, "/api/feed")
    server.clear_missing = True
    s = strategy(MemoryOptions(cache_entries_limit=100), client=client, enable_gc=False)
    result = await s.apply(await cache_plan(s, 300))
    assert server.entries == set(HOT)
    assert server.calls[-2:] == ["/api/cache/clear", "/api/admin/cache/clear"]
    assert result.changes[0].action == "cache_clear"


async def test_a_backend_500_fails_the_cache_step_and_changes_nothing(
    cache_server: tuple[CacheServer, BackendClient],
) -> None:
    """The backend answering 500 becomes a StrategyError naming it; the cache keeps every entry."""
    server, client = cache_server
    server.entries = junk(300)
    server.invalidate_status = 500
    s = strategy(MemoryOptions(cache_entries_limit=100), client=client, enable_gc=False)
    with pytest.raises(StrategyError, match="answered 500: boom"):
        await s.apply(await cache_plan(s, 300))
    assert server.entries == junk(300)


async def test_a_cache_already_shrunk_is_left_alone(cache_server: tuple[CacheServer, BackendClient]) -> None:
    """apply() re-reads the size: when the sweep already emptied it, nothing is invalidated."""
    server, client = cache_server
    server.entries = junk(5)
    s = strategy(MemoryOptions(cache_entries_limit=100), client=client, enable_gc=False)
    result = await s.apply(await cache_plan(s, 300))
    assert result.changes == ()
    assert server.calls == []
    assert "already down to 5 entries" in result.detail


def test_a_backend_restart_starts_growth_over_after_a_warm_up() -> None:
    """A restart resets the growth baseline: the new process's warm-up rise is no leak.

    The finding used to appear 5.5 minutes after a restart: by then the window held only the new process's
    samples, and its RSS climbing while it warmed up fits a straight line as well as a leak does.
    """
    o = MemoryOptions(growth_min_span_seconds=300, growth_warmup_seconds=600)
    windows = Windows(80)
    # the old process: flat at 400 MiB, up 3 h; restarted at t=600, then warming up for 400 s (5 s samples)
    for t in range(0, 600, 10):
        windows.push(float(t), {"backend_rss_bytes": 400.0 * MIB, "backend_uptime_seconds": 10_800.0 + t})
    restart = 600
    for t in range(restart, restart + 401, 5):
        rss = 80 * MIB + 200_000.0 * (t - restart)
        windows.push(float(t), {"backend_rss_bytes": rss, "backend_uptime_seconds": float(t - restart)})
    assert windows.points("backend_rss_bytes")[0][0] >= restart  # only the new process is in the window
    s = strategy(o, windows=windows)
    snap = snapshot(backend=backend(int(80 * MIB + 200_000.0 * 400), pid=5151))
    assert s.backend_growth() is None
    assert "memory-backend-rss-growth" not in {f.id for f in s.findings(ctx(snap))}
    spec = next(x for x in s.triggers({}) if x.signal == "backend_rss_bytes")
    assert spec.enter == o.backend_rss_limit_bytes
    # the new process keeps growing after its warm-up: that is judged, on the samples after the warm-up only
    for t in range(restart + 405, restart + 1101, 5):
        rss = 150 * MIB + 100_000.0 * (t - restart)
        windows.push(float(t), {"backend_rss_bytes": rss, "backend_uptime_seconds": float(t - restart)})
    growth = s.backend_growth()
    assert growth is not None
    assert growth.slope == pytest.approx(100_000.0)
    assert "memory-backend-rss-growth" in {f.id for f in s.findings(ctx(snap))}
