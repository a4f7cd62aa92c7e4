"""``GET /api/v1/_metrics`` reads the monitor's recent cycles from a worker thread (a sync endpoint) while the
monitor's loop appends to them: it must read a copy (schemathesis found ``RuntimeError: deque mutated during
iteration`` as a 500, tests/fuzz)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from corral.engine.agent_client import AgentClient
from corral.engine.db.session import Database
from corral.engine.monitor import CycleStats, Monitor


def cycle(number: int, started: Any = 0.0) -> CycleStats:
    return CycleStats(number=number, started=started, duration=0.1, poll=0.05, write=0.01, hosts=1, answered=1,
                      failed=0, late=0, reports=1)


class AppendsWhileCopied:
    """A field value whose copy appends a cycle: ``dataclasses.asdict`` deep-copies field values, so this is the
    monitor's loop appending at that moment, made deterministic (no thread timing)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def __deepcopy__(self, memo: dict[int, Any]) -> float:
        self.monitor.cycles.append(cycle(len(self.monitor.cycles) + 1))
        return copy.deepcopy(1.5, memo)


def test_metrics_read_a_copy_of_the_cycles(tmp_path: Path) -> None:
    monitor = Monitor(Database(f"sqlite:///{tmp_path / 'engine.db'}"), AgentClient(), set())
    monitor.cycles.append(cycle(1, started=AppendsWhileCopied(monitor)))
    monitor.cycles.append(cycle(2))
    answer = monitor.metrics()
    assert [c["number"] for c in answer["cycles"]] == [1, 2]  # the cycles as they were when the read began
    assert answer["cycles"][0]["started"] == 1.5
    assert len(monitor.cycles) == 3
