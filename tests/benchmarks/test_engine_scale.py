"""A small run of ``benchmarks/engine_scale.py`` (20 hosts): it completes and reports every figure.

No timing is asserted: the figures depend on the machine. The run goes through the same code as the real
benchmark (PostgreSQL when installed, and SQLite; simulator and engine as separate processes) and writes its
section into a copy of docs/performance.md, whose other sections must survive.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

from tests.engine.pg import pg_bin
from tests.require import degraded

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "engine_scale.py"

FIGURES = ["add_s", "import_s", "cycle_median_s", "cycle_p95_s", "cycle_poll_median_s", "cycle_write_median_s",
           "engine_cpu_cores", "engine_cpu_s_per_cycle", "engine_rss_mib", "engine_peak_rss_mib",
           "simulator_cpu_cores", "database_cpu_cores", "other_cpu_cores", "starts_per_s"]


def test_small_run_reports_every_figure(tmp_path: Path) -> None:
    db = "both" if pg_bin() is not None else "sqlite"
    if db == "sqlite":
        degraded("PostgreSQL is not installed (no initdb): the run covers SQLite only")
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Agent overhead\n\nkept as it is\n")
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "20", "--db", db, "--cycles", "2", "--rest-seconds", "1",
         "--starts", "10", "--json", str(figures), "--doc", str(doc)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(figures.read_text())
    assert result["machine"]["cores"] and result["machine"]["cpu"]
    runs = result["runs"]
    assert [r["db"] for r in runs] == (["postgresql", "sqlite"] if db == "both" else ["sqlite"])
    for run in runs:
        assert (run["hosts"], run["vms"], run["cycles"]) == (20, 400, 2)
        for key in FIGURES:
            assert isinstance(run[key], int | float) and not math.isnan(run[key]), (run["db"], key)
        assert run["starts_ok"] == 10, run.get("start_error")
        for kind in ("rest_detail", "rest_page"):
            assert run[kind]["requests"] > 0 and run[kind]["errors"] == {}, run[kind]
            assert run[kind]["p50_ms"] <= run[kind]["p99_ms"]
    if db == "both":
        assert "PostgreSQL" in result["machine"]["postgresql"]
    text = doc.read_text()
    assert "## Agent overhead\n\nkept as it is" in text
    assert "## Engine scale" in text and "GET /api/v1/vms/{id}" in text and "VM starts" in text
    # a second run replaces its figures and keeps the prose around them
    doc.write_text(text.replace("## Engine scale\n", "## Engine scale\n\nprose to keep\n"))
    spec = importlib.util.spec_from_file_location("engine_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    module.write_docs(module.figures_block(result), doc)
    again = doc.read_text()
    assert "prose to keep" in again and again.count("| monitoring cycle (p95)") == 1
