"""Print the self-tuning story: the decision history (as ``cctv-optimizer history`` shows it) and the log events.

Usage: ``python scripts/story.py`` from the repository root. Deterministic: the engine runs on a fake clock.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.optimizer.story import history_lines, log_lines, run_story


def main() -> int:
    """Run the story in a throw-away state directory and print it."""
    with tempfile.TemporaryDirectory() as tmp:
        story = asyncio.run(run_story(Path(tmp)))
    print("$ cctv-optimizer history")
    for line in history_lines(story.rows):
        print(line)
    print()
    print("log:")
    for line in log_lines(story.log):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
