"""The backend keeps the use of its own database while the daemon, another user, reads and writes it.

Real users (numeric ids, no passwd entries needed), a real WAL database owned by the backend's user and
group-writable by a shared group, in a directory without the setgid bit: exactly the production layout in
which a read-only open by the daemon used to create ``-wal``/``-shm`` owned by the daemon, after which the
backend failed with "attempt to write a readonly database". Every process runs as its user (tests/sandbox.py), so the kernel's permission checks are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sandbox import Identity, Sandbox, sandbox

BACKEND_UID = 61231
DAEMON_UID = 61232
SHARED_GID = 61239

# The backend: create (once) and write a row, then close cleanly, so SQLite removes -wal and -shm.
BACKEND_WRITE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("CREATE TABLE IF NOT EXISTS viewer_sessions (id INTEGER PRIMARY KEY, session_id TEXT,"
             " camera_id INTEGER, started_at TEXT, last_heartbeat TEXT, ended_at TEXT, is_active INTEGER)")
conn.execute("INSERT INTO viewer_sessions (session_id, camera_id, started_at, last_heartbeat, is_active)"
             " VALUES ('s', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00', 1)")
print(conn.execute("SELECT count(*) FROM viewer_sessions").fetchone()[0])
conn.close()
"""

# The daemon's sampler source and its write actions, run as the daemon's user.
DAEMON_TOUCH = """
import json, sys
from pathlib import Path
from metrics.sqlite import DatabaseReader
from strategies.actions import sqlite as sql
from strategies.actions import sessions
from strategies.base import StrategyDeferred, StrategyError
path = Path(sys.argv[1])
out = {}
sample = DatabaseReader(path, busy_timeout_ms=500).read(1.0)
out["page_count"] = sample.page_count
for name, action in (
    ("checkpoint", lambda: sql.checkpoint(path, "PASSIVE", 500)),
    ("optimize", lambda: sql.optimize(path, 500)),
    ("count", lambda: sessions.count_stale(path, 15.0, 500, 7.0)),
):
    try:
        action()
        out[name] = "done"
    except StrategyDeferred as exc:
        out[name] = "deferred: " + str(exc)
    except StrategyError as exc:
        out[name] = "failed: " + str(exc)
print(json.dumps(out))
"""


BACKEND = Identity(uid=BACKEND_UID, gid=BACKEND_UID)
DAEMON = Identity(uid=DAEMON_UID, gid=DAEMON_UID, groups=(SHARED_GID,))


@pytest.fixture
def box() -> Iterator[Sandbox]:
    """A directory every user can reach, and a way to run Python in it as them."""
    with sandbox("cctv-owner-") as made:
        yield made


def run_as(box: Sandbox, who: Identity, code: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Run Python code as ``who``; assert it worked."""
    done = box.python_code(who, code, str(path))
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def database(box: Sandbox) -> Path:
    """The backend's data directory (group-writable, no setgid) and its database, closed cleanly by the backend."""
    data = box.base / "data"
    data.mkdir()
    os.chown(data, BACKEND_UID, SHARED_GID)
    data.chmod(0o775)
    path = data / "cctv.db"
    run_as(box, BACKEND, BACKEND_WRITE, path)
    os.chown(path, BACKEND_UID, SHARED_GID)
    path.chmod(0o664)
    return path


def sidecars(path: Path) -> dict[str, int]:
    """The -wal/-shm files next to the database, with their owners."""
    out = {}
    for suffix in ("-wal", "-shm"):
        try:
            out[suffix] = os.stat(f"{path}{suffix}").st_uid
        except FileNotFoundError:
            continue
    return out


def test_the_backend_can_write_after_the_daemon_sampled_its_closed_database(box: Sandbox, database: Path) -> None:
    """The daemon's user samples and tries its actions while the backend has the database closed; the owner can
    still write afterwards, no -wal/-shm owned by the daemon is left, and the writes wait instead of failing."""
    assert sidecars(database) == {}  # the backend closed it cleanly
    seen = json.loads(run_as(box, DAEMON, DAEMON_TOUCH, database).stdout)
    after = box.python_code(BACKEND, BACKEND_WRITE, str(database))
    assert after.returncode == 0, after.stderr  # before the fix: "attempt to write a readonly database"
    assert after.stdout.strip() == "2"
    assert DAEMON_UID not in sidecars(database).values()
    assert seen["page_count"] >= 2  # it did read the database
    assert seen["count"] == "done"
    assert seen["checkpoint"].startswith("deferred: the backend has") and "closed" in seen["checkpoint"]
    assert seen["optimize"].startswith("deferred: ")


def test_while_the_backend_has_it_open_the_daemon_reads_and_writes_and_the_backend_goes_on(
    box: Sandbox, database: Path
) -> None:
    """With the backend holding the database open (its -wal and -shm exist), the daemon reads and checkpoints it
    through them, creates nothing of its own, and the backend keeps writing."""
    holder_code = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)\n"
        "conn.execute(\"INSERT INTO viewer_sessions (session_id) VALUES ('open')\")\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "conn.execute(\"INSERT INTO viewer_sessions (session_id) VALUES ('after')\")\n"
        "print(conn.execute('SELECT count(*) FROM viewer_sessions').fetchone()[0], flush=True)\n"
        "conn.close()\n"
    )
    holder = subprocess.Popen(
        box.argv(BACKEND, [box.python, "-c", holder_code, str(database)]),
        env=box.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready"
        owners = sidecars(database)
        assert set(owners) == {"-wal", "-shm"} and set(owners.values()) == {BACKEND_UID}
        # the backend's SQLite gave them the database file's mode: group-writable for the daemon's group
        os.chown(f"{database}-wal", BACKEND_UID, SHARED_GID)
        os.chown(f"{database}-shm", BACKEND_UID, SHARED_GID)
        seen = json.loads(run_as(box, DAEMON, DAEMON_TOUCH, database).stdout)
        assert seen == {"page_count": seen["page_count"], "checkpoint": "done", "optimize": "done", "count": "done"}
        assert DAEMON_UID not in sidecars(database).values()
        out, err = holder.communicate("go\n", timeout=30)
        assert holder.returncode == 0, err
        assert out.strip() == "3"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


UNREADABLE_PROBE = """
import json, sys
from pathlib import Path
from metrics.errors import SamplingError
from metrics.sqlite import DatabaseReader
from strategies.actions import sessions
from strategies.base import StrategyDeferred, StrategyError
path = Path(sys.argv[1])
out = {}
try:
    DatabaseReader(path, busy_timeout_ms=200).read(1.0)
    out["sample"] = "read"
except SamplingError as exc:
    out["sample"] = str(exc)
try:
    sessions.count_stale(path, 15.0, 200, 7.0)
    out["count"] = "read"
except StrategyDeferred as exc:
    out["count"] = "deferred: " + str(exc)
print(json.dumps(out))
"""


def test_a_database_the_daemon_cannot_read_is_reported_as_such(box: Sandbox, database: Path) -> None:
    """A database the daemon's user may not read (mode 0600, another owner) is a source-down saying so, and the
    actions that need it defer (no failure toward a breaker), instead of an SQLite error or "does not exist"."""
    database.chmod(0o600)
    seen = json.loads(run_as(box, DAEMON, UNREADABLE_PROBE, database).stdout)
    reason = f"database {database} cannot be read by the daemon's user (permission denied): see docs/SAFETY.md"
    assert seen == {"sample": reason, "count": f"deferred: {reason}"}


HAND_OVER = """
import sqlite3, sys
from pathlib import Path
from strategies.actions.sqlite import hand_over_sidecars
path = Path(sys.argv[1])
# what the daemon's open leaves when the backend closed the database in the instant before it: -wal and -shm
# created by the daemon's user (in a directory without the setgid bit, so with the daemon's own group)
conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
conn.execute("SELECT count(*) FROM viewer_sessions").fetchone()
conn.close()
print(len(hand_over_sidecars(path)))
"""


def test_sidecars_the_daemon_created_in_a_race_are_handed_back(box: Sandbox, database: Path) -> None:
    """-wal/-shm the daemon's user created (the race the checks cannot close) are given the database's group and
    mode, so a backend in that group (the shared group of docs/SAFETY.md) can write again."""
    assert run_as(box, DAEMON, HAND_OVER, database).stdout.splitlines()[-1] == "2"
    owners = {suffix: os.stat(f"{database}{suffix}") for suffix in ("-wal", "-shm")}
    assert {(st.st_gid, st.st_mode & 0o777) for st in owners.values()} == {(SHARED_GID, 0o664)}
    in_group = Identity(uid=BACKEND_UID, gid=BACKEND_UID, groups=(SHARED_GID,))
    after = box.python_code(in_group, BACKEND_WRITE, str(database))
    assert after.returncode == 0, after.stderr
