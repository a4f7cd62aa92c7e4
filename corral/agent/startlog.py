"""Why a start failed, from the host's own logs (issue 20, item 5).

libvirt's libxl driver answers a failed start with "internal error: libxenlight failed to create new
domain 'NAME'"; the cause ("failed to stat /dev/HostVG/XenGuest2", "bootloader exited 255", "Backend for
CD devices on HVM guests must be Qdisk") is only in dom0's logs: libxl's driver log and the device model's
log. Which logs hold it is the flavor's answer (``Flavor.driver_logs``, paths with ``{name}``): libxl's
driver log and ``qemu-dm-NAME.log`` on Xen, the domain's QEMU log on KVM.

Before a start the agent remembers each log's size (``mark``); when the start fails it reads what was
appended since (``StartMark.excerpts``), keeps the lines that matter -- in a log shared by every domain the
lines that name the domain or read as errors, in a log of the domain's own its error lines (else its last
lines) -- caps them, and adds them to the error it answers (``explain``). The engine's failed task, the
VM's state reason and the ``task_failed`` event then carry the cause.

Paths are read under a root (the agent's ``HostProbe.root``, ``/`` on a real host) so that tests can stand
a temporary directory in for ``/var/log``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.agent.errors import AgentError

__all__ = ["LogExcerpt", "StartMark", "explain", "mark"]

READ_BYTES = 64 * 1024  # of what was appended to one log, the last this many bytes are read
LINES_PER_LOG = 12
LINE_CHARS = 300
TAIL_LINES = 3  # a log of the domain's own without an error line: its last lines
# words of a line that reports a failure (libxl: "failed to stat", "Unable to add disk devices",
# "bootloader failed"; qemu: "Could not open"; libvirt: "error :")
ERROR_WORDS = re.compile(
    r"error|fail|unable|cannot|can't|could not|couldn't|must be|denied|no such|not found|invalid|refused"
    r"|exited|non-?existe?n?t|timed out|abort|panic|out of memory|too large",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class LogExcerpt:
    path: str  # as on the host ("/var/log/libvirt/libxl/libxl-driver.log")
    lines: tuple[str, ...]
    omitted: int = 0  # relevant lines left out by the cap

    def as_json(self) -> dict[str, object]:
        return {"path": self.path, "lines": list(self.lines), "omitted": self.omitted}


@dataclass(frozen=True)
class _Mark:
    host_path: str
    file: Path
    size: int
    own: bool  # the domain's own log (the template names it), not one shared by every domain


@dataclass(frozen=True)
class StartMark:
    """The logs' sizes before a start of domain ``name``."""

    name: str
    marks: tuple[_Mark, ...]

    def excerpts(self) -> list[LogExcerpt]:
        """What was appended to each log since the mark, reduced to the lines that say why (empty if none)."""
        out = []
        for m in self.marks:
            lines = _appended(m)
            if not lines:
                continue
            if m.own:
                keep = [line for line in lines if ERROR_WORDS.search(line)] or lines[-TAIL_LINES:]
            else:
                keep = [line for line in lines if self.name in line or ERROR_WORDS.search(line)]
            if keep:
                shown = [_clip(line) for line in keep[:LINES_PER_LOG]]
                out.append(LogExcerpt(m.host_path, tuple(shown), max(0, len(keep) - LINES_PER_LOG)))
        return out


def mark(templates: Sequence[str], name: str, root: Path = Path("/")) -> StartMark:
    """Remember the size of each of the flavor's ``driver_logs`` (``{name}`` = the domain's name) under ``root``."""
    marks = []
    for template in templates:
        host_path = template.format(name=name)
        file = root / host_path.lstrip("/")
        try:
            size = os.stat(file).st_size
        except OSError:
            size = 0  # created by the start: all of it is new
        marks.append(_Mark(host_path, file, size, "{name}" in template))
    return StartMark(name, tuple(marks))


def explain(error: AgentError, start: StartMark) -> AgentError:
    """``error`` with the logs' lines added to its message and as ``host_logs`` in its body."""
    excerpts = start.excerpts()
    if not excerpts:
        return error
    parts = [error.message]
    for ex in excerpts:
        more = f" (and {ex.omitted} more lines)" if ex.omitted else ""
        parts.append(f"{ex.path}{more}:\n" + "\n".join(f"  {line}" for line in ex.lines))
    error.message = "\n".join(parts)
    error.args = (error.message,)
    error.extra["host_logs"] = [ex.as_json() for ex in excerpts]
    return error


def _appended(m: _Mark) -> list[str]:
    try:
        with open(m.file, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            base = m.size if end >= m.size else 0  # smaller than before: rotated or truncated, all of it is new
            start = max(base, end - READ_BYTES)
            f.seek(start)
            data = f.read(end - start)
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace")
    if start > base:  # the cap cut into a line
        text = text.split("\n", 1)[-1]
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _clip(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS - 1] + "…"
