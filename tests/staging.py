"""Staged installs for the tests and the walk-through: build the wheel, ``install.sh --root DIR``, borrow deps.

Everything happens offline: the wheel is built with the test environment's build backend, installed with
``--no-deps --no-index``, and the staged virtualenv then borrows the test environment's dependencies through
a ``.pth`` file (the package itself still comes from the staged virtualenv: a path added by a ``.pth`` file is
searched after the virtualenv's own site-packages, and its own ``.pth`` files are not processed).
"""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "systemd" / "install.sh"


def clean_env() -> dict[str, str]:
    """This process's environment without what would leak the test venv (or a daemon setting) into a child."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"} and not k.startswith("CCTV_OPTIMIZER_")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def can_build_wheel() -> str | None:
    """Why the wheel cannot be built offline here, or None."""
    if importlib.util.find_spec("hatchling") is None:
        return "hatchling is not installed in the test environment, so the wheel cannot be built offline"
    return None


def build_wheel(out: Path) -> Path:
    """The project built as a wheel into ``out``, offline, with the running environment's build backend."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--wheel-dir",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        env=clean_env(),
        capture_output=True,
    )
    (built,) = out.glob("cctv_optimizer-*.whl")
    return built


@dataclass(frozen=True, slots=True, kw_only=True)
class Staged:
    """Where ``install.sh --root`` put things."""

    root: Path
    prefix: Path
    etc: Path
    unit_dir: Path
    output: str

    @property
    def command(self) -> Path:
        """The installed ``cctv-optimizer`` console script."""
        return self.prefix / "venv" / "bin" / "cctv-optimizer"

    @property
    def unit(self) -> Path:
        """The installed unit file."""
        return self.unit_dir / "cctv-optimizer.service"


def run_install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run install.sh with ``args`` (clean_env() unless ``env``); never raises on a non-zero exit."""
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=clean_env() if env is None else env,
        stdin=subprocess.DEVNULL,
    )


def staging_args(root: Path, wheel: Path) -> tuple[str, ...]:
    """install.sh's arguments for an offline install of the wheel staged into ``root``."""
    return ("--root", str(root), f"--source={wheel}", "--python", sys.executable, "--pip-args", "--no-deps --no-index")


def stage_install(root: Path, wheel: Path, *, borrow: bool = True, env: dict[str, str] | None = None) -> Staged:
    """``install.sh --root ROOT`` from the wheel; with ``borrow`` the staged venv can also run (see the module)."""
    proc = run_install(*staging_args(root, wheel), env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"install.sh --root {root} failed:\n{proc.stdout}\n{proc.stderr}")
    staged = Staged(
        root=root,
        prefix=root / "opt" / "cctv-optimizer",
        etc=root / "etc" / "cctv-optimizer",
        unit_dir=root / "etc" / "systemd" / "system",
        output=proc.stdout,
    )
    if borrow:
        borrow_dependencies(staged.prefix / "venv")
    return staged


def borrow_dependencies(venv: Path) -> None:
    """Let a virtualenv installed with --no-deps import this environment's dependencies."""
    (target,) = (venv / "lib").glob("python3*/site-packages")
    (target / "zz-borrowed-test-dependencies.pth").write_text(
        "".join(f"{path}\n" for path in site.getsitepackages()), encoding="utf-8"
    )
