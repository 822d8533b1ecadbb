"""Splice the benchmark summary into docs/BENCHMARKS.md between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``.

    python -m bench.readme [SUMMARY.md] [DOC.md]

Only the text between the markers changes; without both markers (in that order) the file is left alone. The
README links to docs/BENCHMARKS.md for the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_DOC = ROOT / "docs" / "BENCHMARKS.md"


def splice(text: str, summary: str) -> str | None:
    """``text`` with the part between the markers replaced by ``summary``; None without both markers."""
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[: start + len(BEGIN)] + "\n" + summary.strip("\n") + "\n" + text[end:]


def splice_readme(readme: Path, summary: str) -> str:
    """Rewrite ``readme`` with the summary between the markers; a one-line message saying what happened."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as exc:
        return f"not updated: cannot read {readme}: {exc.strerror}"
    spliced = splice(text, summary)
    if spliced is None:
        return f"not updated: {readme.name} has no {BEGIN} ... {END} markers"
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
