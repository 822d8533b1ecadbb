"""Reloading the configuration (SIGHUP): what cannot change at run time keeps its running value until a restart,
says so in the log, /health, /performance-metrics and ``cctv-optimizer status``; what a strategy learned while
running (the once-a-day restart guard) survives the rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import structlog
from aiohttp import ClientSession

from metrics.sources import DatabaseSource
from optimizer.app import Daemon
from optimizer.cli import Client, cmd_status
from testbed.harness import TestbedProcess
from tests.harness import api_base, daemon_env, running_daemon, sample_times

STUCK = 5


def stuck_count(database: Path) -> int:
    """Active sessions without a heartbeat for 10 minutes, read-only."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            conn.execute(
                "SELECT count(*) FROM viewer_sessions WHERE is_active = 1"
                " AND last_heartbeat < datetime('now', '+7 hours', '-300 seconds')"
            ).fetchone()[0]
        )
    finally:
        conn.close()


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of the live database (SQLite's online backup)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


async def reload_with(daemon: Daemon, config: Path, text: str) -> None:
    """Write the configuration file and reload as SIGHUP does."""
    await asyncio.to_thread(config.write_text, text)
    await daemon._reload()  # what the SIGHUP handler runs


async def test_a_new_database_at_reload_is_kept_for_a_restart_and_nothing_is_written_to_it(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """SIGHUP naming another backend.database: sampler and strategies stay on the running one (the stuck sessions
    are ended there, none in the other file), with a warning and restartNeeded in /health, /performance-metrics and
    `status`; a reload that puts the old value back clears it."""
    testbed.scenario("stuck_sessions", count=STUCK, age_seconds=900)
    other = tmp_path / "elsewhere" / "cctv.db"
    copy_database(testbed.database, other)
    config = tmp_path / "c.yaml"
    env = daemon_env(testbed, tmp_path / "state", CCTV_OPTIMIZER_CONFIG=str(config))
    # from the file, so that a reload can change them (the environment wins over the file)
    first = f"backend:\n  database: {env.pop('CCTV_OPTIMIZER_BACKEND__DATABASE')}\n  url: {env.pop('CCTV_OPTIMIZER_BACKEND__URL')}\n"
    config.write_text(first)
    with structlog.testing.capture_logs() as logs:
        async with running_daemon(env, config_file=config) as daemon:
            await reload_with(daemon, config, f"backend:\n  database: {other}\n  url: http://127.0.0.1:9\n")
            await sample_times(daemon, 3)
            result = await daemon.engine.request_round(trigger="manual", strategy="connection", manual=True)
            async with ClientSession(base_url=api_base(daemon)) as http:
                async with http.get("/health") as resp:
                    health = await resp.json()
                async with http.get("/performance-metrics") as resp:
                    metrics = await resp.json()
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                await asyncio.to_thread(cmd_status, Client(api_base(daemon), None), False)
            running = (daemon.settings.backend.database, daemon.sampler.sources.find(DatabaseSource))
            outcomes = [r.outcome for r in map(daemon.store.decision, result.decision_ids) if r is not None]
            await reload_with(daemon, config, first)
            cleared = daemon.status().get("restartNeeded")
    assert stuck_count(other) == STUCK  # before the fix: the strategy ended them here, in the wrong database
    assert stuck_count(testbed.database) == 0
    assert running[0] == testbed.database and running[1] is not None and running[1].reader.path == testbed.database
    assert outcomes == ["applied"]
    assert health["restartNeeded"] == ["backend.url", "backend.database"]
    assert metrics["restartNeeded"] == ["backend.url", "backend.database"]
    assert "restart needed: backend.url, backend.database changed" in out.getvalue()
    warning = next(e for e in logs if e["event"] == "config_restart_needed")
    assert warning["log_level"] == "warning" and warning["settings"] == ["backend.url", "backend.database"]
    assert cleared == []


async def test_a_new_listen_address_at_reload_keeps_the_api_where_it_is(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A reload naming another api.listen: the API keeps answering where it listens, and a restart is asked for."""
    config = tmp_path / "c.yaml"
    config.write_text("cpu_threshold: 0.9\n")
    env = daemon_env(testbed, tmp_path / "state", CCTV_OPTIMIZER_CONFIG=str(config))
    env.pop("CCTV_OPTIMIZER_API__LISTEN")
    config.write_text("api:\n  listen: 127.0.0.1:0\n")
    async with running_daemon(env, config_file=config) as daemon:
        port = daemon.api_port
        await reload_with(daemon, config, "api:\n  listen: 127.0.0.1:1\n")
        async with ClientSession(base_url=api_base(daemon)) as http, http.get("/health") as resp:
            health = await resp.json()
        assert daemon.settings.api.listen == "127.0.0.1:0" and daemon.api_port == port
    assert resp.status == 200 and health["restartNeeded"] == ["api.listen"]


@contextlib.contextmanager
def fake_backend(pid_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A process standing in for the backend (40 MiB resident), its PID in ``pid_file``, reaped when it ends."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "x = b'\\1' * (40 * 1024 * 1024); print('ready', flush=True); import time; time.sleep(120)",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # its memory is resident now
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped at once, so its exit is seen as an exit
    pid_file.write_text(f"{proc.pid}\n")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


async def test_the_once_a_day_restart_guard_survives_a_reload(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A backend restart, then a reload, then the backend over its limit again: no second restart within
    restart_min_interval_seconds (the reload used to forget the first)."""
    pid_file = tmp_path / "backend.pid"
    config = tmp_path / "c.yaml"
    config.write_text("cpu_threshold: 0.9\n")
    env = daemon_env(
        testbed,
        tmp_path / "state",
        CCTV_OPTIMIZER_CONFIG=str(config),
        CCTV_OPTIMIZER_BACKEND__PROCESS=f"pid:{pid_file}",
        CCTV_OPTIMIZER_ENGINE__ALLOW_DISRUPTIVE="true",
        CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS="0",
        ENABLE_GC="false",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__BACKEND_RSS_LIMIT_BYTES=str(16 * 1024 * 1024),
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__RESTART_COMMAND=f"sh -c 'kill $(cat {pid_file})'",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__RESTART_QUIET_MAX_VIEWERS="1000000",
        CCTV_OPTIMIZER_STRATEGIES__MEMORY__RESTART_MIN_INTERVAL_SECONDS="3600",
    )
    async with running_daemon(env, config_file=config) as daemon:
        with fake_backend(pid_file) as first:
            await sample_times(daemon, 3)
            restarted = await daemon.engine.request_round(trigger="manual", strategy="memory", manual=True)
            first_row = daemon.store.decision(restarted.decision_ids[0])
            await asyncio.to_thread(first.wait, 10)
        with fake_backend(pid_file) as second:
            await reload_with(daemon, config, "cpu_threshold: 0.85\n")
            await sample_times(daemon, 3)
            again = await daemon.engine.request_round(trigger="manual", strategy="memory", manual=True)
            second_alive = second.poll() is None
            deferred = daemon.engine.findings.get("memory-restart-deferred")
            outcomes = [r.outcome for r in map(daemon.store.decision, again.decision_ids) if r is not None]
    assert first_row is not None and (first_row.action, first_row.outcome) == ("backend_restart", "applied")
    assert second_alive  # before the fix: restarted again right after the reload
    assert outcomes == ["nothing_to_do"]
    assert deferred is not None and "the last restart was" in deferred.summary


async def test_a_reload_closes_the_instances_it_replaces_and_keeps_the_safety_state(
    testbed: TestbedProcess, tmp_path: Path
) -> None:
    """A reload rebuilds every strategy on its new options and closes each instance it replaces (their HTTP
    sessions and connections used to leak); the cooldowns, budgets, breaker and score live on and stay."""
    config = tmp_path / "c.yaml"
    config.write_text("strategies:\n  database:\n    wal_limit_bytes: 1048576\n")
    env = daemon_env(testbed, tmp_path / "state", CCTV_OPTIMIZER_CONFIG=str(config))
    async with running_daemon(env, config_file=config) as daemon:
        old = {name: rt.strategy for name, rt in daemon.engine.runtimes.items()}
        closed: list[str] = []
        for name, strategy in old.items():

            async def close(name: str = name) -> None:
                closed.append(name)

            strategy.close = close  # type: ignore[method-assign]  # count the closes of these instances
        cpu = daemon.engine.runtimes["cpu"]
        cpu.breaker_open, cpu.breaker_reason = True, "3 consecutive failures (last: permission denied)"
        await reload_with(daemon, config, "strategies:\n  database:\n    wal_limit_bytes: 2097152\n")
        runtimes = daemon.engine.runtimes
        replaced = [name for name, rt in runtimes.items() if rt.strategy is not old[name]]
        enter = {spec.enter for spec in runtimes["database"].strategy.triggers({})}
        assert 2 * 1024 * 1024 in enter and 1024 * 1024 not in enter  # the new instance has the new option
        assert runtimes["cpu"].breaker_open
    assert sorted(replaced) == sorted(old)
    assert sorted(closed) == sorted(old)  # before the fix: none of them was closed
