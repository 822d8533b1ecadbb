"""Run the benchmarks, write ``bench/results/<name>.json`` and ``SUMMARY.md``, and splice the summary into
docs/BENCHMARKS.md and the goals (each figure that has one, met or not) into the README.

    python -m bench.run [--only NAME ...] [--quick] [--no-readme]

Each benchmark is a module ``bench/<name>.py`` exposing ``NAME``, ``TITLE`` and ``run(quick) -> dict`` whose
``"rows"`` feed the summary. One benchmark failing (or missing) never stops the others: its error is recorded.
The summary covers every result file present, in registry order, so ``--only`` refreshes part of it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Run as a script (`python bench/run.py`), bench/ itself would come first on the path and its modules could
# shadow the standard library's: put the repository root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)
elif str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, machine_info, row  # noqa: E402
from bench.readme import BENCHMARKS_DOC, GOALS_MARKERS, README, splice_readme  # noqa: E402

# Order matters: the idle-footprint benchmark runs last, alone, so nothing else disturbs its ten minutes.
REGISTRY = ("tcp_count", "whole_sample", "scale", "loadgen", "http_api", "detection", "effect", "footprint")
SUMMARY_COLUMNS = ("figure", "value", "reference", "ratio", "goal", "met")


def _clean(value: Any) -> Any:
    """Make a result JSON-safe and stable: floats rounded, non-finite numbers as strings."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run_one(name: str, quick: bool) -> dict[str, Any]:
    """Import and run one benchmark; an exception becomes an error result instead of propagating."""
    started = time.monotonic()
    title = name
    try:
        module = importlib.import_module(f"bench.{name}")
        title = str(getattr(module, "TITLE", name))
        result = dict(module.run(quick))
    except Exception as exc:
        traceback.print_exc()
        result = {
            "error": f"{exc.__class__.__name__}: {exc}",
            "rows": [row(title, "error", reference=f"{exc.__class__.__name__}: {exc}"[:200], met=None)],
        }
    result.setdefault("rows", [])
    return {
        "name": name,
        "title": title,
        "quick": quick,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(time.monotonic() - started, 1),
        "machine": machine_info(),
        "result": result,
    }


def write_result(record: dict[str, Any], results_dir: Path) -> Path:
    """Write one benchmark's record as stable, sorted JSON."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{record['name']}.json"
    path.write_text(json.dumps(_clean(record), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _cell(value: Any) -> str:
    """A Markdown table cell."""
    if value is True:
        return "yes"
    if value is False:
        return "**no**"
    if value is None:
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _records(results_dir: Path) -> list[dict[str, Any]]:
    """The result records present, in registry order."""
    records = []
    for name in REGISTRY:
        path = results_dir / f"{name}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        # A file written by a benchmark run on its own (not by this runner) carries its rows at the top level.
        if isinstance(record, dict) and "result" not in record:
            record = {"title": name, "machine": record.get("machine", {}), "result": record}
        if isinstance(record, dict) and isinstance(record["result"], dict):
            records.append(record)
    return records


def _title(record: dict[str, Any]) -> str:
    return str(record.get("title", "")) + (" (quick)" if record.get("quick") else "")


def build_summary(results_dir: Path) -> str:
    """The Markdown summary of every result file present, in registry order."""
    records = _records(results_dir)
    lines: list[str] = []
    machine = next((r["machine"] for r in records if r.get("machine", {}).get("nproc")), None)
    if machine is not None:
        lines.append(
            f"Measured on {machine['nproc']} cores ({machine.get('cpu_model') or 'unknown CPU'}), Linux"
            f" {machine.get('kernel')}, Python {machine.get('python')}; every figure is a median of repetitions and"
            " each ratio is against a reference measured in the same run. Raw figures: `bench/results/*.json`."
        )
        lines.append("")
    lines.append("| benchmark | figure | value | reference | ratio | goal | met |")
    lines.append("|---|---|---|---|---|---|---|")
    for record in records:
        title = _title(record)
        for item in record["result"].get("rows") or []:
            cells = [_cell(item.get(column)) for column in SUMMARY_COLUMNS]
            lines.append("| " + " | ".join([_cell(title), *cells]) + " |")
    return "\n".join(lines) + "\n"


def build_goals(results_dir: Path) -> str:
    """The README's summary: every figure that has a goal, whether it was met, and when it was measured."""
    records = _records(results_dir)
    goals = [(record, item) for record in records for item in record["result"].get("rows") or []]
    goals = [(record, item) for record, item in goals if item.get("met") is not None]
    met = sum(1 for _, item in goals if item["met"] is True)
    days = sorted({str(r["timestamp"])[:10] for r in records if r.get("timestamp")})
    when = "measured " + " to ".join(days[:1] + days[1:][-1:]) if days else "measured"
    lines = [
        f"{met} of {len(goals)} goals met by `make bench` ({when}; the figures, references and how each is measured:"
        " [docs/BENCHMARKS.md](docs/BENCHMARKS.md)).",
        "",
        "| benchmark | figure | value | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    for record, item in goals:
        cells = [_cell(item.get(column)) for column in ("figure", "value", "ratio", "goal", "met")]
        lines.append("| " + " | ".join([_cell(_title(record)), *cells]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the selected benchmarks; exit 0 (figures that miss a goal are reported, not failures)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", action="append", choices=REGISTRY, metavar="NAME", help="run only this benchmark")
    parser.add_argument("--quick", action="store_true", help="shorter runs for development (marked in the output)")
    parser.add_argument(
        "--no-readme", action="store_true", help="do not splice the summaries into docs/BENCHMARKS.md and the README"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    selected = [name for name in REGISTRY if not args.only or name in args.only]
    for name in selected:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"== {name}: not present, skipped", flush=True)
            continue
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        record = run_one(name, args.quick)
        path = write_result(record, args.results)
        for item in record["result"]["rows"]:
            print(
                f"   {item['figure']}: {item['value']} (ratio {item['ratio'] or '-'}; goal {item['goal'] or '-'};"
                f" met {_cell(item['met'])})",
                flush=True,
            )
        print(f"   {record['duration_s']} s -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    summary = build_summary(args.results)
    (args.results / "SUMMARY.md").write_text(summary, encoding="utf-8")
    print(summary)
    if not args.no_readme:
        print(splice_readme(BENCHMARKS_DOC, summary))
        print(splice_readme(README, build_goals(args.results), markers=GOALS_MARKERS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
