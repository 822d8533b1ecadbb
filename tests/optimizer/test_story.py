"""The closing story, asserted: a useless action is backed off, harmful ones are reverted, the breaker opens."""

from __future__ import annotations

from pathlib import Path

from tests.optimizer.story import history_lines, log_lines, run_story


async def test_useless_action_backed_off_harmful_reverted_breaker_opened(tmp_path: Path) -> None:
    """The story's history: neutral doubles the cooldown, three regressions are reverted and open the breaker."""
    story = await run_story(tmp_path)
    outcomes = [(r.outcome, r.verdict) for r in story.rows]
    assert outcomes == [
        ("applied", "neutral"),
        ("skipped_cooldown", None),
        ("applied", "regressed"),
        ("skipped_cooldown", None),
        ("applied", "regressed"),
        ("skipped_cooldown", None),
        ("applied", "regressed"),
        ("skipped_cooldown", None),
        ("blocked_breaker", None),
        ("applied", None),
        ("backed_off", None),
    ]
    applied = [r for r in story.rows if r.outcome == "applied"][:4]
    # neutral: the next action waits the doubled cooldown (600 s), not the configured 300 s
    assert applied[1].at - applied[0].at == 600.0
    assert story.cooldowns == [600.0, 600.0, 600.0]
    for row in applied[1:]:
        assert row.verdict_detail is not None
        assert row.verdict_detail["reverted"] is True
        assert (row.verdict_detail["before"], row.verdict_detail["after"]) == (0.95, 1.0)
    assert story.rows[-3].reason == "3 consecutive failures or regressions (last: regressed cpu_ratio)"
    assert story.breaker_open is False  # re-armed by the operator at the end
    lines = history_lines(story.rows)
    assert lines[0].endswith("verdict=neutral (cpu_ratio 95 % -> 95 %)")
    assert lines[2].endswith("verdict=regressed (cpu_ratio 95 % -> 100 %, reverted)")
    assert "backing off for 600 s [knob: 2 -> 5]" in lines[-1]
    logged = log_lines(story.log)
    assert sum(line.startswith("warning change_reverted") for line in logged) == 3
    assert sum(line.startswith("error   breaker_opened") for line in logged) == 1
