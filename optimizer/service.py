"""What the installed service runs with: where install.sh put things, the unit (with drop-ins), its env file.

check-config and the CLI read the configuration the way systemd hands it to the daemon, not the shell's:
the env file parsed as ``EnvironmentFile=`` does (config.envfile), the unit's ``Environment=`` lines,
``$STATE_DIRECTORY`` from ``StateDirectory=``, and the credentials ``LoadCredential=`` copies in. install.sh
leaves a record of where it installed (``cctv-optimizer.install`` in the virtualenv), so the installed command
finds its own env file, unit and token even in a root staged with ``install.sh --root DIR``.

File access is judged for the unit's ``User=`` by mode, owner and group arithmetic over the file and every
directory above it (the unit grants no capability that bypasses permissions), and against the unit's
sandbox: ``ProtectHome=`` hides /home, /root and /run/user, ``PrivateTmp=`` gives the service its own /tmp,
and ``ProtectSystem=strict`` leaves only ``ReadWritePaths=`` (and the state directory) writable.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from config import envfile

SERVICE = "cctv-optimizer"
UNIT_NAME = f"{SERVICE}.service"
INSTALL_RECORD = f"{SERVICE}.install"
DEFAULT_ETC = Path("/etc") / SERVICE
# where systemd looks for units, most specific first (systemd.unit(5), "Unit File Load Path")
UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
    Path("/lib/systemd/system"),
)
CREDENTIALS_ROOT = Path("/run/credentials")


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallRecord:
    """Where install.sh put the pieces (written by it into the virtualenv)."""

    path: Path
    root: Path | None
    prefix: Path
    etc: Path
    unit_dir: Path

    @property
    def env_file(self) -> Path:
        """The live env file."""
        return self.etc / "env"

    @property
    def token_file(self) -> Path:
        """The API token install.sh generated."""
        return self.etc / "api-token"

    @property
    def unit_file(self) -> Path:
        """The installed unit."""
        return self.unit_dir / UNIT_NAME


def read_install_record(prefix: Path | None = None) -> InstallRecord | None:
    """The record in this interpreter's virtualenv (``sys.prefix``), or None when install.sh did not install it."""
    path = (prefix or Path(sys.prefix)) / INSTALL_RECORD
    try:
        values = envfile.environment(envfile.parse(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return None
    try:
        return InstallRecord(
            path=path,
            root=Path(values["ROOT"]) if values.get("ROOT") else None,
            prefix=Path(values["PREFIX"]),
            etc=Path(values["ETC"]),
            unit_dir=Path(values["UNIT_DIR"]),
        )
    except KeyError:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unit:
    """The ``[Service]`` directives of the unit and its drop-ins, list settings already reset where emptied."""

    path: Path
    dropins: tuple[Path, ...]
    directives: Mapping[str, tuple[str, ...]]

    def last(self, key: str, default: str | None = None) -> str | None:
        """The effective value of a single-valued directive."""
        values = self.directives.get(key)
        return values[-1] if values else default

    def words(self, key: str) -> list[str]:
        """Every space-separated word of a list directive, over all its lines."""
        return [w for line in self.directives.get(key, ()) for w in line.split()]

    @property
    def user(self) -> str:
        """``User=`` (root when unset)."""
        return self.last("User") or "root"

    @property
    def group(self) -> str | None:
        """``Group=``, when set."""
        return self.last("Group")

    @property
    def credentials(self) -> dict[str, Path]:
        """``LoadCredential=NAME:PATH`` as {NAME: PATH} (the files systemd copies in at start)."""
        out: dict[str, Path] = {}
        for line in self.directives.get("LoadCredential", ()):
            name, sep, source = line.partition(":")
            if sep and source.startswith("/"):
                out[name.strip()] = Path(source.strip())
        return out

    @property
    def state_directory(self) -> Path | None:
        """``$STATE_DIRECTORY`` the service gets (the first ``StateDirectory=`` under /var/lib)."""
        words = self.words("StateDirectory")
        return Path("/var/lib") / words[0].split(":", 1)[0] if words else None

    @property
    def environment(self) -> dict[str, str]:
        """``Environment=`` assignments (double-quoted words may hold spaces)."""
        out: dict[str, str] = {}
        for line in self.directives.get("Environment", ()):
            for word in _split_quoted(line):
                name, sep, value = word.partition("=")
                if sep:
                    out[name] = value
        return out

    @property
    def environment_files(self) -> list[tuple[Path, bool]]:
        """(path, optional) of each ``EnvironmentFile=``; a leading dash makes one optional."""
        out = []
        for line in self.directives.get("EnvironmentFile", ()):
            optional = line.startswith("-")
            out.append((Path(line.lstrip("-")), optional))
        return out


def _split_quoted(line: str) -> list[str]:
    """Split on spaces outside double quotes, dropping the quotes."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for c in line:
        if c == '"':
            quoted = not quoted
        elif c.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(c)
    if current:
        words.append("".join(current))
    return words


def _service_lines(text: str) -> Iterable[tuple[str, str]]:
    """(key, value) of each ``[Service]`` directive, continuation lines joined."""
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


def parse_unit(path: Path, dropins: Iterable[Path] = ()) -> Unit:
    """Read a unit and its drop-ins in order; an empty assignment resets a list directive, as in systemd."""
    directives: dict[str, list[str]] = {}
    used = []
    for source in (path, *dropins):
        try:
            text = source.read_text(encoding="utf-8")
        except OSError:
            continue
        if source != path:
            used.append(source)
        for key, value in _service_lines(text):
            if value == "":
                directives[key] = []
            else:
                directives.setdefault(key, []).append(value)
    return Unit(
        path=path,
        dropins=tuple(used),
        directives={k: tuple(v) for k, v in directives.items()},
    )


def find_unit(explicit: Path | None, record: InstallRecord | None) -> Unit | None:
    """The unit the service runs from: the one named, the one install.sh wrote, else the first in systemd's path."""
    if explicit is not None:
        candidates = [explicit]
    elif record is not None:
        candidates = [record.unit_file]
    else:
        candidates = [d / UNIT_NAME for d in UNIT_DIRS]
    for candidate in candidates:
        if candidate.is_file():
            dropin_dirs = [candidate.parent / f"{UNIT_NAME}.d"]
            if record is None and explicit is None:
                dropin_dirs += [d / f"{UNIT_NAME}.d" for d in UNIT_DIRS if d != candidate.parent]
            # drop-ins apply in the order of their file names, whichever directory they are in
            dropins = sorted(
                (p for d in dropin_dirs if d.is_dir() for p in d.glob("*.conf")),
                key=lambda p: p.name,
            )
            return parse_unit(candidate, dropins)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEnvironment:
    """The environment the daemon gets, and where each variable came from."""

    environ: dict[str, str]
    origins: dict[str, str]
    env_file: Path | None
    assignments: tuple[envfile.Assignment, ...] = ()
    unit: Unit | None = None
    record: InstallRecord | None = None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def from_service(self) -> bool:
        """True when built from the env file (the service's view), False for the shell's environment."""
        return self.env_file is not None


def default_env_file(record: InstallRecord | None) -> Path | None:
    """The installed env file when there is one: install.sh's record first, else /etc/cctv-optimizer/env."""
    for candidate in ((record.env_file,) if record is not None else ()) + (DEFAULT_ETC / "env",):
        if candidate.is_file():
            return candidate
    return None


def service_environment(
    shell: Mapping[str, str],
    *,
    env_file: Path | None = None,
    use_env_file: bool = True,
    unit_file: Path | None = None,
    record: InstallRecord | None = None,
) -> ServiceEnvironment:
    """Build the daemon's environment as systemd would; the shell's environment when no env file is in use."""
    record = record if record is not None else read_install_record()
    unit = find_unit(unit_file, record)
    if not use_env_file:
        return ServiceEnvironment(environ=dict(shell), origins={}, env_file=None, unit=unit, record=record)
    path = env_file if env_file is not None else default_env_file(record)
    if path is None:
        return ServiceEnvironment(environ=dict(shell), origins={}, env_file=None, unit=unit, record=record)
    problems: list[str] = []
    notes: list[str] = []
    try:
        assignments = envfile.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        problems.append(f"cannot read the env file {path}: {reason}")
        assignments = []
    environ: dict[str, str] = {}
    origins: dict[str, str] = {}
    if unit is not None:
        for name, value in unit.environment.items():
            environ[name] = value
            origins[name] = f"Environment= in {unit.path}"
        declared = [p for p, _ in unit.environment_files]
        if declared and path not in declared:
            notes.append(f"the unit reads {', '.join(map(str, declared))}, not {path}")
    for a in assignments:
        if not a.valid:
            problems.append(
                f"{path} line {a.line}: {a.name!r} is not a valid variable name; systemd ignores the line"
                + (" (no 'export': plain NAME=value lines)" if a.name.startswith("export ") else "")
            )
            continue
        environ[a.name] = a.value
        origins[a.name] = f"{path} line {a.line}"
    if unit is not None and unit.state_directory is not None:
        environ.setdefault("STATE_DIRECTORY", str(unit.state_directory))
        origins.setdefault("STATE_DIRECTORY", f"StateDirectory= in {unit.path}")
    return ServiceEnvironment(
        environ=environ,
        origins=origins,
        env_file=path,
        assignments=tuple(assignments),
        unit=unit,
        record=record,
        problems=tuple(problems),
        notes=tuple(notes),
    )


# file access for the service user --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """The user the service runs as, with every group it is in."""

    name: str
    uid: int
    gids: frozenset[int]


def service_account(unit: Unit | None, user: str | None = None) -> Account | str:
    """The unit's ``User=`` (or ``user``) with ``Group=`` and ``SupplementaryGroups=``; a reason when unknown."""
    name = user or (unit.user if unit is not None else None)
    if name is None:
        return "no unit found, so the service user is unknown"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return f"the service user {name} does not exist on this host (install.sh creates it)"
    gid = entry.pw_gid
    groups = set(os.getgrouplist(name, gid))
    if unit is not None and user is None:
        for group_name in ([unit.group] if unit.group else []) + unit.words("SupplementaryGroups"):
            try:
                groups.add(grp.getgrnam(group_name).gr_gid)
            except KeyError:
                continue
    return Account(name=name, uid=entry.pw_uid, gids=frozenset(groups))


_BITS = {"r": (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH), "w": (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)}
_BITS["x"] = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)


def _allows(info: os.stat_result, account: Account, want: str) -> bool:
    """Whether the mode bits give ``account`` every access in ``want`` (owner, else group, else others)."""
    if account.uid == 0:
        return "x" not in want or bool(info.st_mode & 0o111) or stat.S_ISDIR(info.st_mode)
    column = 0 if info.st_uid == account.uid else 1 if info.st_gid in account.gids else 2
    return all(info.st_mode & _BITS[w][column] for w in want)


_WORDS = {"r": "read", "w": "write", "x": "enter"}


def access_problem(path: Path, account: Account, want: str) -> str | None:
    """Why ``account`` cannot ``want`` (``r``, ``rw``, ``rwx``...) the path, or None when it can."""
    absolute = Path(os.path.abspath(path))
    for parent in reversed(absolute.parents):
        try:
            info = parent.stat()
        except OSError as exc:
            return f"{parent}: {exc.strerror}"
        if not _allows(info, account, "x"):
            return f"{account.name} cannot enter {parent} (mode {stat.S_IMODE(info.st_mode):04o}, {_owner(info)})"
    try:
        info = absolute.stat()
    except FileNotFoundError:
        return f"{absolute} does not exist"
    except OSError as exc:
        return f"{absolute}: {exc.strerror}"
    if not _allows(info, account, want):
        wanted = " and ".join(_WORDS[w] for w in want)
        return f"{account.name} cannot {wanted} {absolute} (mode {stat.S_IMODE(info.st_mode):04o}, {_owner(info)})"
    return None


def _owner(info: os.stat_result) -> str:
    """``owner root:rafnet``."""
    try:
        user = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        user = str(info.st_uid)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        group = str(info.st_gid)
    return f"owner {user}:{group}"


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def sandbox_problem(path: Path, unit: Unit, *, write: bool) -> str | None:
    """Why the unit's sandbox hides the path from the service or keeps it read-only, or None."""
    absolute = Path(os.path.normpath(os.path.abspath(path)))
    protect_home = (unit.last("ProtectHome") or "no").lower()
    if protect_home in ("yes", "true", "1", "tmpfs") and _under(
        absolute, (Path("/home"), Path("/root"), Path("/run/user"))
    ):
        return (
            f"{absolute} is hidden from the service by ProtectHome={protect_home} in {unit.path}: move it, or set "
            "ProtectHome=read-only in a drop-in (systemctl edit cctv-optimizer)"
        )
    if (unit.last("PrivateTmp") or "no").lower() in ("yes", "true", "1") and _under(
        absolute, (Path("/tmp"), Path("/var/tmp"))
    ):
        return f"{absolute} is not visible to the service: it has its own /tmp (PrivateTmp=yes in {unit.path})"
    if not write:
        return None
    if protect_home == "read-only" and _under(absolute, (Path("/home"), Path("/root"), Path("/run/user"))):
        return f"{absolute} is read-only for the service (ProtectHome=read-only in {unit.path})"
    if (unit.last("ProtectSystem") or "no").lower() == "strict":
        writable = [Path(w.lstrip("-+")) for w in unit.words("ReadWritePaths")]
        if unit.state_directory is not None:
            writable.append(unit.state_directory)
        # API file systems stay writable under ProtectSystem=strict (/dev/shm among them)
        writable += [Path("/dev"), Path("/proc"), Path("/sys"), Path("/run/credentials")]
        if not _under(absolute, writable):
            listed = " ".join(str(w) for w in unit.words("ReadWritePaths")) or "nothing"
            return (
                f"{absolute} is read-only for the service (ProtectSystem=strict; ReadWritePaths= lists {listed}): "
                f"add its directory with a drop-in (systemctl edit cctv-optimizer: [Service] ReadWritePaths=...)"
            )
    return None


def credential_source(path: Path, unit: Unit | None) -> Path | None:
    """The file ``LoadCredential=`` copies to ``path`` (/run/credentials/cctv-optimizer.service/NAME), if any."""
    if unit is None:
        return None
    directory = CREDENTIALS_ROOT / UNIT_NAME
    if path.parent != directory:
        return None
    return unit.credentials.get(path.name)
