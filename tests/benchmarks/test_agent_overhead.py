"""A small run of ``benchmarks/agent_overhead.py``: it completes and prints every row of its table.

No timing is asserted (the figures are the machine's); the run goes through the same code as the real
benchmark: the agent in-process, with pre-rendered XML, served by uvicorn in a process of its own and called
by the engine's client and by httpx, and a stats cycle.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "agent_overhead.py"


def test_small_run_prints_every_row() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--vms", "8", "--stats-vms", "30", "--rounds", "1",
                           "--no-write"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    for row in ("define+start+destroy x8, in-process", "CPU time of the process", "XML rendered beforehand",
                "over HTTP, 16 calls (engine's client)", "POST /v1/vms?start=true", "POST /v1/vms/{id}/destroy",
                "from an httpx client", "one stats cycle, 30 running"):
        assert row in out, f"row {row!r} missing:\n{out}"
    verdicts = re.findall(r"\| (met|MISSED) +\|", out)
    assert len(verdicts) == 3, out  # in-process ratio, HTTP p50, stats cycle
    assert "written to" not in out  # --no-write leaves docs/performance.md alone
