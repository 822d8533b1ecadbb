"""The memory strategy against the real backend: what can be checked without MediaMTX."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.contract.real import RealBackend
from tests.harness import running_daemon

pytestmark = pytest.mark.contract

ONLY_MEMORY = {
    "CCTV_OPTIMIZER_STRATEGIES__CPU__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CACHE__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__CONNECTION__ENABLED": "false",
    "CCTV_OPTIMIZER_STRATEGIES__DATABASE__ENABLED": "false",
}


def vm_rss(pid: int) -> int:
    """The process's resident set, from /proc, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_the_backend_process_is_the_one_that_listens(real: RealBackend, tmp_path: Path) -> None:
    """Found by its port, the measured process is the node server itself: its pid, its RSS (within a tenth of
    /proc's figure), its listening port; not a launcher of a few MB."""
    async with running_daemon(real.daemon_env(tmp_path / "state", **ONLY_MEMORY)) as daemon:
        snapshot = await daemon.sample_now()
    assert snapshot.backend is not None
    pid = real.pid()
    assert snapshot.backend.pid == pid
    assert real.port in snapshot.backend.listen_ports
    rss = vm_rss(pid)
    print(f"backend RSS: daemon {snapshot.backend.rss_bytes} B, /proc {rss} B")
    assert abs(snapshot.backend.rss_bytes - rss) <= rss / 10
    assert rss > 20 * 1024 * 1024


def test_hls_pruning_and_mediamtx_restarts(real: RealBackend) -> None:
    """HLS segments and MediaMTX: not checkable against this backend."""
    pytest.skip(
        "MediaMTX is not available with the real backend here (its stream routes answer 502): stale HLS segment "
        "pruning and MediaMTX restarts stay covered by the testbed (tests/integration/test_memory_strategy.py)"
    )
