"""Power management of a host: which fence agent, with which options, and running it.

A fence agent is an executable of the ``fence-agents`` package (``fence_ipmilan``, ``fence_virsh``, ...) or a
script speaking the same protocol (``labs/fence/fence_corral_lab``). The protocol is the FenceAgentAPI of
ClusterLabs/fence-agents (doc/FenceAgentAPI.md): the caller writes ``argument=value`` lines on the agent's
standard input, one per line, with no newline in a value; ``action=off`` exits 0 when the node is off and 1 when
it is not or cannot be verified ("a timeout is a failure, not success"); ``action=status`` exits 0 when the
port is on, 1 when the device cannot be contacted, 2 when it is off. Corral runs ``off`` and then asks
``status`` until it answers 2: only that counts as fenced.

Which executables may run: an agent is named ``fence_*`` and found in the engine's ``PATH`` (where the
fence-agents package puts them, /usr/sbin) or in a directory of ``CORRAL_FENCE_PATH`` (colon separated, e.g.
the labs' ``labs/fence``); an absolute path is accepted only inside those directories. An admin's API call
thus chooses among agents the engine's operator installed, never an arbitrary program on the engine.

Secrets among the options (a key naming a password, a secret or an SNMP community) are never answered back
(``redacted``); a ``PUT`` that sends such a key as null keeps the stored value (``merge_secrets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

FENCE_PATH_ENV = "CORRAL_FENCE_PATH"
AGENT_NAME = re.compile(r"^fence_[A-Za-z0-9_]{1,64}$")
OPTION_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
# set by the engine, never by the options
RESERVED = frozenset({"action", "option"})
SECRET_KEY = re.compile(r"pass|secret|community|token|kg", re.IGNORECASE)
OUTPUT_LIMIT = 4096


class FenceConfig(BaseModel):
    """``PUT /api/v1/hosts/{host}/fencing``: ``agent`` null removes power management."""

    agent: str | None = Field(None, max_length=1024,
                              description="fence_* name found in PATH or CORRAL_FENCE_PATH, or a path inside them")
    options: dict[str, str | None] = Field(default_factory=dict, description="the agent's stdin options "
                                           "(ip, username, password, plug, lanplus ...); a secret sent as null "
                                           "keeps the stored one")
    timeout: int = Field(60, ge=1, le=600, description="seconds for each run of the agent")

    @field_validator("options")
    @classmethod
    def _options(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        if len(value) > 64:
            raise ValueError("at most 64 options")
        for key, v in value.items():
            if not OPTION_KEY.match(key):
                raise ValueError(f"option {key!r}: a name of letters, digits, _ and -")
            if key.lower() in RESERVED:
                raise ValueError(f"option {key!r}: Corral sets the action itself")
            if v is not None and (len(v) > 1024 or any(c in v for c in "\r\n\0")):
                raise ValueError(f"option {key!r}: at most 1024 characters, no line break")
        return value


class FenceRefused(ValueError):
    """The configuration cannot be used (the message names what)."""


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(FENCE_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, *(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p),
            Path("/usr/sbin"), Path("/sbin")]


def resolve(agent: str) -> Path:
    """The executable an agent setting names, or FenceRefused saying why not."""
    dirs = search_dirs()
    if "/" not in agent:
        if not AGENT_NAME.match(agent):
            raise FenceRefused(f"agent {agent!r}: a fence agent is named fence_* (or give its path)")
        found = shutil.which(agent, path=os.pathsep.join(str(d) for d in dirs))
        if found is None:
            raise FenceRefused(f"agent {agent}: not found in PATH or {FENCE_PATH_ENV} "
                               "(is the fence-agents package installed?)")
        return Path(found)
    path = Path(agent)
    if not path.is_absolute():
        raise FenceRefused(f"agent {agent!r}: a path must be absolute")
    real = path.resolve()
    allowed = [d.resolve() for d in dirs if d.is_dir()]
    if not any(real.parent == d for d in allowed):
        raise FenceRefused(f"agent {agent}: not in a directory of PATH or {FENCE_PATH_ENV}")
    if not AGENT_NAME.match(real.name):
        raise FenceRefused(f"agent {agent}: a fence agent is named fence_*")
    if not (real.is_file() and os.access(real, os.X_OK)):
        raise FenceRefused(f"agent {agent}: not an executable file")
    return real


def is_secret(key: str) -> bool:
    return bool(SECRET_KEY.search(key))


def redacted(fence: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stored setting as answers show it: secrets null, and listed in ``secrets_set``."""
    if not fence:
        return None
    options = dict(fence.get("options") or {})
    hidden = sorted(k for k in options if is_secret(k) and options[k])
    return {**fence, "options": {k: (None if k in hidden else v) for k, v in options.items()},
            "secrets_set": hidden}


def merge_secrets(new: dict[str, str | None], old: dict[str, Any] | None) -> dict[str, str]:
    """The options to store: a secret sent as null keeps the stored value; any other null drops the option."""
    stored = (old or {}).get("options") or {}
    out: dict[str, str] = {}
    for key, value in new.items():
        if value is None:
            if is_secret(key) and isinstance(stored.get(key), str):
                out[key] = stored[key]
            continue
        out[key] = value
    return out


@dataclass
class RunResult:
    action: str
    code: int | None  # None: timed out (killed) or could not run
    output: str

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "exit": self.code, "output": self.output}


def stdin_text(action: str, options: dict[str, Any], nodename: str) -> bytes:
    """The agent's standard input: ``action=...`` then the options, ``nodename`` the host's name unless set."""
    lines = [f"action={action}"]
    opts = {"nodename": nodename, **{k: str(v) for k, v in options.items()}}
    lines += [f"{k}={v}" for k, v in opts.items()]
    return ("\n".join(lines) + "\n").encode()


async def run(fence: dict[str, Any], action: str, nodename: str) -> RunResult:
    """Run the host's agent once with ``action``; the agent is killed at the setting's timeout (no exit code:
    a failure). Output (stdout and stderr together) is kept for the events, cut to 4 KiB; options are never
    put on the command line (``ps`` would show the password)."""
    try:
        exe = resolve(str(fence.get("agent") or ""))
    except FenceRefused as exc:
        return RunResult(action, None, str(exc))
    timeout = float(fence.get("timeout") or 60)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(exe), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return RunResult(action, None, f"cannot run {exe}: {exc}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin_text(action, fence.get("options") or {},
                                                                    nodename)), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return RunResult(action, None, f"{exe.name} did not finish within {timeout:g} s (killed)")
    text = out.decode(errors="replace").strip()
    return RunResult(action, proc.returncode, text[-OUTPUT_LIMIT:])


@dataclass
class FenceOutcome:
    fenced: bool
    reason: str
    runs: list[RunResult]


async def fence_off(fence: dict[str, Any], nodename: str, *, status_tries: int = 5,
                    status_delay: float = 1.0) -> FenceOutcome:
    """``off``, then ``status`` until it says off (exit 2): fenced only then. Anything else is a failure with
    its reason; the caller restarts nothing."""
    off = await run(fence, "off", nodename)
    runs = [off]
    if off.code != 0:
        why = "timed out or could not run" if off.code is None else f"exit {off.code}"
        return FenceOutcome(False, f"off failed ({why}): {off.output or 'no output'}", runs)
    for attempt in range(status_tries):
        status = await run(fence, "status", nodename)
        runs.append(status)
        if status.code == 2:
            return FenceOutcome(True, "power off confirmed by the agent's status", runs)
        if attempt + 1 < status_tries:
            await asyncio.sleep(status_delay)
    last = runs[-1]
    said = "timed out" if last.code is None else {0: "on", 1: "cannot contact the device"}.get(
        last.code, f"exit {last.code}")
    return FenceOutcome(False, f"off answered 0 but status still says {said}: {last.output or 'no output'}", runs)


async def status(fence: dict[str, Any], nodename: str) -> dict[str, Any]:
    """``POST .../fence-test``: the agent's status: ``power`` on | off | unknown, with the run."""
    result = await run(fence, "status", nodename)
    power = {0: "on", 2: "off"}.get(result.code, "unknown") if result.code is not None else "unknown"
    return {"ok": result.code in (0, 2), "power": power, **result.as_dict()}
