"""Tests for the systemd unit and the example environment file in systemd/."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cctv-optimizer.service"
ENV_EXAMPLE = REPO / "systemd" / "cctv-optimizer.env.example"
MAX_EXPOSURE = 2.5
EXEC_START = "/opt/cctv-optimizer/venv/bin/cctv-optimizer run"


def directives(text: str) -> list[tuple[str, str, str]]:
    """Parse unit text into (section, key, value) triples, keeping repeated keys in order."""
    section = ""
    result = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        result.append((section, key.strip(), value.strip()))
    return result


def values(section: str, key: str) -> list[str]:
    """Every value the real unit gives ``key`` in ``section``."""
    return [v for s, k, v in directives(UNIT.read_text()) if s == section and k == key]


@pytest.fixture
def analyze() -> str:
    """Path of systemd-analyze, or a skip with the reason when it is not installed."""
    path = shutil.which("systemd-analyze")
    if path is None:
        reason = "systemd-analyze is not installed (make debs installs Debian's systemd package)"
        print(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """The real unit copied to tmp_path with only ExecStart= pointing at an executable that exists."""
    binary = tmp_path / "cctv-optimizer"
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    original = UNIT.read_text()
    rewritten = original.replace(f"ExecStart={EXEC_START}\n", f"ExecStart={binary} run\n")
    changed = [(a, b) for a, b in zip(original.splitlines(), rewritten.splitlines(), strict=True) if a != b]
    assert changed == [(f"ExecStart={EXEC_START}", f"ExecStart={binary} run")]
    unit = tmp_path / UNIT.name
    unit.write_text(rewritten)
    return unit


def run_verify(analyze: str, unit: Path) -> list[str]:
    """Run systemd-analyze verify; return its exit code as a line if non-zero, plus every line about ``unit``."""
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    # verify exits 0 even for unknown keys and invalid values, which it only logs: the lines count too.
    # Lines about other units (the host's targets) are not this file's business.
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if unit.stem in line]
    if proc.returncode != 0:
        lines.insert(0, f"exit status {proc.returncode}")
    return lines


def test_verify_passes(analyze: str, verifiable_unit: Path) -> None:
    """systemd-analyze verify accepts the unit without a single warning."""
    assert run_verify(analyze, verifiable_unit) == []


def test_verify_would_catch_a_bad_line(analyze: str, verifiable_unit: Path) -> None:
    """The verify check fails on an unknown directive or a bad value, so its silence above means something."""
    text = verifiable_unit.read_text().replace("MemoryMax=128M\n", "MemoryMax=lots\nMemoryMaxx=1\n")
    verifiable_unit.write_text(text)
    problems = run_verify(analyze, verifiable_unit)
    assert any("MemoryMaxx" in line for line in problems)
    assert any("lots" in line for line in problems)


def exposure(analyze: str, unit: Path) -> float:
    """The overall exposure systemd-analyze security reports for ``unit`` in offline mode."""
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert match is not None, proc.stdout + proc.stderr
    return float(match.group(1))


def test_security_exposure_is_low(analyze: str, verifiable_unit: Path) -> None:
    """The hardening keeps systemd-analyze security's overall exposure at or below 2.5."""
    assert exposure(analyze, verifiable_unit) <= MAX_EXPOSURE


def test_security_score_reacts_to_hardening(analyze: str, verifiable_unit: Path) -> None:
    """Dropping the hardening raises the parsed exposure, so the threshold check measures the real lines."""
    hardened = exposure(analyze, verifiable_unit)
    bare = "\n".join(
        line
        for line in verifiable_unit.read_text().splitlines()
        if not line.startswith(("Protect", "Private", "Restrict", "SystemCall", "Capability"))
    )
    verifiable_unit.write_text(bare + "\n")
    assert exposure(analyze, verifiable_unit) > hardened + 2


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "90s"),
        ("ExecStart", EXEC_START),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78"),
        ("TimeoutStopSec", "30s"),
        ("EnvironmentFile", "-/etc/cctv-optimizer/env"),
        ("StateDirectory", "cctv-optimizer"),
        ("LoadCredential", "api-token:/etc/cctv-optimizer/api-token"),
        ("User", "cctv-optimizer"),
        ("MemoryMax", "128M"),
        ("CPUQuota", "20%"),
        ("TasksMax", "64"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("CapabilityBoundingSet", "CAP_SYS_NICE"),
        ("AmbientCapabilities", "CAP_SYS_NICE"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("ProtectProc", "default"),
        ("ProcSubset", "all"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("User", "cctv-optimizer"),
        ("LoadCredential", "api-token:/etc/cctv-optimizer/api-token"),
    ],
)
def test_required_directive(key: str, expected: str) -> None:
    """The unit sets each directive the daemon's lifecycle and budget rely on, exactly once."""
    assert values("Service", key) == [expected]


def test_read_write_paths_are_only_the_backend_data() -> None:
    """Writable paths are the backend's database directory and the HLS directory, both optional."""
    assert values("Service", "ReadWritePaths") == [
        "-/opt/rafnet-cctv/backend/data",
        "-/dev/shm/mediamtx-live",
    ]


def test_no_setting_that_hides_the_backend() -> None:
    """No setting that would hide other users' processes or break renicing them is present."""
    triples = directives(UNIT.read_text())
    keys = {k for _, k, _ in triples}
    assert keys.isdisjoint({"PrivateUsers", "DynamicUser", "PrivateNetwork"})


def test_syscall_filter_keeps_renice(analyze: str) -> None:
    """The syscall allow list includes setpriority and ioprio_set, which the renice action needs."""
    filters = values("Service", "SystemCallFilter")
    assert filters[0] == "@system-service"
    listing = subprocess.run(
        [analyze, "syscall-filter", "@system-service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    denied = subprocess.run(
        [analyze, "syscall-filter", *[f[1:] for f in filters[1:] if f.startswith("~")]],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # The allow list names @resources as a nested group; the denied groups must not name the calls.
    assert "@resources" in listing
    assert re.search(r"^\s+(setpriority|ioprio_set)$", denied, re.MULTILINE) is None


# Installs a seccomp filter equivalent to systemd's MemoryDenyWriteExecute= (seccomp-util.c) on x86-64:
# mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC and shmat with SHM_EXEC fail
# with EPERM. Then it proves the filter is active and runs the daemon's dependencies for real.
MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, errno, mmap, struct, sys

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    LD, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06
    ALLOW, EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM
    ARG2 = 16 + 2 * 8
    program = [
        (LD, 0, 0, 4), (JEQ, 1, 0, 0xC000003E), (RET, 0, 0, ALLOW),
        (LD, 0, 0, 0),
        (JEQ, 4, 0, 9), (JEQ, 6, 0, 10), (JEQ, 5, 0, 329), (JEQ, 7, 0, 30), (RET, 0, 0, ALLOW),
        (LD, 0, 0, ARG2), (AND, 0, 0, 6), (JEQ, 6, 7, 6),
        (LD, 0, 0, ARG2), (AND, 0, 0, 4), (JEQ, 3, 4, 4),
        (LD, 0, 0, ARG2), (AND, 0, 0, 0o100000), (JEQ, 0, 1, 0o100000),
        (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW),
    ]
    blob = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(blob)
    prog = struct.pack("HxxxxxxQ", len(program), ctypes.addressof(buf))
    fprog = ctypes.create_string_buffer(prog)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) != 0:
        print("SKIP seccomp unavailable", ctypes.get_errno())
        sys.exit(0)

    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("filter inactive: W|X mapping allowed")
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = libc.mmap(None, 4096, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if libc.mprotect(page, 4096, mmap.PROT_READ | mmap.PROT_EXEC) == 0:
        sys.exit("filter inactive: mprotect(PROT_EXEC) allowed")

    import asyncio, gc, json, sqlite3, tempfile, pathlib
    import aiohttp, psutil, structlog, yaml
    from aiohttp import web
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    assert yaml.load("a: [1, 2]", Loader=yaml.CSafeLoader) == {"a": [1, 2]}
    procs = [p.info["name"] for p in psutil.process_iter(["name", "cmdline", "memory_info"])]
    assert procs and psutil.virtual_memory().total > 0 and psutil.cpu_percent(None) >= 0
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(pathlib.Path(tmp) / "t.db")
        assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
        db.commit()
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        db.close()
    registry = CollectorRegistry()
    Gauge("probe_ratio", "probe", registry=registry).set(0.5)
    assert b"probe_ratio 0.5" in generate_latest(registry)
    structlog.get_logger().info("mdwe_probe", ok=True)
    gc.collect()

    async def main():
        scheduler = AsyncIOScheduler()
        scheduler.start()
        app = web.Application()
        app.router.add_get("/", lambda request: web.json_response({"ok": True}))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                body = await response.json()
        await runner.cleanup()
        scheduler.shutdown(wait=False)
        return body

    assert asyncio.run(main()) == {"ok": True}
    print("OK")
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="seccomp is Linux-only")
def test_python_runs_under_memory_deny_write_execute() -> None:
    """CPython and the daemon's dependencies work under MemoryDenyWriteExecute's syscall filter."""
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("the probe's seccomp program is written for x86-64")
    proc = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=60, check=False)
    if proc.stdout.startswith("SKIP"):
        pytest.skip(proc.stdout.strip())
    assert (proc.returncode, proc.stdout.strip().splitlines()[-1:]) == (0, ["OK"]), proc.stderr


def env_example_settings() -> dict[str, str]:
    """Variable -> value of every (commented-out) assignment in the example environment file."""
    pattern = re.compile(r"^#?([A-Z][A-Z0-9_]*)=(.*)$")
    return {m.group(1): m.group(2) for line in ENV_EXAMPLE.read_text().splitlines() if (m := pattern.match(line))}


def test_env_example_lists_every_variable() -> None:
    """The example env file names every variable of the configuration contract (the README's settings reference)."""
    expected = {
        "ENABLE_PERFORMANCE_OPTIMIZATION",
        "OPTIMIZATION_INTERVAL",
        "MEMORY_THRESHOLD",
        "CPU_THRESHOLD",
        "GC_THRESHOLD",
        "ENABLE_GC",
        "ENABLE_CONNECTION_POOLING",
        "ENABLE_CACHING",
        "LOG_LEVEL",
        "CCTV_OPTIMIZER_CONFIG",
        "CCTV_OPTIMIZER_API__LISTEN",
        "CCTV_OPTIMIZER_API__TOKEN_FILE",
        "CCTV_OPTIMIZER_STATE__DIRECTORY",
        "CCTV_OPTIMIZER_BACKEND__URL",
        "CCTV_OPTIMIZER_BACKEND__DATABASE",
        "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY",
        "CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME",
        "CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE",
        "CCTV_OPTIMIZER_BACKEND__API_KEY_FILE",
        "CCTV_OPTIMIZER_BACKEND__PROCESS",
        "CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL",
        "CCTV_OPTIMIZER_SAMPLE_INTERVAL",
    }
    assert set(env_example_settings()) == expected


def test_env_example_defaults() -> None:
    """The example shows the documented defaults, and sets nothing: every assignment is commented out."""
    settings = env_example_settings()
    assert {k: settings[k] for k in ("OPTIMIZATION_INTERVAL", "MEMORY_THRESHOLD", "CPU_THRESHOLD")} == {
        "OPTIMIZATION_INTERVAL": "30000",
        "MEMORY_THRESHOLD": "0.8",
        "CPU_THRESHOLD": "0.9",
    }
    assert settings["GC_THRESHOLD"] == "0.7"
    assert settings["LOG_LEVEL"] == "info"
    assert settings["CCTV_OPTIMIZER_API__LISTEN"] == "127.0.0.1:9877"
    assert settings["CCTV_OPTIMIZER_BACKEND__URL"] == "http://127.0.0.1:3000"
    assert settings["CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY"] == "/dev/shm/mediamtx-live"
    assert settings["CCTV_OPTIMIZER_BACKEND__MEDIAMTX_URL"] == "http://127.0.0.1:9997"
    assert settings["CCTV_OPTIMIZER_SAMPLE_INTERVAL"] == "5000"
    active = [line for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z]", line)]
    assert active == []
