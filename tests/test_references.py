"""The project's text points only at its own files: no comment, docstring or document cites a design, target or
style document kept outside the repository (the reader of a checkout cannot follow such a link)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the three specification files that are not part of the repository, by name
OUTSIDE = re.compile(r"\b(?:DESIGN|TARGET|STYLE)\.md\b|\bDESIGN(?: section)? \d")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yml", ".yaml", ".toml", ".service", ".html", ".txt", ".cfg", ".ini"}
SKIPPED_DIRS = {".git", ".venv", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__", "demo-data"}


def project_files() -> list[Path]:
    """Every text file of the checkout (sources, tests, docs, units, examples), caches and the venv left out."""
    found: list[Path] = []
    stack = [ROOT]
    while stack:
        directory = stack.pop()
        for entry in sorted(directory.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                if entry.name not in SKIPPED_DIRS and not entry.name.endswith(".egg-info"):
                    stack.append(entry)
            elif entry.is_file() and (entry.suffix in TEXT_SUFFIXES or entry.name == "Makefile"):
                found.append(entry)
    return found


def citations(text: str) -> list[str]:
    """The lines of ``text`` that cite one of the outside documents."""
    return [line.strip() for line in text.splitlines() if OUTSIDE.search(line)]


def test_the_pattern_finds_each_way_of_citing() -> None:
    """The scanner is proven on lines that cite and lines that do not, so a broken pattern cannot stay green."""
    cited = [
        f'"""Walk the directory by {"TARGET"}.md\'s rule."""',
        f"# logged with its traceback ({'STYLE'}.md)",
        f"labels only ({'DESIGN'}.md section 7).",
        f"one sidecar per host ({'DESIGN'} 10)",
    ]
    clean = ["make -n TARGET", "see docs/ARCHITECTURE.md", "python -m bench.readme [SUMMARY.md] [DOC.md]"]
    assert citations("\n".join(cited)) == cited
    assert citations("\n".join(clean)) == []


def test_no_file_cites_a_document_outside_the_repository() -> None:
    """Comments and documents point into the repository (docs/ARCHITECTURE.md, docs/STRATEGIES.md, ...)."""
    assert len(project_files()) > 100  # the walk saw the tree, not an empty directory
    found = {
        str(path.relative_to(ROOT)): hits
        for path in project_files()
        if (hits := citations(path.read_text(encoding="utf-8", errors="replace")))
    }
    assert found == {}


def test_the_architecture_and_extending_pages_name_only_files_that_exist() -> None:
    """Every repository path the two design pages name (``optimizer/engine.py``, ``tests/harness.py``) exists.

    The examples' own new files are all called ``foo`` (``strategies/foo.py``) and are left out."""
    named = re.compile(r"`((?:config|metrics|strategies|optimizer|testbed|tests|contrib|systemd|docs)/[\w./-]+)`")
    missing = []
    for page in ("ARCHITECTURE.md", "EXTENDING.md"):
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        paths = set(named.findall(text))
        assert len(paths) > 10, page
        missing += [f"{page}: {p}" for p in sorted(paths) if "foo" not in p and not (ROOT / p).exists()]
    assert missing == []
