"""The daemon as systemd/cctv-optimizer.service runs it, without systemd: a rehearsal against the testbed.

As the unit says: its own user (not root), only CAP_SYS_NICE (ambient, and the whole bounding set), no new
privileges, UMask=0077, a private /tmp, and a file system read-only except ReadWritePaths= and StateDirectory=
(tests/sandbox.py: a mount namespace and setpriv). The unit's production paths are mapped onto the test's:
``/opt/rafnet-cctv/backend/data`` is the testbed's ``data/`` and ``/dev/shm/mediamtx-live`` its ``hls/`` (on
/dev/shm, a tmpfs, as in production); the state directory is the test's. The testbed plays the backend and
MediaMTX as another user, with MediaMTX's UMask=0002 and the permission setup docs/SAFETY.md describes: a shared
group owning the data directory and the HLS root (setgid), MediaMTX's own 0755 stream directories. The daemon runs
with the default process discovery (``port:`` of the URL), which must find a backend owned by another user.

In it every source comes up, and every strategy's action succeeds: HLS files are removed where the directory
allows it and emptied in MediaMTX's 0755 directories, recorders of another user are reniced, stuck sessions
ended, the WAL checkpointed, old rows pruned after a backup into the state directory, the cache trimmed.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metrics.sources import SOURCE_NAMES
from testbed.harness import TestbedProcess, wait_until
from tests.harness import FAST, daemon_process
from tests.sandbox import Identity, Sandbox, sandbox

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cctv-optimizer.service"
SHARED = 61259
BACKEND = Identity(uid=61251, gid=61251, groups=(SHARED,), umask=0o002)
STRATEGIES = ("memory", "cpu", "connection", "database", "cache")
SOURCES = set(SOURCE_NAMES)


def unit_service() -> dict[str, list[str]]:
    """Every directive of the unit's [Service] section, each with all its values in order."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def daemon_identity(unit: dict[str, list[str]]) -> Identity:
    """The daemon's identity from the unit: its capabilities and umask (the uid/gid stand in for User=/Group=)."""
    assert unit["CapabilityBoundingSet"] == ["CAP_SYS_NICE"] and unit["AmbientCapabilities"] == ["CAP_SYS_NICE"]
    assert unit["NoNewPrivileges"] == ["yes"]
    return Identity(uid=61252, gid=61252, groups=(SHARED,), umask=int(unit["UMask"][0], 8), sys_nice=True)


@dataclass
class Rehearsal:
    """The running pieces: the sandbox, the testbed (as the backend's user), and the daemon's environment."""

    box: Sandbox
    tb: TestbedProcess
    env: dict[str, str]
    state: Path
    data: Path
    hls: Path
    writable: list[Path]
    daemon: Identity


def shared_dir(path: Path, uid: int) -> None:
    """The documented setup: owned by the service that writes it, group the shared group, setgid, group-writable."""
    path.mkdir(exist_ok=True)
    os.chown(path, uid, SHARED)
    path.chmod(0o2775)


@pytest.fixture
def rehearsal() -> Iterator[Rehearsal]:
    """The testbed running as the backend's user in a sandbox, and the daemon's environment and paths."""
    unit = unit_service()
    who = daemon_identity(unit)
    with sandbox("cctv-rehearsal-") as box:
        backend_dir = box.base / "backend"
        backend_dir.mkdir()
        os.chown(backend_dir, BACKEND.uid, BACKEND.gid)
        data, hls = backend_dir / "data", backend_dir / "hls"
        shared_dir(data, BACKEND.uid)
        shared_dir(hls, BACKEND.uid)
        state = box.base / "state"
        state.mkdir(mode=0o700)
        os.chown(state, who.uid, who.gid)
        secrets = box.base / "secrets"
        secrets.mkdir(mode=0o755)
        # ReadWritePaths= of the unit, mapped onto the test's paths (the dash: optional paths)
        mapping = {"/opt/rafnet-cctv/backend/data": data, "/dev/shm/mediamtx-live": hls}
        assert [v.lstrip("-") for v in unit["ReadWritePaths"]] == list(mapping)
        assert unit["StateDirectory"] == ["cctv-optimizer"] and unit["PrivateTmp"] == ["yes"]
        with TestbedProcess(
            backend_dir,
            "--cameras",
            "2",
            launcher=lambda cmd: box.argv(BACKEND, [box.python, *cmd[1:]]),
            environ=box.env(),
        ) as tb:
            # SQLite creates the database (and copies its mode to -wal and -shm) 0644 whatever the umask: the
            # operator's one-time step of the setup makes them group-writable (docs/SAFETY.md)
            for suffix in ("", "-wal", "-shm"):
                side = Path(f"{tb.database}{suffix}")
                if side.exists():
                    os.chown(side, BACKEND.uid, SHARED)
                    side.chmod(0o664)
            password = secrets / "admin-password"
            password.write_text(tb.admin_password)
            token = secrets / "api-token"
            token.write_text("rehearsal-token-" + "0" * 32)
            for path in (password, token):
                os.chown(path, who.uid, who.gid)
                path.chmod(0o600)
            env = box.env(
                STATE_DIRECTORY=str(state),  # what StateDirectory= exports
                CCTV_OPTIMIZER_API__LISTEN="127.0.0.1:0",
                CCTV_OPTIMIZER_API__TOKEN_FILE=str(token),
                CCTV_OPTIMIZER_BACKEND__URL=tb.url,
                CCTV_OPTIMIZER_BACKEND__DATABASE=str(tb.database),
                CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY=str(tb.hls_dir),
                CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME="admin",
                CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE=str(password),
                CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL=tb.mediamtx_url,
                CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY=str(tb.data_dir / "recordings"),
                CPU_THRESHOLD="0.05",  # the hot recorder is enough heat
                CCTV_OPTIMIZER_STRATEGIES__CPU__LOAD_PER_CORE="0.1",
                CCTV_OPTIMIZER_STRATEGIES__MEMORY__HLS_STALE_AGE_SECONDS="60",
                CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES=str(1024 * 1024),
                CCTV_OPTIMIZER_STRATEGIES__DATABASE__RETENTION_ENABLED="true",
                CCTV_OPTIMIZER_STRATEGIES__CACHE__ENTRIES_LIMIT="100",
                CCTV_OPTIMIZER_ENGINE__ALLOW_DISRUPTIVE="true",
                CCTV_OPTIMIZER_ENGINE__COOLDOWN_SECONDS="0",
                CCTV_OPTIMIZER_ENGINE__BUDGET_ACTIONS="100",
                LOG_LEVEL="info",
                **{**FAST, "OPTIMIZATION_INTERVAL": "3600000"},  # only the rounds the test asks for
            )
            yield Rehearsal(
                box=box,
                tb=tb,
                env=env,
                state=state,
                data=data,
                hls=hls,
                writable=[data, hls, state],
                daemon=who,
            )


def daemon_command(r: Rehearsal) -> list[str]:
    """``cctv-optimizer run`` as the unit's user, with its capabilities, in its read-only namespace."""
    return r.box.argv(
        r.daemon,
        [r.box.python, "-m", "optimizer.cli", "run"],
        read_only=True,
        writable=r.writable,
        private_tmp=True,
    )


def call(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One API call with the write token."""
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": "Bearer rehearsal-token-" + "0" * 32, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def samples_taken(base: str) -> float:
    """The daemon's sample count, from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=60) as resp:
        text = resp.read().decode()
    return next(
        float(line.split()[1]) for line in text.splitlines() if line.startswith("cctv_optimizer_samples_total ")
    )


def sources_down(base: str) -> dict[str, str] | None:
    """None once every source is up, else the ones down with their errors."""
    sources = call(base, "GET", "/performance-metrics")["sources"]
    down = {name: s["error"] for name, s in sources.items() if not s["up"]}
    return None if set(sources) == SOURCES and not down else down


def nice_of(pid: int) -> int:
    """A process's nice value (field 19 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_the_daemon_as_its_unit_runs_every_source_and_every_action_against_another_users_backend(
    rehearsal: Rehearsal,
) -> None:
    """As the unit runs it: every source up (the backend found by port across users), and each strategy's action
    applied, each with its effect on files, rows and processes owned by the backend's user."""
    r = rehearsal
    tb = r.tb
    wait_until(lambda: tb.state()["live_streams"] >= 1, timeout=20)
    with daemon_process(r.env, command=daemon_command(r)) as d:
        started = d.wait_event("daemon_started", timeout=60)
        base = str(started["api"])
        try:
            wait_until(lambda: sources_down(base) is None, timeout=30, interval=0.2)
        except TimeoutError:
            pytest.fail(f"sources down under the unit: {sources_down(base)}")
        stale = tb.scenario("stale_segments", count=40, age_seconds=900)
        stopped = Path(stale["stopped_dir"])
        prefix = next(stopped.iterdir()).name[:12]  # the old muxer run's: its files in live directories are stale
        in_live = [f for d2 in r.hls.iterdir() if d2 != stopped for f in d2.glob(f"{prefix}_*") if not f.is_symlink()]
        recorders = tb.scenario("hot_recorder", count=1)["recorders"]
        tb.scenario("stuck_sessions", count=5, age_seconds=900)
        tb.scenario("wal_growth", mb=4)
        tb.scenario("cache_junk", entries=300)
        before_nice = {pid: nice_of(pid) for pid in recorders}
        # a few samples see the scenarios, however slowly a loaded host lets the daemon take them
        seen = samples_taken(base)
        wait_until(lambda: samples_taken(base) >= seen + 5, timeout=60, interval=0.2)
        outcomes: dict[str, list[tuple[str, str, str | None]]] = {}
        for name in (*STRATEGIES, "database"):  # the database twice: the checkpoint first, then retention
            answer = call(base, "POST", "/performance-optimize", {"strategy": name})
            rows = call(base, "GET", "/optimizations?after=0&limit=1000")["items"]
            mine = [row for row in rows if row["runId"] == answer["runId"]]
            outcomes.setdefault(name, []).extend((row["action"], row["outcome"], row["error"]) for row in mine)
        assert d.stop() == 0
    assert outcomes["memory"] == [("hls_prune", "applied", None)], outcomes
    assert outcomes["cpu"] == [("renice", "applied", None)], outcomes
    assert outcomes["connection"] == [("end_stuck_sessions", "applied", None)], outcomes
    assert outcomes["database"] == [("wal_checkpoint", "applied", None), ("retention_prune", "applied", None)]
    assert outcomes["cache"][0][1] == "applied", outcomes
    # the effects, on what belongs to the backend's user
    # the stopped stream's directory is the shared group's (2775): its files were removed; MediaMTX's 0755
    # directories allow no unlink, so the stale files there were emptied
    assert not stopped.exists() or not any(stopped.iterdir())
    assert in_live and all(f.stat().st_size == 0 for f in in_live)
    assert all(nice_of(pid) > before_nice[pid] for pid in recorders if Path(f"/proc/{pid}").exists())
    assert tb.state()["stale_active_sessions"] == 0
    backups = list((r.state / "backups").glob("cctv-*.db"))
    assert len(backups) == 1 and backups[0].stat().st_uid == r.daemon.uid
    assert not [line for line in d.raw if "Traceback" in line]


PROBE = """
import json, os, sys
out = {"uid": os.getuid(), "groups": sorted(os.getgroups()), "umask": oct(os.umask(0o077))}
caps = dict(line.split(":\t") for line in open("/proc/self/status").read().splitlines() if line.startswith("Cap"))
out["caps"] = {k: v.strip() for k, v in caps.items()}
for path in sys.argv[1:]:
    try:
        with open(os.path.join(path, "probe"), "w") as fh:
            fh.write("x")
        os.unlink(os.path.join(path, "probe"))
        out[path] = "writable"
    except OSError as exc:
        out[path] = exc.strerror
print(json.dumps(out))
"""


def test_the_sandbox_is_what_the_unit_says(rehearsal: Rehearsal) -> None:
    """The daemon's sandbox: its uid and groups, umask 0077, CAP_SYS_NICE alone (effective, ambient, bounding), and
    writes allowed only in ReadWritePaths=, the state directory and the private /tmp."""
    r = rehearsal
    targets = [*r.writable, Path("/tmp"), r.data.parent, r.box.base, Path("/etc"), Path("/var/tmp")]
    done = r.box.python_code(r.daemon, PROBE, *map(str, targets), read_only=True, writable=r.writable, private_tmp=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    nice = f"{1 << 23:016x}"  # CAP_SYS_NICE is capability 23
    assert (seen["uid"], seen["groups"], seen["umask"]) == (r.daemon.uid, [SHARED], "0o77")
    assert {k: seen["caps"][k] for k in ("CapEff", "CapAmb", "CapBnd")} == dict.fromkeys(
        ("CapEff", "CapAmb", "CapBnd"), nice
    )
    assert {str(p): seen[str(p)] for p in targets} == {
        **{str(p): "writable" for p in (*r.writable, Path("/tmp"), Path("/var/tmp"))},
        **{str(p): "Read-only file system" for p in (r.data.parent, r.box.base, Path("/etc"))},
    }


PRUNE = """
import json, sys, time
from pathlib import Path
from strategies.actions.hls import prune_stale
from strategies.base import StrategyError
try:
    result = prune_stale(Path(sys.argv[1]), stale_age=60, max_files=100)
    print(json.dumps({"removed": result.removed, "emptied": result.emptied}))
except StrategyError as exc:
    print(json.dumps({"error": str(exc)}))
"""


@pytest.mark.parametrize(("mediamtx_umask", "expected"), [(0o002, "emptied"), (0o022, "refused")])
def test_mediamtx_permission_setup_lets_the_daemon_prune(
    rehearsal: Rehearsal, mediamtx_umask: int, expected: str
) -> None:
    """MediaMTX makes its stream directories 0755, so the daemon can never unlink in them. With the documented setup
    (a setgid HLS root of the shared group, MediaMTX under UMask=0002) its files are group-writable and the daemon
    empties the stale ones; without UMask=0002 the prune refuses with a reason naming the fix, and changes nothing."""
    r = rehearsal
    mediamtx = Identity(uid=BACKEND.uid, gid=BACKEND.gid, umask=mediamtx_umask)
    make = (
        "import os, sys, time\n"
        "d = os.path.join(sys.argv[1], 'cam')\n"
        "os.makedirs(d, 0o755)\n"  # as MediaMTX: os.MkdirAll(dir, 0o755)
        "for n in range(3):\n"
        "    p = os.path.join(d, f'9e9e9e9e9e9e_seg{n}.mp4')\n"
        "    open(p, 'wb').write(b'x' * 4096)\n"
        "    os.utime(p, (time.time() - 600, time.time() - 600))\n"
    )
    root = r.hls.parent / "hls-setup"
    shared_dir(root, BACKEND.uid)
    made = r.box.python_code(mediamtx, make, str(root))
    assert made.returncode == 0, made.stderr
    cam = root / "cam"
    assert (cam.stat().st_mode & 0o7777, cam.stat().st_gid) == (0o2755, SHARED)  # setgid and group inherited
    done = r.box.python_code(r.daemon, PRUNE, str(root), read_only=True, writable=[*r.writable, root], private_tmp=True)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    sizes = sorted(p.stat().st_size for p in cam.iterdir())
    if expected == "emptied":
        assert seen == {"removed": 0, "emptied": 3} and sizes == [0, 0, 0]
    else:
        assert "permission denied" in seen["error"] and "docs/SAFETY.md" in seen["error"]
        assert "nothing was removed" in seen["error"] and sizes == [4096] * 3
