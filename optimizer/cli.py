"""The command line: ``run`` the daemon, ``check-config``, ``restore-backup``, and talk to a running daemon.

Exit codes: 0 success; 1 the daemon answered an error or a round failed; 2 usage; 3 the daemon is not
reachable; 78 the configuration is invalid (EX_CONFIG).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from config.errors import ConfigError
from config.loader import LoadedSettings, load_settings, parse_listen, read_secret

EX_OK, EX_FAIL, EX_USAGE, EX_UNREACHABLE, EX_CONFIG = 0, 1, 2, 3, 78


def _render(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if value is None:
        return "(unset)"
    return str(value)


def check_config(config_file: Path | None, environ: Mapping[str, str], out: Any = sys.stdout) -> int:
    """Print the effective configuration with sources (secrets redacted), or every problem; 0 or 78."""
    try:
        loaded = load_settings(environ, config_file)
    except ConfigError as exc:
        print(f"configuration is invalid ({len(exc.problems)} problem(s)):", file=out)
        for problem in exc.problems:
            print(f"  {problem}", file=out)
        return EX_CONFIG
    print_settings(loaded, out)
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


class Client:
    """A small HTTP client for the daemon's API (loopback)."""

    def __init__(self, base: str, token: str | None, timeout: float = 60.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """Send one request; returns (status, decoded JSON)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token and method != "GET":
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except ValueError:
                return exc.code, {"error": {"code": "http", "message": str(exc)}}


def _client(args: argparse.Namespace, environ: Mapping[str, str]) -> Client:
    try:
        loaded = load_settings(environ, args.config)
        listen = loaded.settings.api.listen
        token_file = loaded.settings.api.token_file
        state_dir = loaded.settings.state_directory
    except ConfigError:
        listen, token_file, state_dir = "127.0.0.1:9877", None, Path("state")
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    base = args.url or f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    token: str | None = None
    try:
        token = read_secret(token_file, environ, "api-token")
    except ConfigError:
        token = None
    if token is None and (state_dir / "api-token").is_file():
        try:
            token = (state_dir / "api-token").read_text(encoding="utf-8").strip() or None
        except OSError:
            token = None
    return Client(base, token)


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{body['error'].get('code')}: {body['error'].get('message')}"
    return json.dumps(body)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}{unit}"
    return f"{value}{unit}"


def _num(value: Any) -> str:
    """A signal value in a narrow column: ratios with three decimals, large counts compact."""
    if value is None:
        return "-"
    number = float(value)
    if abs(number) >= 1e6:
        return f"{number / 1e6:.1f}M"
    return f"{number:.3f}" if abs(number) < 10 else f"{number:.0f}"


def cmd_status(client: Client, as_json: bool) -> int:
    """Sources, metrics against thresholds, strategies."""
    status, body = client.call("GET", "/performance-metrics")
    if status != 200:
        print(_error_text(body), file=sys.stderr)
        return EX_FAIL
    if as_json:
        print(json.dumps(body, indent=2))
        return EX_OK
    perf, cur = body["performance"], body["currentMetrics"]
    print(f"mode {body.get('mode')}  rounds {perf['optimizationCount']}  success {perf['successRate']:.0%}")
    print("sources:   " + "  ".join(f"{n}={'up' if s['up'] else 'DOWN'}" for n, s in body.get("sources", {}).items()))
    print(
        f"metrics:   memory {_fmt(cur['memoryUsage'])}  cpu {_fmt(cur['cpuUsage'])}  load {cur['systemLoad']}"
        f"  connections {_fmt(cur['activeConnections'])}  response {_fmt(cur['responseTime'], ' ms')}"
    )
    print(f"{'strategy':<12} {'mode':<8} {'armed':<6} {'cooldown':>9} {'budget':>6} {'breaker':<8} {'score':>6}")
    for name, st in body.get("strategies", {}).items():
        print(
            f"{name:<12} {st['mode']:<8} {'yes' if st['armed'] else 'no':<6} {st['cooldownLeftSeconds']:>8.0f}s"
            f" {st['budgetLeft']:>6} {'OPEN' if st['breakerOpen'] else 'closed':<8} {st['score']:>6.2f}"
        )
    print(f"{'signal':<24} {'now':>12} {'enter':>12} {'exit':>12}  strategy")
    for st in body.get("strategies", {}).values():
        for t in st.get("triggers", []):
            print(
                f"{t['signal']:<24} {_num(t.get('value')):>12} {_num(t['enter']):>12} {_num(t['exit']):>12}"
                f"  {st['name']}{' ARMED' if t['signal'] in st.get('armedBy', []) else ''}"
            )
    for finding in body.get("findings", []):
        print(f"finding [{finding['strategy']}] {finding['summary']}")
    if body.get("restartNeeded"):
        print(f"restart needed: {', '.join(body['restartNeeded'])} changed; the running values stay until a restart")
    return EX_OK


def _verdict_figures(detail: Any) -> str:
    """The measured figures behind a verdict: ``(signal before -> after, reverted)``."""
    if not isinstance(detail, Mapping) or detail.get("signal") is None:
        return ""
    reverted = ", reverted" if detail.get("reverted") else ""
    return f" ({detail['signal']} {_fmt(detail.get('before'))} -> {_fmt(detail.get('after'))}{reverted})"


def _print_decision(item: Mapping[str, Any]) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["timestamp"] / 1000))
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


def cmd_strategies(client: Client, as_json: bool, action: str | None, name: str | None, value: str | None) -> int:
    """List, describe, reset or change the mode of strategies."""
    if action in ("reset", "mode"):
        if name is None or (action == "mode" and value is None):
            print("usage: strategies reset NAME | strategies mode NAME MODE", file=sys.stderr)
            return EX_USAGE
        path = f"/strategies/{name}/{action}"
        status, body = client.call("POST", path, {"mode": value} if action == "mode" else {})
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
            f" cooldown={st['cooldownLeftSeconds']:.0f}/{st['cooldownSeconds']:.0f}s budget={st['budgetLeft']}"
            f" breaker={'open' if st['breakerOpen'] else 'closed'} score={st['score']}"
        )
        if action == "describe":
            for trig in st["triggers"]:
                print(f"  trigger {trig['signal']}: enter {trig['enter']} exit {trig['exit']}")
            for finding in st["findings"]:
                print(f"  finding: {finding['summary']}")
    if action != "describe":
        for signal, learned in sorted(body.get("baselines", {}).items()):
            print(f"baseline {signal} = {_fmt(learned)}")
    return EX_OK


def cmd_optimize(client: Client, as_json: bool, strategy: str | None, dry_run: bool) -> int:
    """Trigger a round and print its decisions."""
    body: dict[str, Any] = {"dryRun": dry_run}
    if strategy:
        body["strategy"] = strategy
    status, answer = client.call("POST", "/performance-optimize", body)
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


def cmd_restore_backup(
    config_file: Path | None, environ: Mapping[str, str], backup: Path, database: Path | None, force: bool
) -> int:
    """Put a database backup back into the backend's database (the backend stopped); 0, 1, 2 or 78."""
    from strategies.actions.backup import restore
    from strategies.base import StrategyError

    try:
        settings = load_settings(environ, config_file).settings
    except ConfigError as exc:
        print(f"configuration is invalid ({len(exc.problems)} problem(s)):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG
    target = database or settings.backend.database
    if target is None:
        print("which database? set backend.database or pass --database PATH", file=sys.stderr)
        return EX_USAGE
    keep = settings.strategies.database.backup_directory or settings.state_directory / "backups"
    try:
        done = restore(target, backup, keep_directory=keep, force=force)
    except StrategyError as exc:
        print(f"not restored: {exc}", file=sys.stderr)
        return EX_FAIL
    print(f"restored {done.backup} into {done.database}; what it held before is kept in {done.kept}")
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(prog="cctv-optimizer", description="Self-tuning optimizer for a CCTV backend.")
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration file")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the daemon in the foreground")
    sub.add_parser("check-config", help="print the effective configuration or every problem (exit 78)")
    sub.add_parser("version", help="print the version")
    restore = sub.add_parser(
        "restore-backup", help="put a backup of the backend database back (stop the backend first)"
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
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--url", default=None, help="the daemon's API base URL (default: from the configuration)")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cctv-optimizer`` command."""
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    if args.command == "run":
        from optimizer.app import run_daemon

        return run_daemon(args.config, environ)
    if args.command == "check-config":
        return check_config(args.config, environ)
    if args.command == "restore-backup":
        return cmd_restore_backup(args.config, environ, args.backup, args.database, args.force)
    if args.command == "version":
        from optimizer.app import VERSION

        print(VERSION)
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
