"""A small run of ``benchmarks/latencies.py``: it completes and prints every row.

The timings it prints (long-poll wake-up, hook timeout, all-in-one Ctrl-C) were asserted in tests before
issue 15; the tests now prove the behaviour and this script reports the figures. No timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "latencies.py"


def test_small_run_prints_every_row() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    for row in ("long poll: event -> answer", "hook past its 1 s timeout: start -> 409",
                "all-in-one: Ctrl-C -> exit"):
        line = next((x for x in done.stdout.splitlines() if row in x), None)
        assert line is not None, f"row {row!r} missing:\n{done.stdout}"
        assert len(re.findall(r"\d+\.\d+ (?:ms|s)", line)) == 3, line
