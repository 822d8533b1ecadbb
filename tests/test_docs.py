"""The README is organised for operators, and the long detail it links to exists and stays in step.

The README opens with ``make demo`` and ``make test``, then goes what it does, install, configure, run,
operate, troubleshoot, security, more; benchmark, fuzzing, reliability and design detail live in docs/ files it
links to; the benchmark summary is spliced into docs/BENCHMARKS.md (bench/readme.py), not into the README.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.readme import BEGIN, BENCHMARKS_DOC, END, splice_readme

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
