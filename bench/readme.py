"""Splice the benchmark summary into docs/BENCHMARKS.md between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``,
and the goals alone into the README between ``<!-- bench-goals:begin -->`` and ``<!-- bench-goals:end -->``.

    python -m bench.readme [SUMMARY.md] [DOC.md]

Only the text between the markers changes; without both markers (in that order) the file is left alone. Without
arguments the README's goals are made again from bench/results too.
"""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
# the README's short summary: the goals alone (bench.run.build_goals)
GOALS_MARKERS = ("<!-- bench-goals:begin -->", "<!-- bench-goals:end -->")
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_DOC = ROOT / "docs" / "BENCHMARKS.md"
README = ROOT / "README.md"


def splice(text: str, summary: str, markers: tuple[str, str] = (BEGIN, END)) -> str | None:
    """``text`` with the part between the markers replaced by ``summary``; None without both markers."""
    begin, finish = markers
    start = text.find(begin)
    end = text.find(finish, start + len(begin)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[: start + len(begin)] + "\n" + summary.strip("\n") + "\n" + text[end:]


def splice_readme(readme: Path, summary: str, markers: tuple[str, str] = (BEGIN, END)) -> str:
    """Rewrite ``readme`` with the summary between the markers; a one-line message saying what happened."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as exc:
        return f"not updated: cannot read {readme}: {exc.strerror}"
    spliced = splice(text, summary, markers)
    if spliced is None:
        return f"not updated: {readme.name} has no {markers[0]} ... {markers[1]} markers"
    if spliced == text:
        return f"unchanged: {readme.name} already has this summary"
    readme.write_text(spliced, encoding="utf-8")
    return f"updated: summary spliced into {readme.name}"


def main(argv: list[str] | None = None) -> int:
    """Splice a summary file into a document (defaults: bench/results/SUMMARY.md into docs/BENCHMARKS.md)."""
    args = sys.argv[1:] if argv is None else argv
    summary = Path(args[0]) if args else ROOT / "bench" / "results" / "SUMMARY.md"
    readme = Path(args[1]) if len(args) > 1 else BENCHMARKS_DOC
    print(splice_readme(readme, summary.read_text(encoding="utf-8")))
    if not args:
        from bench.run import build_goals

        print(splice_readme(README, build_goals(ROOT / "bench" / "results"), markers=GOALS_MARKERS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
