"""The command line: ``run`` the daemon, ``check-config``, ``restore-backup``, and talk to a running daemon.

Exit codes: 0 success; 1 the daemon answered an error or a round failed; 2 usage; 3 the daemon is not
reachable; 78 the configuration is invalid (EX_CONFIG), or a write has no token to send.

Everything but ``run`` reads the configuration the installed service runs with (its env file, found through
install.sh's record or at /etc/cctv-optimizer/env; see optimizer.service) unless told otherwise with
``--env-file FILE`` or ``--no-env-file`` (this shell's environment).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import units
from config.errors import ConfigError
from config.loader import (
    CONFIG_ENV,
    DEFAULT_SOURCE,
    ENV_PREFIX,
    LoadedSettings,
    exposed_secret,
    iter_leaves,
    load_settings,
    parse_listen,
    secret_files,
)
from config.settings import Settings
from optimizer import __version__, service
from optimizer.service import ServiceEnvironment

EX_OK, EX_FAIL, EX_USAGE, EX_UNREACHABLE, EX_CONFIG = 0, 1, 2, 3, 78
TOKEN_ENV = ENV_PREFIX + "API__TOKEN_FILE"
# variables systemd or the unit set that are not settings, and never worth a warning
_NOT_SETTINGS = frozenset({"STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", CONFIG_ENV})


def _render(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value is None:
        return "(unset)"
    return str(value)


# check-config ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _credentials(svc: ServiceEnvironment) -> Iterator[dict[str, str]]:
    """The environment with ``$CREDENTIALS_DIRECTORY`` as systemd would give it (links to the unit's sources)."""
    env = dict(svc.environ)
    creds = svc.unit.credentials if svc.unit is not None and svc.from_service else {}
    if not creds:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="cctv-optimizer-credentials.") as directory:
        for name, source in creds.items():
            if "/" not in name and name not in (".", ".."):
                (Path(directory) / name).symlink_to(source)
        env["CREDENTIALS_DIRECTORY"] = directory
        yield env


@dataclass(slots=True)
class Findings:
    """What check-config found: problems (exit 78) and warnings."""

    problems: list[str]
    warnings: list[str]


def _file_checks(loaded: LoadedSettings, svc: ServiceEnvironment, user: str | None, found: Findings) -> str:  # noqa: PLR0912, PLR0915 -- one check per file check-config looks at
    """Check every file the service will use as its user and inside its sandbox; returns who was checked."""
    settings = loaded.settings
    unit = svc.unit
    account = service.service_account(unit, user)
    who = f"user {account.name}" if isinstance(account, service.Account) else None
    if not isinstance(account, service.Account) and (unit is not None or user is not None):
        found.warnings.append(f"file access not checked for the service: {account}")

    def check(setting: str, path: Path, want: str, *, write: bool = False) -> None:
        if unit is not None:
            hidden = service.sandbox_problem(path, unit, write=write)
            if hidden is not None:
                found.problems.append(f"{setting}: {hidden}")
                return
        if isinstance(account, service.Account):
            denied = service.access_problem(path, account, want)
            if denied is not None:
                found.problems.append(f"{setting}: {denied}")

    allow = settings.secrets.allow_world_readable
    for setting, secret in secret_files(settings):
        if secret is None:
            continue
        source = service.credential_source(secret, unit)
        if source is None and secret.parent == service.CREDENTIALS_ROOT / service.UNIT_NAME:
            found.problems.append(
                f"{setting}: {secret} is a credential the unit does not load: add "
                f"LoadCredential={secret.name}:/etc/cctv-optimizer/{secret.name} in a drop-in"
            )
        elif source is None:
            check(setting, secret, "r")
    if unit is not None and svc.from_service:
        for name, source in unit.credentials.items():
            if not source.is_file():
                found.problems.append(
                    f"LoadCredential={name}:{source} in {unit.path}: {source} does not exist, and systemd refuses to "
                    "start the service without it"
                )
            elif (exposed := exposed_secret(source)) is not None:
                text = f"LoadCredential={name}: {exposed}"
                if allow:
                    found.warnings.append(f"{text} (allowed by secrets.allow_world_readable)")
                else:
                    found.problems.append(f"{text}: chmod o-rwx {source}")

    database = settings.backend.database
    if database is not None:
        if not database.exists():
            found.problems.append(
                f"backend.database: {database} does not exist (the backend's DATABASE_PATH, made absolute)"
            )
        else:
            check("backend.database", database, "rw", write=True)
            check("backend.database", database.parent, "rwx", write=True)
    hls = settings.backend.hls_directory
    if hls.is_dir():
        check("backend.hls_directory", hls, "rwx", write=True)
    else:
        found.warnings.append(
            f"backend.hls_directory: {hls} does not exist now; the HLS source reports it and the memory strategy "
            "leaves HLS alone until it appears"
        )
    state_source = loaded.sources.get("state.directory", DEFAULT_SOURCE)
    if not state_source.startswith("env STATE_DIRECTORY"):
        state = settings.state_directory
        target = state if state.exists() else state.parent
        check("state.directory", target, "rwx", write=True)
    config_file = svc.environ.get(CONFIG_ENV)
    if config_file:
        check(CONFIG_ENV, Path(config_file), "r")
    process = settings.backend.process or ""
    if process.startswith("pid:"):
        check("backend.process", Path(process[4:]), "r")
    return who or "this user"


def check_config(  # noqa: PLR0913 -- what the service runs with: env file, unit, user, config file
    config_file: Path | None,
    environ: Mapping[str, str],
    out: Any = sys.stdout,
    *,
    env_file: Path | None = None,
    use_env_file: bool = True,
    unit_file: Path | None = None,
    user: str | None = None,
) -> int:
    """Check what the service will run with; print the effective configuration, or every problem (exit 78)."""
    svc = service.service_environment(environ, env_file=env_file, use_env_file=use_env_file, unit_file=unit_file)
    found = Findings(problems=list(svc.problems), warnings=list(svc.notes))
    if svc.from_service:
        unit = f", unit {svc.unit.path} (User={svc.unit.user})" if svc.unit is not None else ", no unit found"
        print(f"checking what the service runs with: env file {svc.env_file}{unit}", file=out)
    else:
        print("checking this shell's environment (no env file in use; --env-file FILE checks the service's)", file=out)
    loaded: LoadedSettings | None = None
    with _credentials(svc) as env:
        try:
            provided = frozenset(
                service.CREDENTIALS_ROOT / service.UNIT_NAME / name
                for name in (svc.unit.credentials if svc.unit is not None and svc.from_service else {})
            )
            loaded = load_settings(
                env, config_file, origins=svc.origins if svc.from_service else None, provided_files=provided
            )
        except ConfigError as exc:
            found.problems.extend(str(p) for p in exc.problems)
    if svc.from_service:
        known = {leaf.env for leaf in iter_leaves()} | _NOT_SETTINGS | set(svc.unit.environment if svc.unit else ())
        if loaded is not None:  # a plugin's options (checked against its Options below)
            known |= {
                f"{ENV_PREFIX}STRATEGIES__{plugin.upper()}__{name.upper()}"
                for plugin, given in loaded.settings.strategies.plugin_options.items()
                for name in given
            }
        flagged = " ".join(found.problems)
        for a in svc.assignments:
            if a.valid and a.name not in known and f"{a.name}:" not in flagged:
                found.warnings.append(
                    f"{a.name} ({svc.env_file} line {a.line}) is not a cctv-optimizer setting; the daemon ignores it"
                )
    checked = "this user"
    if loaded is not None:
        from optimizer.registry import plugin_problems  # loads the strategies: only where plugins are checked

        found.problems.extend(plugin_problems(loaded.settings))
        found.warnings.extend(str(w) for w in loaded.warnings)
        checked = _file_checks(loaded, svc, user, found)
    for warning in found.warnings:
        print(f"warning: {warning}", file=out)
    if found.problems:
        print(f"configuration is invalid ({len(found.problems)} problem(s)):", file=out)
        for problem in found.problems:
            print(f"  {problem}", file=out)
        return EX_CONFIG
    assert loaded is not None
    print_settings(loaded, out)
    print(f"configuration is valid; files checked for {checked}", file=out)
    return EX_OK


def print_settings(loaded: LoadedSettings, out: Any) -> None:
    """One line per setting: name = value (source); secret files are named, never read out."""
    width = max(len(leaf.path) for leaf in loaded.leaves)
    s = loaded.settings
    for leaf in loaded.leaves:
        value: Any = s
        for part in leaf.path.split("."):
            value = getattr(value, part)
        shown = _render(value)
        if leaf.meta.get("secret") and value is not None:
            shown = f"{value} (contents redacted)"
        if leaf.path == "state.directory":
            shown = str(s.state_directory)
        print(f"{leaf.path:<{width}} = {shown}  ({loaded.sources[leaf.path]}; {leaf.env})", file=out)


# finding the daemon and its token -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenSearch:
    """The write token found (and where), or every place looked with why it did not serve."""

    token: str | None
    source: str | None
    looked: tuple[str, ...]

    def explain(self) -> str:
        """What to tell an operator whose write has no token."""
        lines = ["no API token found for writes; looked in:"]
        lines += [f"  - {place}" for place in self.looked]
        lines.append(
            f"point the CLI at the daemon's token with --token-file FILE or {TOKEN_ENV}=FILE"
            " (the installed one is readable by root and the cctv-optimizer group)"
        )
        return "\n".join(lines)


def _token_candidates(
    explicit: Path | None, shell: Mapping[str, str], svc: ServiceEnvironment, settings: Settings | None
) -> Iterator[tuple[Path | None, str]]:
    """(file, label) in the order the daemon itself would use them: setting, credential, generated."""
    if explicit is not None:
        yield explicit, "--token-file"
        return
    if shell.get(TOKEN_ENV) and svc.from_service:
        yield Path(shell[TOKEN_ENV]), f"{TOKEN_ENV} (this shell)"
    configured = settings.api.token_file if settings is not None else None
    yield configured, "api.token_file" + (f" ({svc.env_file})" if svc.from_service else "")
    credentials_dir = shell.get("CREDENTIALS_DIRECTORY")
    if credentials_dir:
        yield Path(credentials_dir) / "api-token", "$CREDENTIALS_DIRECTORY/api-token"
    unit = svc.unit
    if unit is not None and "api-token" in unit.credentials:
        yield unit.credentials["api-token"], f"LoadCredential=api-token in {unit.path}"
    installed = svc.record.token_file if svc.record is not None else service.DEFAULT_ETC / "api-token"
    yield installed, "install.sh's token"
    if settings is not None:
        yield settings.state_directory / "api-token", "the token the daemon generates in its state directory"


def find_token(
    explicit: Path | None, shell: Mapping[str, str], svc: ServiceEnvironment, settings: Settings | None
) -> TokenSearch:
    """The first readable token of the candidates, with every place looked."""
    looked: list[str] = []
    seen: set[Path] = set()
    for path, label in _token_candidates(explicit, shell, svc, settings):
        if path is None:
            looked.append(f"{label}: not set")
            continue
        if path in seen:
            continue
        seen.add(path)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            looked.append(f"{path} ({label}): does not exist")
            continue
        except OSError as exc:
            looked.append(f"{path} ({label}): {exc.strerror}")
            continue
        if not text:
            looked.append(f"{path} ({label}): empty")
            continue
        return TokenSearch(token=text, source=f"{path} ({label})", looked=tuple(looked))
    return TokenSearch(token=None, source=None, looked=tuple(looked))


class Client:
    """A small HTTP client for the daemon's API (loopback)."""

    def __init__(self, base: str, tokens: TokenSearch | None = None, timeout: float = 60.0) -> None:
        self.base = base.rstrip("/")
        self.tokens = tokens or TokenSearch(token=None, source=None, looked=())
        self.timeout = timeout

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.tokens.token and method != "GET":
            request.add_header("Authorization", f"Bearer {self.tokens.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except ValueError:
                return exc.code, {"error": {"code": "http", "message": str(exc)}}

    def write(self, path: str, body: Mapping[str, Any]) -> tuple[int, Any]:
        """A POST that needs the token: refused here, with where the CLI looked, when there is none."""
        if not self.tokens.token:
            raise MissingToken(self.tokens.explain())
        status, answer = self.call("POST", path, body)
        if status == 401:
            answer = {
                "error": {
                    "code": "unauthorized",
                    "message": f"{_error_text(answer)} (the token sent came from {self.tokens.source})",
                }
            }
        return status, answer


class MissingToken(Exception):
    """A write was asked for and no token was found; the message says where the CLI looked."""


def _client(args: argparse.Namespace, environ: Mapping[str, str]) -> Client:
    svc = service.service_environment(
        environ, env_file=args.env_file, use_env_file=not args.no_env_file, unit_file=None
    )
    settings: Settings | None
    try:
        settings = load_settings(svc.environ, args.config, check_files=False).settings
        listen = settings.api.listen
    except ConfigError:
        settings, listen = None, "127.0.0.1:9877"
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    base = args.url or f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    return Client(base, find_token(args.token_file, environ, svc, settings))


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{body['error'].get('code')}: {body['error'].get('message')}"
    return json.dumps(body)


# status -------------------------------------------------------------------------------------------------------


def _source_text(name: str, status: Mapping[str, Any]) -> str:
    """``probe=up`` or ``mediamtx=DOWN (connection refused)``."""
    if status.get("up"):
        return f"{name}=up"
    reason = status.get("error")
    return f"{name}=DOWN ({reason})" if reason else f"{name}=DOWN"


def _signal_rows(strategies: Mapping[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """One row per signal over every strategy: (signal, now, enter, exit, strategies, state)."""
    rows: dict[str, dict[str, Any]] = {}
    for st in strategies.values():
        armed_by = set(st.get("armedBy", []))
        for t in st.get("triggers", []):
            row = rows.setdefault(t["signal"], {"value": None, "arms": [], "restores": [], "names": [], "state": ""})
            if t.get("value") is not None:
                row["value"] = t["value"]
            if st["name"] not in row["names"]:
                row["names"].append(st["name"])
            (row["restores"] if t.get("role") == "restore" else row["arms"]).append((st, t, t["signal"] in armed_by))
    out = []
    for signal, row in rows.items():
        value = row["value"]
        state = ""
        for st, t, armed in row["arms"]:
            past = value is not None and (value >= t["enter"] if t["above"] else value <= t["enter"])
            if armed and st.get("armed") and not (row["restores"] and not past):
                state = "ARMED"
            elif past and not state:
                state = "over, not yet sustained"
        notes = []
        for st, t, armed in row["restores"]:
            prefix = f"{st['name']} " if len(row["names"]) > 1 else ""
            notes.append(f"{prefix}restores at <= {units.named(signal, t['enter'])}")
            if armed and st.get("armed") and value is not None and value <= t["enter"]:
                state = "restoring"
        enter = exit_ = "-"
        if row["arms"]:
            first = min(row["arms"], key=lambda a: a[1]["enter"] if a[1]["above"] else -a[1]["enter"])[1]
            enter = f"{'>=' if first['above'] else '<='} {units.named(signal, first['enter'])}"
            exit_ = units.named(signal, first["exit"])
        who = ", ".join(row["names"]) + (f" ({'; '.join(notes)})" if notes else "")
        out.append((signal, units.named(signal, value), enter, exit_, who, state))
    return out


def cmd_status(client: Client, as_json: bool) -> int:
    """Sources (with the reason of a down one), metrics against thresholds, strategies."""
    status, body = client.call("GET", "/performance-metrics")
    if status != 200:
        print(_error_text(body), file=sys.stderr)
        return EX_FAIL
    if as_json:
        print(json.dumps(body, indent=2))
        return EX_OK
    perf, cur = body["performance"], body["currentMetrics"]
    last = perf.get("lastOptimization")
    print(
        f"mode {body.get('mode')}  rounds {perf['optimizationCount']}  success {units.percent(perf['successRate'], 0)}"
        f"  last round {units.clock(last / 1000) if last else 'never'}"
    )
    print("sources:   " + "  ".join(_source_text(n, s) for n, s in body.get("sources", {}).items()))
    load = " ".join(units.number(v) for v in cur["systemLoad"])
    response = cur["responseTime"]
    print(
        f"metrics:   memory {units.value(cur['memoryUsage'], units.Unit.RATIO)}"
        f"  cpu {units.value(cur['cpuUsage'], units.Unit.RATIO)}  load {load}"
        f"  connections {units.value(cur['activeConnections'], units.Unit.COUNT)}"
        f"  response {units.value(response, units.Unit.MILLISECONDS)}"
    )
    print(f"{'strategy':<12} {'mode':<8} {'armed':<6} {'cooldown':>10} {'budget':>6} {'breaker':<8} {'score':>6}")
    for name, st in body.get("strategies", {}).items():
        left = st["cooldownLeftSeconds"]
        print(
            f"{name:<12} {st['mode']:<8} {'yes' if st['armed'] else 'no':<6}"
            f" {units.duration(left) if left > 0 else 'ready':>10} {st['budgetLeft']:>6}"
            f" {'OPEN' if st['breakerOpen'] else 'closed':<8} {st['score']:>6.2f}"
        )
    rows = _signal_rows(body.get("strategies", {}))
    width = max([len("signal")] + [len(r[0]) for r in rows])
    print(f"{'signal':<{width}} {'now':>10} {'enter':>12} {'exit':>10}  {'watched by':<12} state")
    for signal, now, enter, exit_, who, state in rows:
        print(f"{signal:<{width}} {now:>10} {enter:>12} {exit_:>10}  {who:<12} {state}".rstrip())
    for finding in body.get("findings", []):
        print(f"finding [{finding['strategy']}] {finding['summary']}")
    if body.get("restartNeeded"):
        print(f"restart needed: {', '.join(body['restartNeeded'])} changed; the running values stay until a restart")
    return EX_OK


# history ------------------------------------------------------------------------------------------------------


def _verdict_figures(detail: Any) -> str:
    """The measured figures behind a verdict: ``(wal_bytes 80 MiB -> 0 B, reverted)``."""
    if not isinstance(detail, Mapping) or detail.get("signal") is None:
        return ""
    reverted = ", reverted" if detail.get("reverted") else ""
    signal = str(detail["signal"])
    return f" ({signal} {units.change(signal, detail.get('before'), detail.get('after'))}{reverted})"


def _print_decision(item: Mapping[str, Any]) -> None:
    when = units.clock(item["timestamp"] / 1000)
    changes = "; ".join(f"{c['target']}: {c['before']} -> {c['after']}" for c in item.get("changes", []))
    verdict = f" verdict={item['verdict']}{_verdict_figures(item.get('verdictDetail'))}" if item.get("verdict") else ""
    error = f" error={item['error']}" if item.get("error") else ""
    print(
        f"#{item['id']} {when} {item['strategy']:<10} {item['mode']:<8} {item['outcome']:<16} {item['reason']}"
        f"{' [' + changes + ']' if changes else ''}{verdict}{error}"
    )


def cmd_history(client: Client, as_json: bool, follow: bool, after: int, limit: int) -> int:
    """Print the decision history, optionally following new rows."""
    while True:
        status, body = client.call("GET", f"/optimizations?after={after}&limit={limit}")
        if status != 200:
            print(_error_text(body), file=sys.stderr)
            return EX_FAIL
        for item in body["items"]:
            print(json.dumps(item) if as_json else "", end="\n" if as_json else "")
            if not as_json:
                _print_decision(item)
        after = int(body["last"])
        if not follow:
            return EX_OK
        sys.stdout.flush()
        time.sleep(2.0)


def cmd_strategies(client: Client, as_json: bool, action: str | None, name: str | None, value: str | None) -> int:  # noqa: PLR0911, PLR0912 -- one branch per subcommand
    """List, describe, reset or change the mode of strategies."""
    if action in ("reset", "mode"):
        if name is None or (action == "mode" and value is None):
            print("usage: strategies reset NAME | strategies mode NAME MODE", file=sys.stderr)
            return EX_USAGE
        path = f"/strategies/{name}/{action}"
        status, body = client.write(path, {"mode": value} if action == "mode" else {})
        if status != 200:
            print(_error_text(body), file=sys.stderr)
            return EX_FAIL
        print(
            json.dumps(body, indent=2)
            if as_json
            else f"{name}: mode {body['mode']}, breaker {'open' if body['breakerOpen'] else 'closed'}"
        )
        return EX_OK
    status, body = client.call("GET", "/strategies")
    if status != 200:
        print(_error_text(body), file=sys.stderr)
        return EX_FAIL
    items = body["strategies"]
    if action == "describe":
        items = [s for s in items if s["name"] == name]
        if not items:
            print(f"unknown strategy {name!r}", file=sys.stderr)
            return EX_FAIL
    if as_json:
        print(json.dumps(items if action != "describe" else items[0], indent=2))
        return EX_OK
    for st in items:
        print(
            f"{st['name']}: mode={st['mode']} armed={st['armed']}"
            f" cooldown={units.duration(st['cooldownLeftSeconds'])} of {units.duration(st['cooldownSeconds'])}"
            f" budget={st['budgetLeft']} breaker={'open' if st['breakerOpen'] else 'closed'} score={st['score']}"
        )
        if action == "describe":
            for trig in st["triggers"]:
                signal = trig["signal"]
                kind = "restore trigger" if trig.get("role") == "restore" else "trigger"
                print(
                    f"  {kind} {signal}: enter {units.named(signal, trig['enter'])}"
                    f" exit {units.named(signal, trig['exit'])}"
                )
            for family, pace in sorted(st.get("pacing", {}).items()):
                left = pace["cooldownLeftSeconds"]
                print(
                    f"  actions {family}: cooldown {units.duration(left) + ' left' if left > 0 else 'over'}"
                    f" of {units.duration(pace['cooldownSeconds'])}, budget {pace['budgetLeft']}"
                )
            for finding in st["findings"]:
                print(f"  finding: {finding['summary']}")
    if action != "describe":
        for signal, learned in sorted(body.get("baselines", {}).items()):
            print(f"baseline {signal} = {units.named(signal, learned)}")
    return EX_OK


def cmd_optimize(client: Client, as_json: bool, strategy: str | None, dry_run: bool) -> int:
    """Trigger a round and print its decisions."""
    body: dict[str, Any] = {"dryRun": dry_run}
    if strategy:
        body["strategy"] = strategy
    status, answer = client.write("/performance-optimize", body)
    if status != 200:
        print(_error_text(answer), file=sys.stderr)
        return EX_FAIL
    if as_json:
        print(json.dumps(answer, indent=2))
        return EX_OK
    print(f"{answer['message']} (run {answer['runId']})")
    for decision_id in answer.get("decisions", []):
        s2, row = client.call("GET", f"/optimizations?after={decision_id - 1}&limit=1")
        if s2 == 200 and row["items"]:
            _print_decision(row["items"][0])
    return EX_OK


def cmd_restore_backup(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """Put a database backup back into the backend's database (the backend stopped); 0, 1, 2 or 78."""
    from strategies.actions.backup import restore
    from strategies.base import StrategyError

    try:
        svc = service.service_environment(
            environ, env_file=args.env_file, use_env_file=not args.no_env_file, unit_file=None
        )
        settings = load_settings(svc.environ, args.config, check_files=False).settings
    except ConfigError as exc:
        print(f"configuration is invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    target = args.database or settings.backend.database
    if target is None:
        print("which database? set backend.database or pass --database PATH", file=sys.stderr)
        return EX_USAGE
    keep = settings.strategies.database.backup_directory or settings.state_directory / "backups"
    try:
        done = restore(target, args.backup, keep_directory=keep, force=args.force)
    except StrategyError as exc:
        print(f"not restored: {exc}", file=sys.stderr)
        return EX_FAIL
    print(f"restored {done.backup} into {done.database}; what it held before is kept in {done.kept}")
    return EX_OK


# the parser ---------------------------------------------------------------------------------------------------


def _service_options() -> argparse.ArgumentParser:
    """Options every command but ``run`` shares: which configuration is the service's."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_mutually_exclusive_group()
    group.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="the service's env file (default: the installed one, when it exists)",
    )
    group.add_argument("--no-env-file", action="store_true", help="use this shell's environment instead")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="cctv-optimizer", description="Self-tuning optimizer for a CCTV backend.")
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration file")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = _service_options()
    sub.add_parser("run", help="run the daemon in the foreground (configuration from its environment)")
    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="check what the service will run with: env file, YAML, credentials, files (exit 78 on a problem)",
    )
    check.add_argument("--unit", type=Path, default=None, help="the unit file (default: the installed one)")
    check.add_argument("--user", default=None, help="check file access for this user instead of the unit's User=")
    sub.add_parser("version", help="print the version")
    restore = sub.add_parser(
        "restore-backup", parents=[common], help="put a backup of the backend database back (stop the backend first)"
    )
    restore.add_argument("backup", type=Path, help="the backup file (in the backup directory, see history rows)")
    restore.add_argument("--database", type=Path, default=None, help="the database (default: backend.database)")
    restore.add_argument("--force", action="store_true", help="restore even though a process has the database open")
    for name, text in (
        ("status", "sources, metrics against thresholds, strategies"),
        ("history", "the decision history"),
        ("strategies", "list, describe, reset or set the mode of strategies"),
        ("optimize", "run a decision round now"),
    ):
        p = sub.add_parser(name, help=text, parents=[common])
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--url", default=None, help="the daemon's API base URL (default: from the configuration)")
        p.add_argument(
            "--token-file",
            type=Path,
            default=None,
            help=f"file with the API token for writes (default: where the daemon gets it; or {TOKEN_ENV})",
        )
        if name == "history":
            p.add_argument("--follow", "-f", action="store_true")
            p.add_argument("--after", type=int, default=0)
            p.add_argument("--limit", type=int, default=100)
        if name == "strategies":
            p.add_argument("action", nargs="?", choices=("list", "describe", "reset", "mode"), default="list")
            p.add_argument("name", nargs="?")
            p.add_argument("value", nargs="?")
        if name == "optimize":
            p.add_argument("strategy", nargs="?")
            p.add_argument("--dry-run", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 -- one exit status per command
    """Entry point of the ``cctv-optimizer`` command."""
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    if args.command == "run":
        from optimizer.app import run_daemon

        return run_daemon(args.config, environ)
    if args.command == "check-config":
        return check_config(
            args.config,
            environ,
            env_file=args.env_file,
            use_env_file=not args.no_env_file,
            unit_file=args.unit,
            user=args.user,
        )
    if args.command == "restore-backup":
        return cmd_restore_backup(args, environ)
    if args.command == "version":
        print(__version__)
        return EX_OK
    client = _client(args, environ)
    try:
        if args.command == "status":
            return cmd_status(client, args.json)
        if args.command == "history":
            return cmd_history(client, args.json, args.follow, args.after, args.limit)
        if args.command == "strategies":
            return cmd_strategies(client, args.json, args.action, args.name, args.value)
        if args.command == "optimize":
            return cmd_optimize(client, args.json, args.strategy, args.dry_run)
    except MissingToken as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    except urllib.error.URLError as exc:
        print(f"cannot reach the daemon at {client.base}: {exc.reason}", file=sys.stderr)
        return EX_UNREACHABLE
    except KeyboardInterrupt:
        return EX_OK
    return EX_USAGE


def entry() -> int:
    """Console-script wrapper: a closed pipe (``| head``) ends quietly."""
    try:
        return main()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EX_OK


if __name__ == "__main__":
    raise SystemExit(entry())
