"""The dashboard styles every outcome the engine can record."""

from __future__ import annotations

import re

from optimizer.dashboard import load_dashboard
from optimizer.decisions import Outcome

TONES = {"ok", "info", "idle", "warn", "bad"}


def outcome_tones() -> dict[str, str]:
    """The OUTCOME_TONE table of the dashboard's script, as outcome -> tone."""
    block = re.search(r"const OUTCOME_TONE = \{(.*?)\};", load_dashboard().decode("utf-8"), re.S)
    assert block is not None
    return dict(re.findall(r"(\w+):\s*\"(\w+)\"", block.group(1)))


def test_every_outcome_has_a_tone() -> None:
    """Each Outcome (backed_off included) maps to one of the pill tones the stylesheet defines."""
    tones = outcome_tones()
    assert {str(o) for o in Outcome} <= set(tones)
    assert set(tones.values()) <= TONES
    assert tones["backed_off"] == "warn"
