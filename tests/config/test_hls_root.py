"""The HLS root rules (config/safety.py): where the prune may delete, checked at start, reload and check-config."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from config.errors import ConfigError
from config.loader import load_settings
from config.safety import filesystem_of, hls_root_problems
from optimizer.cli import check_config
from testbed.harness import TestbedProcess
from tests.harness import ROOT, daemon_process

NORMAL = Path("/dev/shm/mediamtx-live")


def backend_tree(tmp_path: Path) -> Path:
    """A backend installation like production's: ``backend/data/cctv.db`` (the file's content does not matter)."""
    data = tmp_path / "opt" / "rafnet-cctv" / "backend" / "data"
    data.mkdir(parents=True)
    (data / "cctv.db").write_bytes(b"")
    return data / "cctv.db"


def refused(env: dict[str, str]) -> str:
    """The problems load_settings reports for the HLS directory (fails when it accepts the configuration)."""
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    lines = [str(p) for p in err.value.problems if p.path == "backend.hls_directory"]
    assert lines, str(err.value)
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("root", "why"),
    [
        ("/var/lib", "/var/lib is the system directory /var/lib"),
        ("/etc/ssl", "/etc/ssl lies inside the system directory /etc"),
        ("/opt/rafnet-cctv", "/opt/rafnet-cctv is /opt/rafnet-cctv, far too broad"),
        ("/home/operator", "/home/operator is /home/operator, far too broad"),
        ("/usr/local", "/usr/local lies inside the system directory /usr"),
        ("/srv", "/srv is /srv, far too broad"),
        ("/dev/shm/../../var/lib", "/dev/shm/../../var/lib (resolves to /var/lib) is the system directory /var/lib"),
        ("/dev/shm", "/dev/shm is /dev/shm, far too broad"),
        ("/dev/disk", "/dev/disk lies inside the system directory /dev"),
        ("/", "/ is /, far too broad"),
        ("/root/hls", "/root/hls lies inside the system directory /root"),
    ],
)
def test_system_and_broad_directories_are_refused(tmp_path: Path, root: str, why: str) -> None:
    """Each example of the issue is refused with the reason, even with disk roots allowed."""
    env = {
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": root,
        "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
    }
    assert why in refused(env)


def test_the_backend_data_directory_its_parent_and_inside_it_are_refused(tmp_path: Path) -> None:
    """The parent of the backend's data directory (the case that wiped cctv.db), the directory, and inside it."""
    database = backend_tree(tmp_path)
    data = database.parent
    for root, how in ((data.parent, "contains"), (data, "is"), (data / "hls", "lies inside")):
        env = {
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
            "CCTV_OPTIMIZER_BACKEND__DATABASE": str(database),
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(root),
            "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
        }
        assert f"{root} {how} the backend database's directory {data}" in refused(env)


def test_a_link_to_the_data_directory_is_resolved_and_refused(tmp_path: Path) -> None:
    """A root that is a symbolic link (or runs through one) is judged by where it leads."""
    database = backend_tree(tmp_path)
    link = tmp_path / "hls-link"
    link.symlink_to(database.parent.parent)
    env = {
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        "CCTV_OPTIMIZER_BACKEND__DATABASE": str(database),
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(link),
        "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
    }
    assert f"{link} (resolves to {database.parent.parent}) contains the backend database's directory" in refused(env)


@pytest.mark.parametrize("where", ["is", "contains", "lies inside"])
def test_the_state_directory_is_refused(tmp_path: Path, where: str) -> None:
    """The daemon's own state: the root may not be it, contain it, or lie inside it."""
    state = tmp_path / "state"
    root = {"is": state, "contains": tmp_path, "lies inside": state / "hls"}[where]
    env = {
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(state),
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(root),
        "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
    }
    assert f"{root} {where} the state directory {state}" in refused(env)


def test_the_daemons_own_installation_is_refused(tmp_path: Path) -> None:
    """The directory holding the daemon's packages and its virtualenv are never a root, nor inside one."""
    venv = Path(os.path.realpath(sys.prefix))
    for root in (ROOT, ROOT / "config", venv):
        env = {
            "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(root),
            "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
        }
        assert "the daemon's own installation" in refused(env)


def test_a_directory_on_disk_needs_the_explicit_allowance(tmp_path: Path) -> None:
    """A root that is not on a RAM file system is refused unless backend.hls_allow_disk says so."""
    root = tmp_path / "hls"
    kind = filesystem_of(Path(os.path.realpath(root)))
    if kind in ("tmpfs", "ramfs"):
        pytest.skip("the test's temporary directory is itself on a tmpfs here")
    env = {
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(root),
    }
    assert f"is on {kind}, not in RAM (tmpfs)" in refused(env)
    allowed = load_settings({**env, "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true"}).settings.backend
    assert allowed.hls_directory == root and allowed.hls_allow_disk is True


def test_mediamtx_own_directory_in_ram_is_accepted(tmp_path: Path) -> None:
    """/dev/shm/mediamtx-live (MediaMTX's usual hlsDirectory, on tmpfs) is accepted as it is."""
    if filesystem_of(Path("/dev/shm")) != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs on this machine")
    database = backend_tree(tmp_path)
    problems = hls_root_problems(NORMAL, database=database, state_directory=tmp_path / "state", allow_disk=False)
    assert problems == []
    env = {
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        "CCTV_OPTIMIZER_BACKEND__DATABASE": str(database),
    }
    assert load_settings(env).settings.backend.hls_directory == NORMAL


def test_check_config_exits_78_naming_the_rule(tmp_path: Path) -> None:
    """check-config refuses a dangerous root with exit 78 and the reason, in process and as the real command."""
    database = backend_tree(tmp_path)
    env = {
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
        "CCTV_OPTIMIZER_BACKEND__DATABASE": str(database),
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": str(database.parent.parent),
        "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK": "true",
    }
    out = io.StringIO()
    assert check_config(None, env, out) == 78
    assert "contains the backend database's directory" in out.getvalue()
    for root in ("/var/lib", "/dev/shm/../../var/lib"):
        proc = subprocess.run(
            [sys.executable, "-m", "optimizer.cli", "check-config"],
            env={**os.environ, "PYTHONPATH": str(ROOT), **env, "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY": root},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 78
        assert "is the system directory /var/lib" in proc.stdout
        assert "Traceback" not in proc.stdout + proc.stderr


def test_sighup_with_a_dangerous_root_keeps_the_old_configuration(testbed: TestbedProcess, tmp_path: Path) -> None:
    """A reload that points the HLS root at the backend's data directory is refused: logged, old config kept."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cpu_threshold: 0.85\n")
    env = {
        **testbed.env,
        "CCTV_OPTIMIZER_API__LISTEN": "127.0.0.1:0",
        "CCTV_OPTIMIZER_STATE__DIRECTORY": str(tmp_path / "state"),
    }
    env.pop("CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY")  # from the file below, so that a reload can change it
    cfg.write_text(f"backend:\n  hls_directory: {testbed.hls_dir}\n")
    with daemon_process(env, "--config", str(cfg)) as d:
        d.wait_event("daemon_started")
        cfg.write_text(f"backend:\n  hls_directory: {testbed.database.parent.parent}\n")
        d.proc.send_signal(signal.SIGHUP)
        failed = d.wait_event("config_reload_failed")
        assert any("contains the backend database's directory" in p for p in failed["problems"])
        assert failed["kept"] == "previous configuration"
        assert d.stop() == 0
    assert not any('"config_reloaded"' in line for line in d.raw)
