"""The connection strategy's ESTABLISHED line: max(floor, baseline x factor), watched with or without kicking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web

from config.settings import ConnectionOptions, DetectionSettings, Mode
from metrics.snapshot import Snapshot, TcpSample
from metrics.window import Windows
from optimizer.clock import FakeClock
from optimizer.detection import Detector
from optimizer.state import StateStore
from strategies.actions.mediamtx import MediaMtxKicker
from strategies.base import Plan, StrategyContext
from strategies.connection import ConnectionStrategy, IdleReader, KickReaders
from tests.optimizer.fakes import make_engine

DETECTION = DetectionSettings(samples_required=2, window_samples=3)


def make(*, kicking: bool = False, **options: Any) -> ConnectionStrategy:
    """A connection strategy without a database (floor 100, factor 3 unless told), kicking on or off."""
    opts = ConnectionOptions(**{"established_floor": 100, "baseline_factor": 3.0, **options})
    return ConnectionStrategy(
        opts,
        database=None,
        timezone_offset_hours=7.0,
        detection=DETECTION,
        exit_ratio=0.9,
        # never called here: the trigger and the finding only read the windows
        kicker=MediaMtxKicker("http://127.0.0.1:9", 1.0) if kicking else None,
        clock=lambda: 1000.0,
    )


def snapshot(established: int, *, at: float = 3.0) -> Snapshot:
    """A snapshot holding only the backend's TCP counts."""
    return Snapshot(
        seq=int(at),
        monotonic=at,
        wall_time=1_800_000_000.0 + at,
        duration_seconds=0.01,
        host=None,
        backend=None,
        tcp=TcpSample(
            ports=(3000,), by_state=MappingProxyType({"established": established}), total=established, method="t"
        ),
        probe=None,
        cache=None,
        database=None,
        hls=None,
        mediamtx=None,
        sessions=None,
        own=None,
        sources=MappingProxyType({}),
    )


def windows_of(*values: int) -> Windows:
    """Windows holding one ESTABLISHED count per sample."""
    windows = Windows(50)
    for i, value in enumerate(values):
        windows.push(float(i + 1), {"tcp_established": float(value)})
    return windows


def ctx(windows: Windows, baselines: dict[str, float], *armed: str) -> StrategyContext:
    """A planning context over the windows, whose last value the snapshot repeats."""
    last = windows.last("tcp_established") or 0.0
    return StrategyContext(
        snapshot=snapshot(int(last)),
        windows=windows,
        armed=armed,
        manual=False,
        now=1000.0,
        baselines=MappingProxyType(baselines),
    )


@pytest.mark.parametrize("kicking", [pytest.param(False, id="watching"), pytest.param(True, id="kicking")])
@pytest.mark.parametrize(
    ("baselines", "line"),
    [
        pytest.param({}, 100.0, id="nothing-learned-the-floor"),
        pytest.param({"tcp_established": 20.0}, 100.0, id="quiet-normal-under-the-floor-which-holds"),
        pytest.param({"tcp_established": 80.0}, 240.0, id="busy-normal-times-factor-lifts-the-line"),
    ],
)
def test_the_established_trigger_follows_the_baseline_with_or_without_kicking(
    kicking: bool, baselines: dict[str, float], line: float
) -> None:
    """tcp_established is always a trigger; its line is max(floor, baseline x factor), its exit 0.9 of that."""
    strategy = make(kicking=kicking)
    [spec] = [s for s in strategy.triggers(baselines) if s.signal == "tcp_established"]
    assert spec.above
    assert (spec.enter, spec.exit) == pytest.approx((line, line * 0.9))
    assert strategy.established_line(baselines) == pytest.approx(line)


@pytest.mark.parametrize(
    ("baselines", "arms"),
    [
        pytest.param({}, True, id="against-the-floor-100"),
        pytest.param({"tcp_established": 80.0}, False, id="against-a-learned-normal-of-80-line-240"),
    ],
)
def test_the_same_load_arms_below_the_learned_normal_but_not_above_it(baselines: dict[str, float], arms: bool) -> None:
    """150 sockets arm against the floor (100) but not once 80 is the learned normal (line 240)."""
    strategy = make()
    windows = windows_of(150, 150, 150)
    assert Detector().update(strategy.triggers(baselines), windows, DETECTION) is arms


async def test_without_kicking_arming_plans_nothing_and_reports_the_numbers() -> None:
    """Kicking off: past the line the strategy plans nothing and reports connections-above-normal with evidence."""
    strategy = make()
    windows = windows_of(90, 300, 320)
    baselines = {"tcp_established": 50.0}  # line max(100, 150) = 150
    context = ctx(windows, baselines, "tcp_established")
    assert await strategy.plan(context) is None
    [finding] = [f for f in strategy.findings(context) if f.id == "connections-above-normal"]
    assert finding.severity == "warning"
    assert "reader kicking is off" in finding.summary
    assert dict(finding.evidence) == {
        "established": 320,
        "established_max": 320,
        "line": 150.0,
        "floor": 100,
        "baseline": 50.0,
        "baseline_factor": 3.0,
        "samples_over": 2,
        "window_samples": 3,
        "sessions_active": None,
        "mediamtx_readers": None,
        "kick_idle_readers": False,
    }


@pytest.mark.parametrize(
    ("values", "baselines"),
    [
        pytest.param((90, 90, 300), {}, id="one-sample-past-the-line-not-n-of-m"),
        pytest.param((300, 300, 300), {"tcp_established": 120.0}, id="all-under-a-learned-line-of-360"),
    ],
)
def test_under_the_line_there_is_no_finding(values: tuple[int, ...], baselines: dict[str, float]) -> None:
    """One sample past the line (not N of M), or all under it: no connections-above-normal."""
    strategy = make()
    assert [f.id for f in strategy.findings(ctx(windows_of(*values), baselines))] == []


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """An open state store in a temporary directory."""
    st = StateStore(tmp_path / "state")
    st.open()
    yield st
    st.close()


async def test_an_armed_round_without_kicking_writes_no_history_row(store: StateStore) -> None:
    """Armed on tcp_established with kicking off, a scheduled round records nothing; the finding is listed."""
    clock = FakeClock()
    engine = make_engine([make()], store=store, clock=clock, detection=DETECTION, global_mode=Mode.ENFORCE)
    try:
        for value in (300, 320, 340):
            clock.advance(5.0)
            engine.on_snapshot(snapshot(value, at=clock.monotonic()))
        result = await engine.request_round(trigger="scheduled")
        rt = engine.runtimes["connection"]
        assert rt.detector.armed and rt.detector.armed_signals == ("tcp_established",)
        assert result.decision_ids == ()
        assert store.decisions() == []
        assert list(engine.findings) == ["connections-above-normal"]
    finally:
        await engine.stop(1.0)


async def test_a_kick_plan_kicks_only_the_readers_still_idle_over_real_http() -> None:
    """KickReaders re-lists the readers: one still idle is kicked, one sending again and one gone are left."""
    kicked: list[str] = []
    items = [
        {"id": "idle1", "state": "read", "path": "cam1", "bytesSent": 10},
        {"id": "busy1", "state": "read", "path": "cam2", "bytesSent": 99},
    ]

    async def listing(request: web.Request) -> web.Response:
        if request.match_info["kind"] != "rtspsessions":
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response({"items": items, "pageCount": 1})

    async def kick(request: web.Request) -> web.Response:
        kicked.append(request.match_info["id"])
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v3/{kind}/list", listing)
    app.router.add_post("/v3/{kind}/kick/{id}", kick)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    strategy = ConnectionStrategy(
        ConnectionOptions(kick_idle_readers=True),
        database=None,
        timezone_offset_hours=7.0,
        detection=DETECTION,
        exit_ratio=0.9,
        kicker=MediaMtxKicker(f"http://127.0.0.1:{port}", 2.0),
        clock=lambda: 1000.0,
    )
    planned = tuple(
        IdleReader(kind="rtspsessions", id=i, bytes_sent=b) for i, b in (("idle1", 10), ("busy1", 5), ("gone1", 0))
    )
    try:
        plan = Plan(strategy="connection", reason="r", changes=(), actions=(KickReaders(readers=planned),))
        result = await strategy.apply(plan)
    finally:
        await strategy.close()
        await runner.cleanup()
    assert kicked == ["idle1"]
    assert [c.target for c in result.changes] == ["mediamtx.rtspsessions.idle1"]
    assert result.detail == "kicked 1 reader(s); rtspsessions/busy1 is sending again; rtspsessions/gone1 already gone"
