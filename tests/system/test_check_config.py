"""check-config of an install staged with ``install.sh --root``: it checks what the service will run with.

The installed command finds its env file and unit through install.sh's record, reads the env file as systemd
does (not the shell's environment), and checks every file the service will use as the unit's user (``nobody``
here, as the staged install creates no user) and inside the unit's sandbox. The stand-in backend lives in the
staged root, shared with the service through a group and setgid directories, with a drop-in that makes it
writable (ReadWritePaths=) and visible (the test root is under /tmp, which PrivateTmp= would hide).
"""

from __future__ import annotations

import grp
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.staging import Staged, clean_env, stage_install

SERVICE_USER = "nobody"


@dataclass(frozen=True, slots=True, kw_only=True)
class Site:
    """The staged install and the backend files beside it."""

    staged: Staged
    data: Path
    database: Path
    hls: Path
    password: Path

    @property
    def env_file(self) -> Path:
        """The live env file."""
        return self.staged.etc / "env"


def group_of(user: str) -> int:
    """The primary group of a user."""
    import pwd

    return pwd.getpwnam(user).pw_gid


@pytest.fixture(scope="module")
def site(wheel: Path) -> Iterator[Site]:
    """One staged install with a backend database and HLS directory the service user may use through its group."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="cctv-optimizer-staged-", dir="/tmp"))
    root.chmod(0o755)
    try:
        staged = stage_install(root, wheel)
        gid = group_of(SERVICE_USER)
        data, hls = root / "backend" / "data", root / "backend" / "hls"
        for directory in (data, hls):
            directory.mkdir(parents=True)
            os.chown(directory, 0, gid)
            directory.chmod(0o2770)  # group-writable and setgid: new files keep the group
        (root / "backend").chmod(0o755)
        database = data / "cctv.db"
        conn = sqlite3.connect(database)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.close()
        database.chmod(0o660)
        password = staged.etc / "backend-admin-password"
        password.write_text("pw-" + "x" * 20 + "\n")
        password.chmod(0o640)
        os.chown(password, 0, gid)
        dropins = staged.unit_dir / "cctv-optimizer.service.d"
        dropins.mkdir()
        (dropins / "50-site.conf").write_text(
            "[Service]\n"
            "# the backend's files: writable for the service (ProtectSystem=strict)\n"
            f"ReadWritePaths={root / 'backend'}\n"
            "# this test's root is under /tmp, which the unit's private /tmp would hide\n"
            "PrivateTmp=no\n"
            f"LoadCredential=backend-admin-password:{password}\n"
        )
        yield Site(staged=staged, data=data, database=database, hls=hls, password=password)
    finally:
        shutil.rmtree(root, ignore_errors=True)


GOOD = (
    "# edited by the operator\n"
    "MEMORY_THRESHOLD=0.85\n"
    "CCTV_OPTIMIZER_BACKEND__ADMIN_USERNAME=admin\n"
    "CCTV_OPTIMIZER_BACKEND__ADMIN_PASSWORD_FILE=/run/credentials/cctv-optimizer.service/backend-admin-password\n"
)


def check(site: Site, *extra_lines: str, user: str | None = SERVICE_USER) -> tuple[int, str]:
    """Write the env file (the paths of this site, then ``extra_lines``) and run the installed check-config."""
    site.env_file.write_text(
        GOOD
        + f"CCTV_OPTIMIZER_BACKEND__DATABASE={site.database}\n"
        + f"CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY={site.hls}\n"
        # the site's HLS directory is on disk, not MediaMTX's tmpfs
        + "CCTV_OPTIMIZER_BACKEND__HLS_ALLOW_DISK=true\n"
        + "".join(line + "\n" for line in extra_lines)
    )
    # the shell's own (wrong) settings must not count: the service never sees them
    shell = {**clean_env(), "MEMORY_THRESHOLD": "7", "CCTV_OPTIMIZER_BOGUS": "1"}
    args = [str(site.staged.command), "check-config"] + (["--user", user] if user else [])
    proc = subprocess.run(args, env=shell, capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in proc.stdout + proc.stderr
    return proc.returncode, proc.stdout + proc.stderr


def line_of(site: Site, text: str) -> int:
    """The env file's line number of a line."""
    return site.env_file.read_text().splitlines().index(text) + 1


def test_good_configuration_passes_with_the_env_file_and_unit_named(site: Site) -> None:
    """The installed command checks its own env file and unit, not the shell's environment, and accepts them."""
    status, out = check(site)
    assert status == 0, out
    assert f"env file {site.env_file}, unit {site.staged.unit} (User=cctv-optimizer)" in out
    assert "memory_threshold" in out and f"env MEMORY_THRESHOLD, {site.env_file} line 2" in out
    assert f"files checked for user {SERVICE_USER}" in out


def test_bad_value_in_the_env_file_is_exit_78_with_its_line(site: Site) -> None:
    """MEMORY_THRESHOLD=1.5 in the env file is refused, naming the line, the unit and an example."""
    status, out = check(site, "MEMORY_THRESHOLD=1.5")
    assert status == 78, out
    line = line_of(site, "MEMORY_THRESHOLD=1.5")
    assert (
        f"MEMORY_THRESHOLD=1.5: must be a ratio from 0.05 to 1, e.g. 0.8 for 80 % "
        f"(env MEMORY_THRESHOLD, {site.env_file} line {line})"
    ) in out


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (
            "OPTIMIZATION_INTERVAL=30",
            "OPTIMIZATION_INTERVAL=30: must be at least 1000 milliseconds (e.g. 30000 for 30 s)",
        ),
        ("CPU_THRESHOLD=80", "CPU_THRESHOLD=80: must be a ratio from 0.05 to 1, e.g. 0.8 for 80 %"),
        ("MEMORY_TRESHOLD=0.5", "MEMORY_TRESHOLD: not a setting, ignored; did you mean MEMORY_THRESHOLD?"),
        (
            "CCTV_OPTIMIZER_BACKEND__HLS_DIRECTROY=/x",
            "unknown setting; did you mean CCTV_OPTIMIZER_BACKEND__HLS_DIRECTORY?",
        ),
        ("MEMORY_THRESHOLD=0.8 # eighty percent", "MEMORY_THRESHOLD=0.8 # eighty percent: expected a ratio"),
        ("export LOG_LEVEL=debug", "'export LOG_LEVEL' is not a valid variable name; systemd ignores the line"),
    ],
)
def test_mistakes_an_operator_makes_are_named(site: Site, line: str, fragment: str) -> None:
    """Units, examples, misspellings with "did you mean", shell syntax systemd does not speak: each is exit 78."""
    status, out = check(site, line)
    assert status == 78, out
    assert fragment in out


def test_unknown_variable_is_a_warning(site: Site) -> None:
    """A variable unlike any setting is passed on by systemd and ignored by the daemon: said, not fatal."""
    status, out = check(site, "TZ=UTC")
    assert status == 0, out
    assert f"warning: TZ ({site.env_file} line {line_of(site, 'TZ=UTC')}) is not a cctv-optimizer setting" in out


def test_missing_named_file_is_a_problem(site: Site) -> None:
    """A secret file that is not there is named as missing, not shown as "(contents redacted)"."""
    missing = site.staged.root / "nowhere" / "api-key"
    status, out = check(site, f"CCTV_OPTIMIZER_BACKEND__API_KEY_FILE={missing}")
    assert status == 78, out
    assert f"CCTV_OPTIMIZER_BACKEND__API_KEY_FILE={missing}: {missing} does not exist" in out
    assert "(contents redacted)" not in out


def test_secret_readable_by_others_is_refused_or_allowed(site: Site) -> None:
    """A world-readable secret is exit 78 with its mode; with secrets.allow_world_readable a warning only."""
    key = site.staged.etc / "backend-api-key"
    key.write_text("k" * 24 + "\n")
    try:
        key.chmod(0o644)
        status, out = check(site, f"CCTV_OPTIMIZER_BACKEND__API_KEY_FILE={key}")
        assert status == 78, out
        assert f"{key} is readable by others (mode 0644): chmod o-rwx {key}" in out
        status, out = check(
            site, f"CCTV_OPTIMIZER_BACKEND__API_KEY_FILE={key}", "CCTV_OPTIMIZER_SECRETS__ALLOW_WORLD_READABLE=true"
        )
        assert status == 0, out
        assert f"warning: CCTV_OPTIMIZER_BACKEND__API_KEY_FILE={key}: {key} is readable by others (mode 0644)" in out
    finally:
        key.unlink()


def test_file_the_service_user_cannot_read_is_a_problem(site: Site) -> None:
    """A database its group cannot write, or a secret the service user cannot read, is named with mode and owner."""
    site.database.chmod(0o640)
    key = site.staged.etc / "backend-api-key"
    key.write_text("k" * 24 + "\n")
    key.chmod(0o600)
    try:
        status, out = check(site, f"CCTV_OPTIMIZER_BACKEND__API_KEY_FILE={key}")
        assert status == 78, out
        assert f"backend.database: {SERVICE_USER} cannot read and write {site.database} (mode 0640" in out
        assert f"backend.api_key_file: {SERVICE_USER} cannot read {key} (mode 0600, owner root:root)" in out
    finally:
        site.database.chmod(0o660)
        key.unlink()


def test_credential_source_missing_is_a_problem(site: Site) -> None:
    """The unit's LoadCredential= source must exist: without it systemd does not start the service."""
    token = site.staged.etc / "api-token"
    saved = token.read_bytes()
    token.unlink()
    try:
        status, out = check(site)
        assert status == 78, out
        assert f"LoadCredential=api-token:{token}" in out and "systemd refuses to start the service" in out
    finally:
        token.write_bytes(saved)
        token.chmod(0o640)


def test_path_outside_read_write_paths_is_a_problem(site: Site) -> None:
    """Without the drop-in's ReadWritePaths= the backend's database is read-only for the service."""
    dropin = site.staged.unit_dir / "cctv-optimizer.service.d" / "50-site.conf"
    saved = dropin.read_text()
    dropin.write_text("\n".join(line for line in saved.splitlines() if not line.startswith("ReadWritePaths=")))
    try:
        status, out = check(site)
        assert status == 78, out
        assert f"{site.database} is read-only for the service (ProtectSystem=strict" in out
        assert "systemctl edit cctv-optimizer" in out
    finally:
        dropin.write_text(saved)


def test_unknown_service_user_is_said(site: Site) -> None:
    """The staged install creates no user: without --user the access checks say why they were skipped."""
    try:
        grp.getgrnam("cctv-optimizer")
        pytest.skip("this host has a cctv-optimizer group, so the user may exist too")
    except KeyError:
        pass
    status, out = check(site, user=None)
    assert status == 0, out
    assert "file access not checked for the service: the service user cctv-optimizer does not exist" in out
