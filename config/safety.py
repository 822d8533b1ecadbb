"""Which directories the HLS prune may work in: the rules behind ``backend.hls_directory`` (docs/SAFETY.md).

The prune deletes files, so its root is checked against everything it must never reach, after resolving
symbolic links and ``..`` (``/dev/shm/../../var/lib`` is ``/var/lib``):

- a system tree (``/etc``, ``/usr``, ``/var/lib``, ``/boot``, ``/root``, ``/dev`` outside ``/dev/shm`` ...): the
  root may not be one, contain one, or lie inside one;
- a broad directory (``/``, ``/var``, ``/opt``, ``/srv``, ``/home`` and every user's home, an installation
  directly below ``/opt``, ``/tmp``, ``/run``, ``/dev/shm`` ...): the root may not be one or contain one (it may
  lie inside one);
- the backend database's directory, the daemon's state directory, its database backup directory and its own
  installation (its package directory and its virtualenv): the root may not be, contain, or lie inside any of them;
- and the root must be on a RAM file system (tmpfs, ramfs), where MediaMTX's ``hlsDirectory`` lives
  (``/dev/shm/mediamtx-live``), unless ``backend.hls_allow_disk`` says otherwise.
"""

from __future__ import annotations

import functools
import os
import pwd
import sys
from collections.abc import Iterable
from pathlib import Path

SYSTEM_TREES = tuple(
    Path(p)
    for p in (
        "/etc",
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/boot",
        "/efi",
        "/proc",
        "/sys",
        "/root",
        "/dev",
        "/snap",
        "/var/lib",
        "/var/log",
        "/var/cache",
        "/var/spool",
        "/var/mail",
        "/var/backups",
        "/var/opt",
        "/var/www",
    )
)
BROAD = tuple(
    Path(p)
    for p in (
        "/",
        "/var",
        "/opt",
        "/srv",
        "/home",
        "/mnt",
        "/media",
        "/tmp",
        "/var/tmp",
        "/run",
        "/run/user",
        "/run/shm",
        "/dev/shm",
        "/data",
    )
)
# every directory directly below these is somebody's installation or home: never a root
INSTALL_PARENTS = (Path("/opt"), Path("/home"), Path("/usr/local"))
# the one place inside a system tree where a root may lie: a directory below /dev/shm
RAM_EXCEPTION = Path("/dev/shm")
RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
MOUNTINFO = Path("/proc/self/mountinfo")


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as octal (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_text(mountinfo: Path = MOUNTINFO) -> str:
    """The mount table as the kernel lists it now; empty when it cannot be read."""
    try:
        return mountinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def mounts(mountinfo: Path = MOUNTINFO) -> list[tuple[Path, str]]:
    """(mount point, file system type) for every mount, in mount order; empty when mountinfo cannot be read."""
    return list(parse_mounts(mounts_text(mountinfo)))


@functools.lru_cache(maxsize=4)
def parse_mounts(text: str) -> tuple[tuple[Path, str], ...]:
    """The (mount point, type) pairs of a mountinfo text; the same text is parsed once (it rarely changes)."""
    out: list[tuple[Path, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if sep + 1 < len(fields):
            out.append((Path(_unescape(fields[4])), fields[sep + 1]))
    return tuple(out)


def filesystem_of(path: Path, mountinfo: Path = MOUNTINFO) -> str | None:
    """The type of the file system ``path`` (absolute, resolved) is on: the deepest mount holding it, last one wins."""
    best: tuple[int, str] | None = None
    for point, kind in mounts(mountinfo):
        if path == point or path.is_relative_to(point):
            depth = len(point.parts)
            if best is None or depth >= best[0]:
                best = (depth, kind)
    return best[1] if best is not None else None


def install_directories() -> tuple[Path, ...]:
    """Where the daemon itself lives: the directory holding its packages, and its (virtual) environment."""
    package_parent = Path(__file__).resolve().parent.parent
    found = {package_parent, Path(os.path.realpath(sys.prefix)), Path(os.path.realpath(sys.exec_prefix))}
    return tuple(sorted(found))


def home_directories() -> tuple[Path, ...]:
    """Every user's home directory (resolved), except ``/`` and ones that do not exist."""
    homes: set[Path] = set()
    try:
        entries = pwd.getpwall()
    except OSError:
        entries = []
    for entry in entries:
        home = Path(os.path.realpath(entry.pw_dir))
        if home != Path("/") and home.is_dir():
            homes.add(home)
    return tuple(sorted(homes))


def _overlap(root: Path, other: Path) -> str | None:
    """How ``root`` and ``other`` overlap (``is``, ``contains``, ``lies inside``), or None."""
    if root == other:
        return "is"
    if other.is_relative_to(root):
        return "contains"
    if root.is_relative_to(other):
        return "lies inside"
    return None


def hls_root_problems(  # noqa: PLR0913 -- each path the root must stay clear of is its own argument
    hls_directory: Path,
    *,
    database: Path | None,
    state_directory: Path,
    allow_disk: bool,
    backup_directory: Path | None = None,
    install: Iterable[Path] | None = None,
    homes: Iterable[Path] | None = None,
    mountinfo: Path = MOUNTINFO,
) -> list[str]:
    """Why the HLS prune may not work in ``hls_directory`` (empty when it may), one sentence per rule broken."""
    if not hls_directory.is_absolute():
        return ["must be an absolute path (e.g. /dev/shm/mediamtx-live)"]
    root = Path(os.path.realpath(hls_directory))
    shown = str(hls_directory) if root == hls_directory else f"{hls_directory} (resolves to {root})"
    problems: list[str] = []
    for tree in SYSTEM_TREES:
        how = _overlap(root, tree)
        if how is None:
            continue
        if tree == Path("/dev") and root.is_relative_to(RAM_EXCEPTION) and root != RAM_EXCEPTION:
            continue
        problems.append(f"{shown} {how} the system directory {tree}: the prune must never reach it")
    broad = [*BROAD, *(home_directories() if homes is None else homes)]
    broad += [
        parent / root.relative_to(parent).parts[0]
        for parent in INSTALL_PARENTS
        if root.is_relative_to(parent) and root != parent
    ]
    for directory in broad:
        how = _overlap(root, directory)
        if how in ("is", "contains"):
            problems.append(f"{shown} {how} {directory}, far too broad: name MediaMTX's own hlsDirectory")
    owned = [("the state directory", Path(os.path.realpath(state_directory)))]
    if database is not None:
        owned.append(("the backend database's directory", Path(os.path.realpath(database)).parent))
    if backup_directory is not None:
        owned.append(("the database backup directory", Path(os.path.realpath(backup_directory))))
    owned += [("the daemon's own installation", p) for p in (install_directories() if install is None else install)]
    for what, directory in owned:
        how = _overlap(root, directory)
        if how is not None:
            problems.append(f"{shown} {how} {what} {directory}")
    if not problems and not allow_disk:
        kind = filesystem_of(root, mountinfo)
        if kind not in RAM_FILESYSTEMS:
            on = f"on {kind}" if kind else "on a file system that cannot be determined"
            problems.append(
                f"{shown} is {on}, not in RAM (tmpfs): MediaMTX's hlsDirectory normally lives in /dev/shm; "
                "set backend.hls_allow_disk=true if it really is on disk"
            )
    return problems
