"""The HTTP API's contract: shapes, status codes, authorisation, errors, round joining."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from optimizer import __version__
from optimizer.api import ROUTES
from testbed.harness import TestbedProcess
from tests.harness import api_client, auth, daemon_env, running_daemon, sample_times

SPEC_PERFORMANCE = {
    "isEnabled",
    "isOptimizing",
    "lastOptimization",
    "optimizationCount",
    "successRate",
    "averageDuration",
}
SPEC_CURRENT = {
    "memoryUsage",
    "cpuUsage",
    "activeConnections",
    "responseTime",
    "throughput",
    "errorRate",
    "systemLoad",
    "uptime",
}


async def test_performance_metrics_has_the_specification_shape(testbed: TestbedProcess, tmp_path: Path) -> None:
    """GET /performance-metrics answers the specification's keys with values in their units."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 1)
        async with http.get("/performance-metrics") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert {"workerId", "timestamp", "performance", "currentMetrics", "recentOptimizations"} <= set(body)
    assert {"strategies", "sources"} <= set(body)
    assert set(body["performance"]) == SPEC_PERFORMANCE
    assert set(body["currentMetrics"]) == SPEC_CURRENT
    cur = body["currentMetrics"]
    assert 0.0 <= cur["memoryUsage"] <= 1.0
    assert 0.0 <= cur["cpuUsage"] <= 1.0
    assert len(cur["systemLoad"]) == 3
    assert cur["responseTime"] > 0  # milliseconds of a real probe
    assert cur["uptime"] >= 0
    assert cur["errorRate"] == 0.0
    assert body["performance"]["isEnabled"] is True
    assert body["performance"]["optimizationCount"] == 0
    assert body["performance"]["lastOptimization"] is None
    assert body["recentOptimizations"] == []
    assert body["sources"]["database"]["up"] is True
    assert body["sources"]["probe"]["up"] is True
    assert "database" in body["strategies"]
    assert isinstance(body["workerId"], int)
    assert body["timestamp"].endswith("Z")


async def test_optimize_requires_a_token(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Writes without a token, with a wrong one or one of another length get 401 in the error shape."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer " + "x" * len(daemon.token)},
            {"Authorization": "Basic " + daemon.token},
        ):
            for path in ("/performance-optimize", "/strategies/database/reset", "/strategies/database/mode"):
                async with http.post(path, json={"mode": "observe"}, headers=headers) as resp:
                    assert resp.status == 401, (path, headers)
                    body = await resp.json()
                    assert body["error"]["code"] == "unauthorized"
                    assert daemon.token not in await resp.text()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"strategy": 7}', "invalid_body"),
        (b'{"strategy": "nope"}', "unknown_strategy"),
        (b'{"dryRun": "yes"}', "invalid_body"),
        (b'{"extra": 1}', "invalid_body"),
    ],
)
async def test_optimize_rejects_bad_bodies(testbed: TestbedProcess, tmp_path: Path, payload: bytes, code: str) -> None:
    """Malformed or wrong bodies get 400 with a code naming what was wrong."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        headers = {**auth(daemon), "Content-Type": "application/json"}
        async with http.post("/performance-optimize", data=payload, headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == code


async def test_optimize_answers_the_specification_shape(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A valid POST runs a round and answers message, worker, timestamp and runId."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        async with http.post(
            "/performance-optimize", json={"strategy": "database", "dryRun": True}, headers=auth(daemon)
        ) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert {"message", "worker", "timestamp", "runId"} <= set(body)
        assert body["joined"] is False
        async with http.post("/performance-optimize", headers=auth(daemon)) as resp:
            assert resp.status == 200
        async with http.get("/optimizations") as resp:
            items = (await resp.json())["items"]
        assert items and items[0]["runId"] == body["runId"] and items[0]["trigger"] == "manual"
        assert items[0]["mode"] == "dry_run"


async def test_concurrent_requests_join_one_round(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Requests arriving while a round runs join it: one run id for all of them."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        rounds_before = daemon.engine.rounds_run

        async def post() -> dict[str, object]:
            async with http.post("/performance-optimize", json={}, headers=auth(daemon)) as resp:
                assert resp.status == 200
                return dict(await resp.json())

        answers = await asyncio.gather(*(post() for _ in range(50)))
    run_ids = {a["runId"] for a in answers}
    rounds = daemon.engine.rounds_run - rounds_before
    assert rounds == len(run_ids)
    assert rounds < 50
    assert sum(1 for a in answers if a["joined"]) == 50 - rounds


async def test_metrics_endpoint_serves_the_registry(testbed: TestbedProcess, tmp_path: Path) -> None:
    """GET /metrics is Prometheus text with the daemon's own families and source_up per source."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        samples_before = daemon.metrics.samples._value.get()
        async with http.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        # a scrape never samples
        assert daemon.metrics.samples._value.get() == samples_before
    assert 'cctv_optimizer_source_up{source="database"} 1.0' in text
    assert "cctv_optimizer_sqlite_wal_bytes" in text
    assert f'cctv_optimizer_build_info{{version="{__version__}"}} 1.0' in text
    assert "cctv_optimizer_backend_response_time_seconds_bucket" in text


async def test_health_errors_and_history_paging(testbed: TestbedProcess, tmp_path: Path) -> None:
    """/health is 200 while fresh; unknown paths and methods answer JSON errors; history pages by id."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        async with http.get("/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
        async with http.get("/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        async with http.delete("/performance-metrics") as resp:
            assert resp.status == 405
            assert (await resp.json())["error"]["code"] == "method_not_allowed"
        async with http.get("/optimizations?after=x") as resp:
            assert resp.status == 400
        for _ in range(3):
            await daemon.engine.request_round(trigger="manual", strategy="database", manual=True, dry_run=True)
        async with http.get("/optimizations?after=0&limit=2") as resp:
            page = await resp.json()
        assert [i["id"] for i in page["items"]] == [1, 2]
        async with http.get(f"/optimizations?after={page['last']}") as resp:
            rest = await resp.json()
        assert [i["id"] for i in rest["items"]] == [3]
        daemon.state = daemon.state.STOPPING
        async with http.get("/health") as resp:
            assert resp.status == 503
            assert "stopping" in (await resp.json())["reason"]
        daemon.state = daemon.state.RUNNING


async def test_strategy_mode_and_reset(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Modes change at run time; reset re-arms a strategy; unknown names and modes are refused."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        async with http.post("/strategies/database/mode", json={"mode": "observe"}, headers=auth(daemon)) as resp:
            assert resp.status == 200
            assert (await resp.json())["mode"] == "observe"
        async with http.post("/strategies/database/mode", json={"mode": "loud"}, headers=auth(daemon)) as resp:
            assert resp.status == 400
        async with http.post("/strategies/nope/reset", headers=auth(daemon)) as resp:
            assert resp.status == 404
        rt = daemon.engine.runtimes["database"]
        rt.breaker_open = True
        async with http.post("/strategies/database/reset", headers=auth(daemon)) as resp:
            assert resp.status == 200
            assert (await resp.json())["breakerOpen"] is False
        async with http.get("/strategies") as resp:
            body = await resp.json()
        view = next(s for s in body["strategies"] if s["name"] == "database")
        assert view["mode"] == "observe" and view["modeOverride"] == "observe"


async def test_oversized_body_is_refused(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Bodies above client_max_size get 413 in the error shape."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        big = b'{"strategy": "' + b"a" * (daemon.settings.api.client_max_size + 10) + b'"}'
        async with http.post("/performance-optimize", data=big, headers=auth(daemon)) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "body_too_large"


def test_routes_cover_the_design() -> None:
    """Every endpoint the README lists under the HTTP API is routed."""
    routed = {(m, p) for m, p, _ in ROUTES}
    for pair in [
        ("GET", "/performance-metrics"),
        ("POST", "/performance-optimize"),
        ("GET", "/metrics"),
        ("GET", "/health"),
        ("GET", "/strategies"),
        ("POST", "/strategies/{name}/mode"),
        ("POST", "/strategies/{name}/reset"),
        ("GET", "/optimizations"),
        ("POST", "/alertmanager"),
    ]:
        assert pair in routed


async def test_client_session_is_usable_with_no_backend(tmp_path: Path) -> None:
    """With the backend down the daemon still starts and serves; sources say why they are down."""
    env = {
        "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "s"),
        "CCTV_OPTIMIZER_BACKEND__URL": "http://127.0.0.1:9",
        "CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL": "http://127.0.0.1:9",
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(tmp_path / "no-hls"),
        "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
        "CCTV_OPTIMIZER_BACKEND__TIMEOUT_SECONDS": "1",
    }
    async with running_daemon(env) as daemon:
        async with ClientSession() as http, http.get(f"http://127.0.0.1:{daemon.api_port}/performance-metrics") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["sources"]["host"]["up"] is True
    # the probe ran, but the backend did not answer: the source is down and says why
    assert body["sources"]["probe"]["up"] is False
    assert body["sources"]["probe"]["error"] == "/health failed: ClientConnectorError"
    assert body["currentMetrics"]["errorRate"] == 1.0
    assert body["sources"]["hls"]["up"] is False
    assert "does not exist" in body["sources"]["hls"]["error"]
    assert body["sources"]["mediamtx"]["up"] is False


async def test_a_change_shows_at_the_next_scrape_without_a_new_sample(testbed: TestbedProcess, tmp_path: Path) -> None:
    """/metrics is rendered once per change, and never stale: a round's counters show at once, same snapshot."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 1)

        async def rounds() -> float:
            async with http.get("/metrics") as resp:
                families = text_string_to_metric_families(await resp.text())
            counts = [s.value for f in families for s in f.samples if s.name == "cctv_optimizer_rounds_total"]
            return sum(counts)

        before = await rounds()
        seq = daemon.engine.latest.seq if daemon.engine.latest is not None else None
        for n in range(1, 3):
            await daemon.engine.request_round(trigger="scheduled")
            assert await rounds() == before + n
        # no sample was taken in between: the snapshot's part was reused, the daemon's own was not
        assert daemon.engine.latest is not None and daemon.engine.latest.seq == seq


async def test_head_answers_wherever_get_does(testbed: TestbedProcess, tmp_path: Path) -> None:
    """HEAD on every GET route gives GET's status and content type, and no body (it was 405 on /)."""
    async with running_daemon(daemon_env(testbed, tmp_path / "s")) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 1)
        for method, path, _ in ROUTES:
            if method != "GET":
                continue
            async with http.get(path) as got:
                await got.read()
            async with http.head(path) as head:
                body = await head.read()
            assert (head.status, head.content_type) == (got.status, got.content_type), path
            assert body == b"", path


async def test_samples_return_the_recent_window_of_each_signal(testbed: TestbedProcess, tmp_path: Path) -> None:
    """GET /samples: the window's points per signal in wall-clock ms, with label and unit; since= pages; bounded."""
    env = daemon_env(testbed, tmp_path / "s", CCTV_OPTIMIZER_SAMPLER__WINDOW_SIZE="10")
    async with running_daemon(env) as daemon, api_client(daemon) as http:
        await sample_times(daemon, 12)
        async with http.get("/samples") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["windowSamples"] == 10
        series = {s["signal"]: s for s in body["signals"]}
        assert list(series) == ["cpu_ratio", "memory_used_ratio", "tcp_established", "response_time_seconds"]
        cpu = series["cpu_ratio"]
        assert (cpu["label"], cpu["unit"]) == ("Host CPU", "ratio")
        assert series["response_time_seconds"]["unit"] == "seconds"
        # bounded by the window: ten samples of twelve, oldest first, stamped near the daemon's wall clock
        assert len(cpu["points"]) == 10
        times = [t for t, _ in cpu["points"]]
        assert times == sorted(times) and abs(times[-1] - daemon.clock.wall() * 1000) < 60_000
        assert all(0.0 <= v <= 1.0 for _, v in cpu["points"])
        async with http.get(f"/samples?signals=wal_bytes,cpu_ratio&since={times[-3]}") as resp:
            newer = await resp.json()
        named = {s["signal"]: s for s in newer["signals"]}
        assert [t for t, _ in named["cpu_ratio"]["points"]] == times[-2:]
        assert named["wal_bytes"]["unit"] == "bytes" and named["wal_bytes"]["label"] == "Database WAL size"
        too_many = ",".join(["cpu_ratio"] * 17)
        for query in ("signals=Bad Name", f"signals={too_many}", "since=-1", "since=soon"):
            async with http.get(f"/samples?{query}") as resp:
                assert resp.status == 400, query
                assert (await resp.json())["error"]["code"] == "invalid_query"
