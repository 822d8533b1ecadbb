"""optimizer.service: the unit as systemd reads it, its sandbox, file access for its user, and its environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from optimizer import service
from optimizer.cli import find_token
from optimizer.service import Account, access_problem, parse_unit, sandbox_problem, service_environment

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "cctv-optimizer.service"
STRANGER = Account(name="stranger", uid=54321, gids=frozenset({54321}))


def test_shipped_unit_is_read_with_its_sandbox() -> None:
    """The shipped unit's user, credential, state directory and sandbox settings come out as systemd sees them."""
    unit = parse_unit(UNIT)
    assert unit.user == "cctv-optimizer" and unit.group == "cctv-optimizer"
    assert unit.credentials == {"api-token": Path("/etc/cctv-optimizer/api-token")}
    assert unit.state_directory == Path("/var/lib/cctv-optimizer")
    assert unit.environment_files == [(Path("/etc/cctv-optimizer/env"), True)]
    assert unit.words("ReadWritePaths") == ["-/opt/rafnet-cctv/backend/data", "-/dev/shm/mediamtx-live"]


def test_dropin_resets_and_extends_lists(tmp_path: Path) -> None:
    """An empty ReadWritePaths= in a drop-in resets the list; later lines and drop-ins add in name order."""
    dropins = tmp_path / "cctv-optimizer.service.d"
    dropins.mkdir()
    (dropins / "20-more.conf").write_text("[Service]\nReadWritePaths=/srv/hls\n")
    (dropins / "10-paths.conf").write_text("[Service]\nReadWritePaths=\nReadWritePaths=/srv/cctv/data\nUser=other\n")
    unit = parse_unit(UNIT, sorted(dropins.glob("*.conf")))
    assert unit.words("ReadWritePaths") == ["/srv/cctv/data", "/srv/hls"]
    assert unit.user == "other"


@pytest.mark.parametrize(
    ("path", "write", "fragment"),
    [
        ("/root/rafnet-cctv/backend/data/cctv.db", False, "hidden from the service by ProtectHome=yes"),
        ("/home/pi/cctv/data", True, "hidden from the service by ProtectHome=yes"),
        ("/tmp/cctv.db", False, "it has its own /tmp (PrivateTmp=yes"),
        ("/srv/cctv/data/cctv.db", True, "read-only for the service (ProtectSystem=strict"),
        ("/srv/cctv/data/cctv.db", False, None),
        ("/opt/rafnet-cctv/backend/data/cctv.db", True, None),
        ("/dev/shm/mediamtx-live", True, None),
        ("/var/lib/cctv-optimizer", True, None),
    ],
)
def test_sandbox_of_the_shipped_unit(path: str, write: bool, fragment: str | None) -> None:
    """ProtectHome hides /root and /home, PrivateTmp hides /tmp, ProtectSystem=strict allows only ReadWritePaths."""
    problem = sandbox_problem(Path(path), parse_unit(UNIT), write=write)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem


def test_access_by_mode_owner_and_group(open_tmp_path: Path) -> None:
    """Access is judged by the owner, group and other bits, and every directory above must be enterable."""
    top = open_tmp_path / "top"
    top.mkdir()
    data = top / "cctv.db"
    data.write_text("x")
    gid = data.stat().st_gid
    os.chmod(top, 0o750)
    os.chmod(data, 0o660)
    member = Account(name="member", uid=54321, gids=frozenset({gid}))
    assert access_problem(data, member, "rw") is None
    blocked = access_problem(data, STRANGER, "r")
    assert blocked is not None and "stranger cannot enter" in blocked and "mode 0750" in blocked
    os.chmod(top, 0o755)
    denied = access_problem(data, STRANGER, "r")
    assert denied is not None and "stranger cannot read" in denied and "mode 0660" in denied
    os.chmod(data, 0o664)
    assert access_problem(data, STRANGER, "r") is None
    assert access_problem(data, STRANGER, "rw") is not None
    assert access_problem(top / "absent", member, "r") == f"{top / 'absent'} does not exist"


def test_environment_is_the_env_file_not_the_shell(tmp_path: Path) -> None:
    """From an env file: its assignments (with their lines), the unit's state directory; nothing of the shell."""
    env_file = tmp_path / "env"
    env_file.write_text("# settings\nMEMORY_THRESHOLD=0.7\nexport CPU_THRESHOLD=0.5\n")
    svc = service_environment({"LOG_LEVEL": "debug"}, env_file=env_file, unit_file=UNIT)
    assert svc.environ == {"MEMORY_THRESHOLD": "0.7", "STATE_DIRECTORY": "/var/lib/cctv-optimizer"}
    assert svc.origins["MEMORY_THRESHOLD"] == f"{env_file} line 2"
    assert any("'export CPU_THRESHOLD' is not a valid variable name" in p for p in svc.problems)
    shell = service_environment({"LOG_LEVEL": "debug"}, use_env_file=False, unit_file=UNIT)
    assert shell.environ == {"LOG_LEVEL": "debug"} and not shell.from_service


def test_token_search_order_and_explanation(tmp_path: Path) -> None:
    """The CLI takes the token where the daemon does (setting, credential, install.sh's) and says where it looked."""
    unit_file = tmp_path / "cctv-optimizer.service"
    token = tmp_path / "etc" / "api-token"
    unit_file.write_text(f"[Service]\nUser=cctv-optimizer\nLoadCredential=api-token:{token}\nStateDirectory=x\n")
    record = service.InstallRecord(
        path=tmp_path / "record", root=tmp_path, prefix=tmp_path / "opt", etc=tmp_path / "etc", unit_dir=tmp_path
    )
    env_file = tmp_path / "env"
    env_file.write_text("")
    svc = service_environment({}, env_file=env_file, unit_file=unit_file, record=record)
    search = find_token(None, {}, svc, None)
    assert search.token is None
    assert f"{token} (LoadCredential=api-token in {unit_file}): does not exist" in search.explain()
    assert "--token-file FILE or CCTV_OPTIMIZER_API__TOKEN_FILE=FILE" in search.explain()
    token.parent.mkdir()
    token.write_text("installed-token")
    found = find_token(None, {}, svc, None)
    assert found.token == "installed-token" and found.source is not None and str(token) in found.source
    other = tmp_path / "other"
    other.write_text("flag-token\n")
    assert find_token(other, {}, svc, None).token == "flag-token"
    assert find_token(None, {"CCTV_OPTIMIZER_API__TOKEN_FILE": str(other)}, svc, None).token == "flag-token"


def test_missing_env_file_is_a_problem(tmp_path: Path) -> None:
    """An env file named with --env-file that cannot be read is a problem, not the shell's environment instead."""
    svc = service_environment({"LOG_LEVEL": "debug"}, env_file=tmp_path / "absent", unit_file=UNIT)
    assert svc.from_service and "LOG_LEVEL" not in svc.environ
    assert svc.problems == (f"cannot read the env file {tmp_path / 'absent'}: No such file or directory",)
