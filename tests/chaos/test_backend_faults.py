"""The backend misbehaving in every way the issue lists, with the daemon running against the testbed through a proxy."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from testbed.harness import TestbedProcess
from tests.chaos.faults import Mode, lost_rows, odd_backend, recover, report, row_ids, served, tracebacks
from tests.harness import daemon_env, running_daemon, sample_times

TIMEOUT_S = 0.5

# the reason each fault must give, as the probe source's error
REASONS = {
    Mode.REFUSED: "/health failed: ClientConnectorError",
    Mode.HANG: f"/health did not answer within {TIMEOUT_S} s",
    Mode.SLOW: f"/health did not answer within {TIMEOUT_S} s",
    Mode.ERROR_500: "/health answered 500",
    Mode.GARBAGE: "/health answered something that is not JSON",
    Mode.TRUNCATED: "/health failed: ClientPayloadError",
    Mode.HUGE: "/health answered more than 1048576 bytes",
}


@pytest.mark.parametrize("mode", list(REASONS), ids=[str(m) for m in REASONS])
async def test_backend_fault_is_reported_survived_and_recovered(
    testbed: TestbedProcess, tmp_path: Path, mode: Mode
) -> None:
    """Under each backend fault the API keeps answering, probe and cache go down with a reason, nothing is lost,
    no traceback is logged, and both come back once the backend behaves."""
    async with odd_backend(testbed.url, slow_seconds=TIMEOUT_S * 3) as odd:
        env = daemon_env(
            testbed,
            tmp_path / "state",
            CCTV_OPTIMIZER_BACKEND__URL=odd.url,
            CCTV_OPTIMIZER_BACKEND__TIMEOUT_SECONDS=str(TIMEOUT_S),
            CCTV_OPTIMIZER_SAMPLER__SOURCE_TIMEOUT_SECONDS="2",
        )
        state_db = tmp_path / "state" / "state.db"
        with structlog.testing.capture_logs() as logs:
            async with running_daemon(env) as daemon:
                await sample_times(daemon, 1)
                await daemon.engine.request_round(trigger="manual", manual=True)
                healthy = await served(daemon)
                assert healthy.source_up["probe"] == 1.0 and healthy.source_up["cache"] == 1.0
                rows_before = row_ids(state_db)

                await odd.set_mode(mode)
                snap = await daemon.sample_now()
                await daemon.engine.request_round(trigger="scheduled")
                during = await served(daemon)
                assert during.health_status == 200, during.health_reason
                assert during.metrics_status == 200
                assert during.source_up["probe"] == 0.0
                assert during.sources["probe"]["up"] is False
                assert during.sources["probe"]["error"].startswith(REASONS[mode])
                assert snap.probe is not None and snap.probe.available is False
                assert during.source_up["cache"] == 0.0 and during.sources["cache"]["error"]
                assert during.source_up["host"] == 1.0  # the other sources carry on
                assert during.source_up["database"] == 1.0

                await odd.set_mode(Mode.OK)
                back = await recover(daemon, "probe")
                cache_back = await recover(daemon, "cache")
                after = await served(daemon)
                assert after.source_up["probe"] == 1.0 and after.health_status == 200
                lost = lost_rows(rows_before, row_ids(state_db))
                assert lost == 0
        assert tracebacks(logs) == []
        down = [e for e in logs if e["event"] == "source_down" and e.get("source") == "probe"]
        assert down and down[0]["error"].startswith(REASONS[mode])
        assert any(e["event"] == "source_up" and e.get("source") == "probe" for e in logs)
        report(
            f"backend {mode}",
            fault_sample_seconds=snap.duration_seconds,
            recovery_samples=back.samples,
            recovery_seconds=back.seconds,
            cache_recovery_samples=cache_back.samples,
            health=during.health_status,
            rows_lost=lost,
        )
