"""The command line against a running daemon: status, history, strategies, optimize; --json; exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from optimizer.app import Daemon
from testbed.harness import TestbedProcess
from tests.harness import ROOT, api_base, daemon_env, running_daemon, sample_times


async def cli(daemon: Daemon | None, *args: str, url: str | None = None) -> tuple[int, str, str]:
    """Run ``cctv-optimizer ARGS`` as a process (the daemon keeps serving meanwhile)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if daemon is not None:
        env["CCTV_OPTIMIZER_STATE__DIRECTORY"] = str(daemon.settings.state_directory)
    command = args[0]
    rest = list(args[1:])
    target = url or (api_base(daemon) if daemon is not None else "http://127.0.0.1:9")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "optimizer.cli",
        command,
        "--url",
        target,
        *rest,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_history_strategies_optimize(testbed: TestbedProcess, tmp_path: Path) -> None:
    """Each command prints a human view and --json a machine one; optimize runs a round that history shows."""
    env = daemon_env(testbed, tmp_path / "state", CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES="2097152")
    async with running_daemon(env) as daemon:
        await sample_times(daemon, 1)
        code, out, _ = await cli(daemon, "status")
        assert code == 0
        assert "database" in out and "sources:" in out and "probe=up" in out
        code, out, _ = await cli(daemon, "status", "--json")
        assert code == 0 and json.loads(out)["currentMetrics"]["systemLoad"]

        testbed.scenario("wal_growth", mb=4)
        await sample_times(daemon, 1)
        code, out, _ = await cli(daemon, "optimize", "database")
        assert code == 0, out
        assert "Optimization round completed" in out and "applied" in out and "database.wal" in out

        code, out, _ = await cli(daemon, "history")
        assert code == 0 and "#1" in out and "applied" in out
        code, out, _ = await cli(daemon, "history", "--json")
        rows = [json.loads(line) for line in out.splitlines()]
        assert rows[0]["strategy"] == "database" and rows[0]["trigger"] == "manual"

        code, out, _ = await cli(daemon, "strategies", "describe", "database")
        assert code == 0 and "trigger wal_bytes" in out
        code, out, _ = await cli(daemon, "strategies", "mode", "database", "observe")
        assert code == 0 and "mode observe" in out
        assert daemon.engine.mode_of(daemon.engine.runtimes["database"]).value == "observe"
        daemon.engine.runtimes["database"].breaker_open = True
        code, out, _ = await cli(daemon, "strategies", "reset", "database")
        assert code == 0 and "breaker closed" in out
        assert daemon.engine.runtimes["database"].breaker_open is False

        code, _, err = await cli(daemon, "optimize", "nope")
        assert code == 1 and "unknown_strategy" in err
        code, _, err = await cli(daemon, "strategies", "describe", "nope")
        assert code == 1


async def test_unreachable_daemon_exit_code() -> None:
    """Talking to no daemon exits 3 with a clear message."""
    code, _, err = await cli(None, "status", url="http://127.0.0.1:9")
    assert code == 3
    assert "cannot reach the daemon" in err
    assert "Traceback" not in err


async def test_write_without_a_token_says_where_it_looked(tmp_path: Path) -> None:
    """A write with no readable token is refused before sending, listing each place looked and how to point it."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CCTV_OPTIMIZER_")},
        "PYTHONPATH": str(ROOT),
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "optimizer.cli",
        "optimize",
        "--no-env-file",
        "--url",
        "http://127.0.0.1:9",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 78, text
    assert "no API token found for writes; looked in:" in text
    assert "api.token_file: not set" in text
    assert (
        f"{tmp_path / 'state' / 'api-token'} (the token the daemon generates in its state directory): does not exist"
        in text
    )
    assert "--token-file FILE or CCTV_OPTIMIZER_API__TOKEN_FILE=FILE" in text
    assert "Traceback" not in text
