"""Run processes as other users, with the unit's restrictions, without systemd (root only).

Each process starts as root in its own mount namespace (``unshare --mount``), where a small shell script
sets up what the unit would (the file system read-only except the writable paths, a private /tmp) and then
drops to the user with ``setpriv``: real uid/gid/groups, an umask, and optionally only CAP_SYS_NICE (ambient,
as ``AmbientCapabilities=CAP_SYS_NICE`` with ``CapabilityBoundingSet=CAP_SYS_NICE``). The kernel's permission
checks are therefore the real ones.

The interpreter and the virtualenv may live where other users cannot reach them (pyenv under /root, mode
0700): inside the namespace they are bind-mounted into the sandbox's own world-readable directory, and the
processes run that interpreter with the project and the virtualenv's packages on PYTHONPATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import ROOT

# API file systems stay as they are under ProtectSystem=strict (PrivateDevices= etc. are not rehearsed).
API_MOUNTS = ("/proc", "/sys", "/dev")


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who a process runs as: uid, gid, supplementary groups, umask, and whether it keeps CAP_SYS_NICE."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    umask: int = 0o022
    sys_nice: bool = False


class Sandbox:
    """A world-readable directory for a test, with the interpreter reachable from any user inside it."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._binds: list[tuple[Path, Path]] = []
        prefix = Path(os.path.realpath(sys.base_prefix))
        executable = Path(os.path.realpath(sys.executable))
        self._add_bind(prefix, base / ".py" / "prefix")
        self.python = str(base / ".py" / "prefix" / executable.relative_to(prefix))
        paths = [self._add_bind(ROOT, base / ".py" / "project")]
        for n, directory in enumerate(p for p in site.getsitepackages() if Path(p).is_dir()):
            paths.append(self._add_bind(Path(directory), base / ".py" / f"site{n}"))
        self.pythonpath = os.pathsep.join(str(p) for p in paths)

    def _add_bind(self, source: Path, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        self._binds.append((source, target))
        return target

    def env(self, **extra: str) -> dict[str, str]:
        """A small environment for a sandboxed Python process."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": self.pythonpath,
            # an interpreter built with a shared libpython finds it through its (unreachable) RUNPATH otherwise
            "LD_LIBRARY_PATH": str(self.base / ".py" / "prefix" / "lib"),
            # and one started as "ffmpeg" (the fake recorders) would look for its standard library from that name
            "PYTHONHOME": str(self.base / ".py" / "prefix"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/",
            "LANG": "C.UTF-8",
            **extra,
        }

    def argv(
        self,
        who: Identity,
        command: Sequence[str],
        *,
        read_only: bool = False,
        writable: Sequence[Path] = (),
        private_tmp: bool = False,
    ) -> list[str]:
        """The full command line: namespace set-up as root, then ``command`` as ``who``.

        ``read_only``: every mount except the API file systems becomes read-only, then each of ``writable`` is
        bound read-write again (ProtectSystem=strict with ReadWritePaths= and StateDirectory=).
        """
        lines = ["set -e"]
        lines += [f"mount --bind {shlex.quote(str(s))} {shlex.quote(str(t))}" for s, t in self._binds]
        if read_only:
            skip = " || ".join(f'$5 == "{m}" || index($5, "{m}/") == 1' for m in API_MOUNTS)
            lines.append(
                f"for m in $(awk '!({skip}) {{print $5}}' /proc/self/mountinfo | sort -u); do"
                ' mount -o remount,bind,ro "$m" 2>/dev/null || true; done'
            )
            # /dev/shm is writable under ProtectSystem=strict; it is made read-only here as well, so that only the
            # writable paths below can be written (stricter than the unit, never looser)
            lines.append("mount -o remount,bind,ro /dev/shm")
        if private_tmp:
            lines += ["mount -t tmpfs -o mode=1777 tmpfs /tmp", "mount -t tmpfs -o mode=1777 tmpfs /var/tmp"]
        for path in writable:
            quoted = shlex.quote(str(path))
            lines.append(f"mount --bind {quoted} {quoted} && mount -o remount,bind,rw {quoted}")
        lines.append(f"umask {who.umask:04o}")
        groups = f"--groups={','.join(str(g) for g in who.groups)}" if who.groups else "--clear-groups"
        caps = (
            "--inh-caps=-all,+sys_nice --ambient-caps=-all,+sys_nice --bounding-set=-all,+sys_nice"
            if who.sys_nice
            else "--inh-caps=-all --bounding-set=-all"
        )
        lines.append(f'exec setpriv --reuid={who.uid} --regid={who.gid} {groups} {caps} --no-new-privs -- "$@"')
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            "\n".join(lines),
            "sh",
            *command,
        ]

    def run(
        self,
        who: Identity,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        **options: object,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion, capturing output; never raises for a failing command."""
        return subprocess.run(
            self.argv(who, command, **options),  # type: ignore[arg-type]
            env=dict(env) if env is not None else self.env(),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def python_code(self, who: Identity, code: str, *args: str, **options: object) -> subprocess.CompletedProcess[str]:
        """Run Python code as ``who``."""
        return self.run(who, [self.python, "-c", code, *args], **options)  # type: ignore[arg-type]


@contextmanager
def sandbox(prefix: str) -> Iterator[Sandbox]:
    """A sandbox directory under /dev/shm (on tmpfs, and outside the /tmp a private one would hide); removed after."""
    if os.geteuid() != 0:
        pytest.skip("running processes as other users in their own mount namespace needs root")
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "/bin/true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.strip()}")
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm"))
    base.chmod(0o755)
    try:
        yield Sandbox(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
