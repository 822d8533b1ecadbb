"""The backend tree walk through the kernel's children lists agrees with psutil's full /proc scan."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from metrics.process import ProcessReader, ProcessSpec
from testbed.harness import wait_until

# a parent whose child starts a grandchild: the walk must go below the first level
TREE = (
    "import subprocess, sys, time\n"
    "leaf = 'import time; time.sleep(120)'\n"
    "mid = 'import subprocess, sys, time; subprocess.Popen([sys.executable, \"-c\", %r]); time.sleep(120)' % leaf\n"
    "subprocess.Popen([sys.executable, '-c', mid])\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def tree() -> Iterator[psutil.Process]:
    """A three-level process tree, killed (all of it) at the end."""
    parent = subprocess.Popen([sys.executable, "-c", TREE])
    process = psutil.Process(parent.pid)
    descendants: list[psutil.Process] = []
    try:
        wait_until(lambda: len(process.children(recursive=True)) == 2, timeout=30)
        descendants = process.children(recursive=True)
        yield process
    finally:
        for proc in [*descendants, process]:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                continue
        parent.wait(timeout=10)
        psutil.wait_procs(descendants, timeout=10)


@pytest.mark.skipif(
    not Path(f"/proc/{psutil.Process().pid}/task/{psutil.Process().pid}/children").exists(),
    reason="the kernel offers no per-thread children lists",
)
def test_kernel_walk_counts_every_descendant_like_psutil(tree: psutil.Process, tmp_path: Path) -> None:
    """Children and grandchildren are counted and their RSS added, as psutil's children(recursive=True) finds them."""
    descendants = tree.children(recursive=True)
    expected_rss = sum(p.memory_info().rss for p in descendants)
    walked = ProcessReader._tree_rss(tree.pid)
    assert walked is not None
    count, rss = walked
    assert count == len(descendants) == 2
    assert rss == pytest.approx(expected_rss, rel=0.2)
    pid_file = tmp_path / "tree.pid"
    pid_file.write_text(f"{tree.pid}\n")
    sample = ProcessReader(ProcessSpec(kind="pid", value=str(pid_file))).read(1.0)
    assert sample.children == 2
    assert sample.tree_rss_bytes == pytest.approx(sample.rss_bytes + expected_rss, rel=0.2)


def test_kernel_walk_of_a_gone_process_is_none() -> None:
    """A PID that no longer exists has no tree: the reader falls back to psutil, which reports it gone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    assert ProcessReader._tree_rss(gone.pid) is None
