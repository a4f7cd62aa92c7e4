"""``GET /api/v1/_metrics``: the engine's own figures, for load tests and operators (not a stable API).

``monitor.cycles`` are the recent monitoring cycles, oldest first (up to 1,000): ``duration`` is poll every
host + reconcile + write, in seconds, split into ``poll`` and ``write``; ``hosts`` polled, ``answered``,
``failed``, ``late`` (answers past the cycle's deadline), ``reports`` (hosts whose VM list changed, or whose
periodic full report was due), and the rows written (``vm_inserts``, ``vm_updates``, ``vm_deletes``, ``events``).
``process`` is the engine's pid, CPU seconds (user + system) and resident memory.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from fastapi import APIRouter

from corral.engine.api.deps import Ctx

router = APIRouter(prefix="/_metrics", tags=["metrics"])


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@router.get("", response_model=dict[str, Any])
def metrics(ctx: Ctx) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "time": time.time(),
        "monitor": ctx.monitor.metrics(),
        "tasks_running": len(ctx.tasks.busy_vms),
        "process": {"pid": os.getpid(), "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    "rss_bytes": _rss_bytes(), "max_rss_bytes": usage.ru_maxrss * 1024},
    }
