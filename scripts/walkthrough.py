"""The operator's path on a fresh host, end to end, as a transcript: install, check, start, command, watch.

    python scripts/walkthrough.py [--out DIR]

1. ``install.sh --root ROOT`` stages the install (no user, no /etc, no systemctl on this host);
2. the stand-in backend runs beside it, its data shared with the service user through a group and setgid
   directories, with the unit drop-in an operator writes for it (ReadWritePaths=, LoadCredential=);
3. ``check-config`` on an env file with typical mistakes: exit 78 and what is wrong, in units with examples;
4. ``check-config`` on the corrected file: exit 0;
5. the daemon starts as the service would: the installed command, the env file parsed as systemd does,
   ``$STATE_DIRECTORY`` and ``$CREDENTIALS_DIRECTORY`` filled the way the unit's StateDirectory= and
   LoadCredential= fill them, as the unprivileged user ``nobody`` with only CAP_SYS_NICE (setpriv);
6. the installed CLI, with no flags: ``status``, ``optimize database`` (it finds install.sh's token),
   ``strategies mode``, ``history``;
7. a screenshot of the dashboard in headless Chromium;
8. SIGTERM: the daemon stops with exit 0.

Offline: the wheel is built from this checkout and the staged virtualenv borrows this environment's
dependencies (tests/staging.py). Every step checks its result; the script exits 1 at the first surprise.
The daemon runs as root instead of nobody, saying so, where setpriv or the user is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT_DIR))

from config.envfile import environment, parse  # noqa: E402
from testbed.harness import TestbedProcess  # noqa: E402
from tests.staging import Staged, build_wheel, can_build_wheel, clean_env, stage_install  # noqa: E402

SERVICE_USER = "nobody"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
WAL_LIMIT = 2 * 1024 * 1024


class Surprise(Exception):
    """A step did not end the way the walk-through expects."""


def say(text: str = "") -> None:
    """One line of the transcript."""
    print(text, flush=True)


def step(title: str) -> None:
    """A step's heading."""
    say()
    say(f"== {title}")


def show(command: Sequence[str], *, env: dict[str, str], expect: int, tail: int | None = None) -> str:
    """Run a command as the operator would type it, print it and its output, and check its exit status."""
    shown = " ".join(command)
    say(f"$ {shown}")
    proc = subprocess.run(list(command), env=env, capture_output=True, text=True, timeout=120, check=False)
    output = (proc.stdout + proc.stderr).rstrip("\n")
    lines = output.splitlines()
    if tail is not None and len(lines) > tail:
        say(f"  ... ({len(lines) - tail} lines)")
        lines = lines[-tail:]
    for line in lines:
        say(f"  {line}")
    say(f"  (exit {proc.returncode})")
    if proc.returncode != expect:
        raise Surprise(f"{shown}: exit {proc.returncode}, expected {expect}")
    if "Traceback" in output:
        raise Surprise(f"{shown}: printed a traceback")
    return output


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def share_with_group(directory: Path, gid: int) -> None:
    """Give a group the directory tree (read, write, enter) and make new entries keep the group (setgid)."""
    for path in [directory, *directory.rglob("*")]:
        os.chown(path, -1, gid, follow_symlinks=False)
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = 0o2070 if path.is_dir() else 0o060
        path.chmod((mode | extra) & 0o7777)


def service_environment(staged: Staged, state: Path, credentials: Path) -> dict[str, str]:
    """What systemd gives the service: the env file (its parser's rules), STATE_DIRECTORY, CREDENTIALS_DIRECTORY."""
    env = environment(parse((staged.etc / "env").read_text(encoding="utf-8")))
    env.update(
        PATH="/usr/bin:/bin",
        LANG="C.UTF-8",
        STATE_DIRECTORY=str(state),
        CREDENTIALS_DIRECTORY=str(credentials),
    )
    return env


def load_credentials(staged: Staged, credentials: Path, uid: int, gid: int) -> None:
    """Copy each LoadCredential= source of the unit (drop-ins included) as systemd does: 0400, owned by the user."""
    credentials.mkdir(parents=True, exist_ok=True)
    units = [staged.unit, *sorted((staged.unit_dir / "cctv-optimizer.service.d").glob("*.conf"))]
    for unit in units:
        for line in unit.read_text(encoding="utf-8").splitlines():
            if line.startswith("LoadCredential="):
                name, _, source = line.split("=", 1)[1].partition(":")
                target = credentials / name
                shutil.copyfile(source, target)
                target.chmod(0o400)
                os.chown(target, uid, gid)
    credentials.chmod(0o500)
    os.chown(credentials, uid, gid)


def as_service_user(uid: int) -> list[str]:
    """setpriv arguments that drop to the service user with the unit's one capability, or nothing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        return []
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={pwd.getpwuid(uid).pw_gid}",
        "--clear-groups",
        "--inh-caps=-all,+sys_nice",
        "--ambient-caps=-all,+sys_nice",
        "--bounding-set=-all,+sys_nice",
        "--no-new-privs",
    ]


@contextlib.contextmanager
def running_daemon(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The daemon in the background, its JSON log in a file; stopped (SIGKILL as a last resort) at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def wait_for_event(log: Path, event: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> dict[str, Any]:
    """The first log line with this event; a Surprise when the daemon exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == event:
                    return dict(record)
        if proc.poll() is not None:
            raise Surprise(f"the daemon exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise Surprise(f"no {event} within {timeout} s:\n{log.read_text()[-3000:]}")


def wait_for_sample(api: str, signal_name: str, *, above: float, timeout: float = 30.0) -> None:
    """Until the daemon's latest sample of a signal is over a value (GET /samples)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{api}/samples?signals={signal_name}", timeout=10) as resp:
            points = json.loads(resp.read())["signals"][0]["points"]
        if points and points[-1][1] > above:
            return
        time.sleep(0.3)
    raise Surprise(f"{signal_name} did not pass {above} within {timeout} s")


def screenshot(url: str, target: Path, profile: Path) -> None:
    """The dashboard in headless Chromium, after its scripts have polled a few times."""
    say(f"$ chromium --headless --screenshot={target} {url}")
    proc = subprocess.run(
        [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1280,1560",
            "--virtual-time-budget=15000",
            f"--screenshot={target}",
            url,
        ],
        capture_output=True,
        timeout=120,
        check=False,
        start_new_session=True,
    )
    if proc.returncode != 0 or not target.is_file() or target.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise Surprise(f"chromium failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-2000:]}")
    say(f"  {target} ({target.stat().st_size // 1024} KiB)")


def walk(out: Path, work: Path) -> None:
    """Every step of the walk-through."""
    operator = clean_env()
    step("1. install into a staged root (nothing on this host is touched)")
    wheel = build_wheel(work / "wheel")
    root = work / "root"
    root.mkdir()
    root.chmod(0o755)
    say(f"$ bash systemd/install.sh --root {root} --source {wheel.name} --pip-args '--no-deps --no-index'")
    staged = stage_install(root, wheel)
    for line in staged.output.strip().splitlines()[-4:]:
        say(f"  {line}")
    command = str(staged.command)

    step("2. the backend beside it, its files shared with the service user's group")
    try:
        account = pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise Surprise(f"this host has no user {SERVICE_USER}") from exc
    srv = root / "srv" / "cctv"
    srv.mkdir(parents=True)
    srv.parent.chmod(0o755)
    old_umask = os.umask(0o002)  # the backend writes group-writable files, as the README asks of it
    try:
        tb = TestbedProcess(srv)
    finally:
        os.umask(old_umask)
    with tb:
        share_with_group(srv, account.pw_gid)
        say(f"  backend at {tb.url}; data in {srv} (group {account.pw_gid}, setgid directories)")
        dropins = staged.unit_dir / "cctv-optimizer.service.d"
        dropins.mkdir()
        dropin = dropins / "50-site.conf"
        dropin.write_text(
            "[Service]\n"
            "# the backend's files, writable for the service under ProtectSystem=strict\n"
            f"ReadWritePaths={srv}\n"
            "# this walk-through keeps everything under /tmp, which the unit's private /tmp would hide\n"
            "PrivateTmp=no\n"
            f"LoadCredential=backend-admin-password:{tb.env['CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE']}\n"
        )
        say(f"  drop-in {dropin}:")
        for line in dropin.read_text().splitlines():
            say(f"    {line}")
        port = free_port()
        site = {
            "CCTV_OPTIMIZER_API__LISTEN": f"127.0.0.1:{port}",
            **{k: v for k, v in tb.env.items() if not k.endswith("_FILE")},
            "CCTV_OPTIMIZER_STRATEGIES__CPU__RECORDINGS_DIRECTORY": str(srv / "recordings"),
            "CCTV_OPTIMIZER_STRATEGIES__DATABASE__WAL_LIMIT_BYTES": str(WAL_LIMIT),
            # rounds on demand only, and samples every second: the walk-through decides when to act
            "OPTIMIZATION_INTERVAL": "3600000",
            "CCTV_OPTIMIZER_SAMPLE_INTERVAL": "1000",
        }
        settings = "".join(f"{k}={v}\n" for k, v in site.items())
        env_file = staged.etc / "env"

        step("3. check-config with a broken env file")
        broken = (
            "MEMORY_THRESHOLD=1.5\n"
            "MEMORY_TRESHOLD=0.5\n"
            "OPTIMIZATION_INTERVAL=30\n"
            "CPU_THRESHOLD=80 # percent\n"
            f"CCTV_OPTIMIZER_BACKEND__API_KEY_FILE={staged.etc / 'backend-api-key'}\n"
        )
        env_file.write_text(settings + broken)
        say(f"  {env_file} ends with:")
        for line in broken.splitlines():
            say(f"    {line}")
        text = show([command, "check-config", "--user", SERVICE_USER], env=operator, expect=78)
        for wanted in (
            "MEMORY_THRESHOLD=1.5: must be a ratio from 0.05 to 1",
            "did you mean MEMORY_THRESHOLD?",
            "OPTIMIZATION_INTERVAL=30: must be at least 1000 milliseconds (e.g. 30000 for 30 s)",
            "CPU_THRESHOLD=80 # percent: expected a ratio",
            "backend-api-key does not exist",
        ):
            if wanted not in text:
                raise Surprise(f"check-config did not say {wanted!r}")

        step("4. check-config with the corrected env file")
        env_file.write_text(settings + "MEMORY_THRESHOLD=0.85\n")
        show([command, "check-config", "--user", SERVICE_USER], env=operator, expect=0, tail=3)

        step(f"5. start it as the service would (user {SERVICE_USER}, CAP_SYS_NICE only)")
        state = root / "var" / "lib" / "cctv-optimizer"
        state.mkdir(parents=True)
        state.chmod(0o700)
        os.chown(state, account.pw_uid, account.pw_gid)
        credentials = root / "run" / "credentials" / "cctv-optimizer.service"
        load_credentials(staged, credentials, account.pw_uid, account.pw_gid)
        drop = as_service_user(account.pw_uid)
        if not drop:
            say(f"  (setpriv is missing or this is not root: the daemon runs as {pwd.getpwuid(os.geteuid()).pw_name})")
        log = out / "daemon.log"
        daemon_command = [*drop, command, "run"]
        say(f"$ {' '.join(daemon_command)}    # environment: the env file, STATE_DIRECTORY, CREDENTIALS_DIRECTORY")
        with running_daemon(daemon_command, service_environment(staged, state, credentials), log) as daemon:
            started = wait_for_event(log, "daemon_started", daemon)
            say(f"  daemon_started api={started['api']} mode={started['mode']} state={started['state']}")
            wait_for_event(log, "source_up", daemon)

            step("6. the installed CLI, no flags: it finds the service's env file and install.sh's token")
            show([command, "status"], env=operator, expect=0)
            tb.scenario("wal_growth", mb=4)
            wait_for_sample(started["api"], "wal_bytes", above=WAL_LIMIT)
            text = show([command, "optimize", "database"], env=operator, expect=0)
            if "applied" not in text or "MiB -> 0 B" not in text:
                raise Surprise("optimize database did not checkpoint the grown WAL")
            show([command, "strategies", "mode", "database", "observe"], env=operator, expect=0)
            show([command, "history"], env=operator, expect=0)

            step("7. the dashboard")
            screenshot(started["api"] + "/", out / "dashboard.png", work / "chromium")

            step("8. stop (SIGTERM)")
            daemon.send_signal(signal.SIGTERM)
            status = daemon.wait(timeout=60)
            say(f"  daemon exited {status}")
            if status != 0:
                raise Surprise(f"the daemon exited {status} on SIGTERM:\n{log.read_text()[-3000:]}")
            tracebacks = log.read_text().count("Traceback")
            if tracebacks:
                raise Surprise(f"the daemon's log has {tracebacks} traceback(s): {log}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the walk-through; 0 when every step ended as expected."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="where the screenshot and the daemon's log go")
    args = parser.parse_args(argv)
    reason = can_build_wheel()
    if reason is not None:
        say(f"cannot run: {reason}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="cctv-optimizer-walkthrough-", dir="/tmp"))
    work.chmod(0o755)
    out = args.out or work / "out"
    out.mkdir(parents=True, exist_ok=True)
    try:
        walk(out, work)
    except Surprise as exc:
        say(f"!! {exc}")
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say()
    say(f"walk-through complete; screenshot {out / 'dashboard.png'}, daemon log {out / 'daemon.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
