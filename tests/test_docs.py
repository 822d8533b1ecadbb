"""The README is organised for operators, and the long detail it links to exists and stays in step.

The README opens with ``make demo`` and ``make test``, then goes what it does, install, configure, run,
operate, troubleshoot, security, more; benchmark, fuzzing, reliability and design detail live in docs/ files it
links to; the benchmark summary is spliced into docs/BENCHMARKS.md (bench/readme.py), and only the goals, met or
not, into the README.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.common import RESULTS_DIR
from bench.readme import BEGIN, BENCHMARKS_DOC, END, GOALS_MARKERS, splice_readme
from bench.run import build_goals

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
OPERATOR_ORDER = ["What it does", "Install", "Configure", "Run", "Operate", "Troubleshoot", "Security", "More"]


def headings(text: str, level: int) -> list[str]:
    """The headings of one level, outside code blocks."""
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#" * level + " "):
            out.append(line[level + 1 :].strip())
    return out


def test_readme_is_in_operator_order_and_opens_with_demo_and_test() -> None:
    """The top sections come in the operator's order; the first commands shown are make demo and make test."""
    text = README.read_text(encoding="utf-8")
    assert headings(text, 2) == OPERATOR_ORDER
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    for needed in (
        "File access: groups, setgid directories, ReadWritePaths, ProtectHome",
        "What reload and restart re-read",
    ):
        assert needed in headings(text, 3)


def test_long_detail_lives_in_docs_and_every_link_resolves() -> None:
    """Benchmarks, fuzzing, the fault matrix and the pipeline are in docs/; every relative link points at a file."""
    text = README.read_text(encoding="utf-8")
    for gone in ("Performance", "Fuzzing", "Reliability", "Self-tuning and safety"):
        assert gone not in headings(text, 2) + headings(text, 3), gone
    assert BEGIN not in text and END not in text
    links = re.findall(r"\]\(((?:docs/)[^)#]+)(?:#[^)]*)?\)", text)
    assert {"docs/BENCHMARKS.md", "docs/RELIABILITY.md", "docs/SELF-TUNING.md", "docs/TESTING.md"} <= set(links)
    for link in links:
        assert (ROOT / link).is_file(), link
    for doc in (ROOT / "docs").glob("*.md"):
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            assert (doc.parent / link).resolve().exists(), (doc.name, link)


def test_benchmark_summary_is_spliced_into_docs(tmp_path: Path) -> None:
    """docs/BENCHMARKS.md carries the markers once each; splicing replaces only what is between them."""
    text = BENCHMARKS_DOC.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and text.index(BEGIN) < text.index(END)
    copy = tmp_path / "BENCHMARKS.md"
    copy.write_text(text, encoding="utf-8")
    assert splice_readme(copy, "| new | table |\n") == "updated: summary spliced into BENCHMARKS.md"
    spliced = copy.read_text(encoding="utf-8")
    assert spliced.split(BEGIN)[0] == text.split(BEGIN)[0] and spliced.split(END)[1] == text.split(END)[1]
    assert f"{BEGIN}\n| new | table |\n{END}" in spliced


def test_the_readme_shows_the_goals_of_the_committed_results() -> None:
    """The README's goal table is what bench/results says now: every figure with a goal, met or not."""
    text = README.read_text(encoding="utf-8")
    begin, end = GOALS_MARKERS
    assert text.count(begin) == 1 and text.count(end) == 1
    shown = text.split(begin)[1].split(end)[0].strip("\n")
    assert shown == build_goals(RESULTS_DIR).strip("\n")


def test_the_goal_table_counts_what_was_met_and_leaves_out_figures_without_a_goal(tmp_path: Path) -> None:
    """Rows without a verdict stay in docs/BENCHMARKS.md only; a missed goal is shown as missed."""
    rows = [
        {"figure": "a", "value": "1 ms", "reference": "", "ratio": "1/20", "goal": "<= 1/10", "met": True},
        {"figure": "b", "value": "9 ms", "reference": "", "ratio": "1/5", "goal": "<= 1/10", "met": False},
        {"figure": "c", "value": "3 ms", "reference": "", "ratio": "", "goal": "", "met": None},
    ]
    record = {"title": "T", "timestamp": "2026-12-04T21:00:00Z", "result": {"rows": rows}}
    (tmp_path / "tcp_count.json").write_text(json.dumps(record), encoding="utf-8")
    goals = build_goals(tmp_path)
    assert goals.startswith("1 of 2 goals met by `make bench` (measured 2026-12-04;")
    assert "| T | a | 1 ms | 1/20 | <= 1/10 | yes |" in goals
    assert "| T | b | 9 ms | 1/5 | <= 1/10 | **no** |" in goals
    assert "| T | c |" not in goals
