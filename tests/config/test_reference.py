"""The configuration reference covers every setting and the README carries the current one."""

from __future__ import annotations

from config.loader import iter_leaves
from config.reference import BEGIN, END, leaves_with_meanings, markdown, option_meanings, splice
from config.settings import CpuOptions
from tests.harness import ROOT


def test_every_setting_has_a_meaning() -> None:
    """No setting is left without a line of explanation."""
    missing = [leaf.path for leaf, meaning in leaves_with_meanings() if not meaning.strip()]
    assert missing == []


def test_the_table_has_one_row_per_setting_with_its_variable() -> None:
    """Each setting's environment variable appears in exactly one row."""
    table = markdown()
    rows = table.splitlines()[2:]
    assert len(rows) == len(list(iter_leaves()))
    assert all(f"| `{leaf.env}` |" in table for leaf in iter_leaves())
    assert "| `OPTIMIZATION_INTERVAL` | `optimization_interval` | `30000` | 1000..8.64e+07 |" in table


def test_strategy_meanings_come_from_the_options_docstring() -> None:
    """A bullet ``name``: text in an options docstring becomes that option's meaning."""
    meanings = option_meanings(CpuOptions)
    assert meanings["recorder_nice"].startswith("the nice value recorders get while the host is hot")
    assert set(meanings) <= {f for f in CpuOptions.__dataclass_fields__}


def test_readme_carries_the_current_reference() -> None:
    """README.md's block between the markers is what `python -m config.reference` prints (regenerate with --write)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert splice(readme, markdown()) == readme, "run: python -m config.reference --write README.md"
