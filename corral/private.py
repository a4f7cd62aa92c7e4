"""Files and directories that hold secrets: readable by their owner only, whatever the umask.

The engine's data directory holds its database (hashed tokens, agent tokens, users), its CA key and the admin
credentials of ``corral all-in-one``; an agent's token file is root on its hypervisor. A umask of 022 would make
them all readable by every local user. So these paths are tightened when they are made *and* each time a
process starts on them (an installation made by an older version is fixed, with a log line saying so).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)


class NotPrivate(ValueError):
    """A path that cannot be made private: shared (a sticky directory such as /tmp) or someone else's."""


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """Make ``path`` (and missing parents, with the usual mode) and leave it ``mode``: 0700, or 0711 where other
    users (QEMU) must reach known names inside but must not list them."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    if st.st_mode & stat.S_ISVTX:
        raise NotPrivate(f"{path} is a shared directory (sticky bit, like /tmp): choose a directory of its own")
    _tighten(path, st, mode)
    return path


def private_file(path: Path, mode: int = 0o600) -> None:
    """Leave an existing file ``mode`` (no access for group and others)."""
    if path.exists():
        _tighten(path, path.stat(), mode)


def _tighten(path: Path, st: os.stat_result, mode: int) -> None:
    current = stat.S_IMODE(st.st_mode)
    if current & ~mode & 0o077 == 0:
        return  # already no wider than asked (a 0700 directory asked 0711 stays 0700)
    if st.st_uid != os.geteuid():
        raise NotPrivate(f"{path} is open to other users (mode {current:o}) and owned by uid {st.st_uid}, not "
                         f"this process: make it {mode:o}")
    os.chmod(path, (current & 0o700) | (mode & 0o077))
    log.warning("%s was mode %o: now %o (it holds secrets)", path, current, (current & 0o700) | (mode & 0o077))
