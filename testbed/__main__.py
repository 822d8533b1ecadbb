"""Run the stand-in backend: `python -m testbed --listen 127.0.0.1:0 --data-dir DIR`."""

from __future__ import annotations

import sys

from testbed.cli import main

if __name__ == "__main__":
    sys.exit(main())
