"""Tests for systemd/install.sh, staged with --root into temporary directories without touching users or systemd."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.staging import clean_env, run_install, stage_install, staging_args

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "systemd" / "install.sh"
UNIT = REPO / "systemd" / "cctv-optimizer.service"
ENV_EXAMPLE = REPO / "systemd" / "cctv-optimizer.env.example"


@dataclass(frozen=True, slots=True, kw_only=True)
class Install:
    """Where one install.sh run put things, and the arguments that reproduce it."""

    root: Path
    prefix: Path
    etc: Path
    unit_dir: Path
    args: tuple[str, ...]


def staged_paths(root: Path) -> tuple[Path, Path, Path]:
    """(prefix, etc, unit directory) of an install staged with --root."""
    return root / "opt" / "cctv-optimizer", root / "etc" / "cctv-optimizer", root / "etc" / "systemd" / "system"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Install:
    """One install staged into a temporary root; deps come from nowhere (--no-deps) so it needs no network."""
    root = tmp_path_factory.mktemp("install")
    prefix, etc, unit_dir = staged_paths(root)
    args = staging_args(root, wheel)
    proc = run_install(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Install(root=root, prefix=prefix, etc=etc, unit_dir=unit_dir, args=args)


def tree_state(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under ``root`` with its mode, mtime and content hash (or link target)."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            digest = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest = ""
        state[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, digest)
    return state


def test_console_script_in_venv(installed: Install) -> None:
    """The virtualenv gets the cctv-optimizer console script, run by the venv's own interpreter."""
    script = installed.prefix / "venv" / "bin" / "cctv-optimizer"
    assert os.access(script, os.X_OK)
    assert script.read_text().splitlines()[0] == f"#!{installed.prefix}/venv/bin/python"
    assert "from optimizer.cli import entry" in script.read_text()
    probe = subprocess.run(
        [str(installed.prefix / "venv" / "bin" / "python"), "-c", "import optimizer.sdnotify as m; print(m.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=clean_env(),
        cwd=installed.root,
    )
    assert Path(probe.stdout.strip()).is_relative_to(installed.prefix / "venv")


def test_unit_points_at_prefix_and_etc(installed: Install) -> None:
    """The installed unit differs from the shipped one only in ExecStart and the two /etc paths."""
    shipped = UNIT.read_text().splitlines()
    unit = (installed.unit_dir / "cctv-optimizer.service").read_text().splitlines()
    changed = [(a, b) for a, b in zip(shipped, unit, strict=True) if a != b]
    assert changed == [
        (
            "ExecStart=/opt/cctv-optimizer/venv/bin/cctv-optimizer run",
            f"ExecStart={installed.prefix}/venv/bin/cctv-optimizer run",
        ),
        ("EnvironmentFile=-/etc/cctv-optimizer/env", f"EnvironmentFile=-{installed.etc}/env"),
        (
            "LoadCredential=api-token:/etc/cctv-optimizer/api-token",
            f"LoadCredential=api-token:{installed.etc}/api-token",
        ),
    ]
    assert stat.S_IMODE((installed.unit_dir / "cctv-optimizer.service").stat().st_mode) == 0o644


def test_api_token_generated(installed: Install) -> None:
    """A random 256-bit hex token is written with mode 0640."""
    token = installed.etc / "api-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o640
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())


def test_env_file_from_example(installed: Install) -> None:
    """The env file starts as the example (0640) and the example itself is installed beside it."""
    assert (installed.etc / "env").read_text() == ENV_EXAMPLE.read_text()
    assert stat.S_IMODE((installed.etc / "env").stat().st_mode) == 0o640
    assert (installed.etc / "env.example").read_text() == ENV_EXAMPLE.read_text()


def test_second_run_changes_nothing(installed: Install) -> None:
    """Running install.sh again leaves every file, mode and timestamp of the install as it was."""
    before = tree_state(installed.root)
    proc = run_install(*installed.args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert tree_state(installed.root) == before
    assert f"kept existing {installed.etc}/api-token" in proc.stdout


def test_operator_files_survive_and_example_is_refreshed(installed: Install) -> None:
    """An edited env file and a replaced token are kept; a missing env.example is put back."""
    env, token, example = installed.etc / "env", installed.etc / "api-token", installed.etc / "env.example"
    original_env, original_token = env.read_text(), token.read_text()
    try:
        env.write_text("LOG_LEVEL=debug\n")
        token.write_text("operator-chosen-token")
        example.unlink()
        proc = run_install(*installed.args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert env.read_text() == "LOG_LEVEL=debug\n"
        assert token.read_text() == "operator-chosen-token"
        assert example.read_text() == ENV_EXAMPLE.read_text()
    finally:
        env.write_text(original_env)
        token.write_text(original_token)


def test_missing_token_is_regenerated(installed: Install) -> None:
    """A deleted token is generated again, different from the old one and with mode 0640."""
    token = installed.etc / "api-token"
    old = token.read_text()
    token.unlink()
    proc = run_install(*installed.args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    new = token.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", new)
    assert new != old
    assert stat.S_IMODE(token.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--frobnicate",), "unknown argument: --frobnicate"),
        (("--prefix",), "--prefix needs a value"),
        (("--prefix", "relative/dir"), "--prefix must be an absolute path"),
        (("--etc", "/etc/with space"), "--etc must be an absolute path"),
        (("--unit-dir=/x|y",), "--unit-dir must be an absolute path"),
        (("--root", "relative/root"), "--root must be an absolute path"),
        (("--root",), "--root needs a value"),
        (("--source", "/nonexistent/src"), "--source must be the project directory or a .whl file"),
        (("--source", "/"), "has no pyproject.toml"),
        (("--python", "/nonexistent/python3"), "python interpreter not found"),
    ],
)
def test_bad_arguments_are_refused(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    """Bad arguments stop the script with a message naming the problem, before anything is written."""
    base = ("--no-user", "--no-systemctl", "--prefix", str(tmp_path / "p"), "--etc", str(tmp_path / "e"))
    proc = run_install(*base, "--unit-dir", str(tmp_path / "u"), *args)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_help() -> None:
    """--help prints the options and exits 0."""
    proc = run_install("--help")
    assert proc.returncode == 0
    for option in (
        "--root",
        "--prefix",
        "--etc",
        "--unit-dir",
        "--source",
        "--pip-args",
        "--no-user",
        "--no-systemctl",
    ):
        assert option in proc.stdout


def test_script_passes_shellcheck() -> None:
    """install.sh is clean under shellcheck, when shellcheck is installed."""
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    proc = subprocess.run([shellcheck, str(INSTALL)], capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, "")


HOST_TOOLS = ("useradd", "groupadd", "usermod", "systemctl", "chown", "chgrp")


def test_root_stages_everything_and_touches_nothing_on_the_host(wheel: Path, tmp_path: Path) -> None:
    """--root (run as whoever runs the tests, root here) creates no user, runs no systemctl or chown, writes no /etc."""
    shims, calls = tmp_path / "shims", tmp_path / "host-calls.log"
    shims.mkdir()
    for tool in HOST_TOOLS:
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\necho "{tool} $*" >>{calls}\nexit 0\n')
        shim.chmod(0o755)
    host_etc_before = Path("/etc/cctv-optimizer").exists()
    env = {**clean_env(), "PATH": f"{shims}:{os.environ['PATH']}"}
    staged = stage_install(tmp_path / "root", wheel, borrow=False, env=env)
    assert not calls.exists(), calls.read_text()
    assert Path("/etc/cctv-optimizer").exists() == host_etc_before
    for path in (
        staged.command,
        staged.etc / "env",
        staged.etc / "env.example",
        staged.etc / "api-token",
        staged.unit,
        staged.prefix / "venv" / "cctv-optimizer.install",
    ):
        assert path.is_file(), path
    assert f"staged in {staged.root}" in staged.output
    assert {p.name for p in staged.root.iterdir()} == {"opt", "etc"}


def test_install_record_names_the_staged_paths(installed: Install) -> None:
    """The record in the virtualenv says where the env file, unit and token went, for the installed command."""
    record = (installed.prefix / "venv" / "cctv-optimizer.install").read_text()
    assert f"ROOT={installed.root}\n" in record
    assert f"PREFIX={installed.prefix}\n" in record
    assert f"ETC={installed.etc}\n" in record
    assert f"UNIT_DIR={installed.unit_dir}\n" in record
