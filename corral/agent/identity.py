"""The host's identity: one UUID per host, the same whatever address the engine uses to reach the agent.

The engine refuses to add a host twice (``127.0.0.1`` and ``localhost`` are one agent) by this UUID, so it must
be stable across agent and libvirtd restarts and distinct between hosts:

- A real host starts from libvirt's own host UUID (``<host><uuid>`` of the capabilities, which libvirt takes
  from SMBIOS or ``host_uuid`` in libvirtd.conf).
- libvirt's test driver answers no host UUID (and one connection is like every other), so each emulated host,
  e.g. the two agents of ``corral all-in-one``, gets a random UUID: what is stable per agent is its state dir.
- libvirt invents a *temporary* UUID when SMBIOS has no valid one (a QEMU guest started without ``-uuid``,
  such as the Xen lab's dom0), a new one at every libvirtd start. So the first UUID the agent settles on is
  kept in its state dir (``host-uuid``) and wins from then on: the host keeps one identity.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import libvirt
from lxml import etree

log = logging.getLogger(__name__)

FILE = "host-uuid"


def _valid(text: str | None) -> str | None:
    """A UUID that names something: not malformed, not all one digit (all zeros, all f's: a blank SMBIOS)."""
    try:
        value = uuid.UUID((text or "").strip())
    except ValueError:
        return None
    digits = value.hex
    return None if digits == digits[0] * len(digits) else str(value)


def libvirt_host_uuid(conn: libvirt.virConnect) -> str | None:
    """libvirt's ``<host><uuid>``, if it answers a valid one."""
    try:
        caps = etree.fromstring(conn.getCapabilities().encode())
    except (libvirt.libvirtError, etree.XMLSyntaxError):
        return None
    return _valid(caps.findtext("host/uuid"))


def host_uuid(conn: libvirt.virConnect, state_dir: Path, emulated: bool) -> str:
    """The host's identity: the one kept in ``state_dir``, else libvirt's (real hosts) or a new random one
    (emulated hosts), which is then kept."""
    path = state_dir / FILE
    try:
        kept = _valid(path.read_text())
    except OSError:
        kept = None
    if kept is not None:
        return kept
    value = (None if emulated else libvirt_host_uuid(conn)) or str(uuid.uuid4())
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value + "\n")
        tmp.replace(path)
    except OSError as exc:  # an unwritable state dir: the identity holds for this run only
        log.warning("cannot keep the host UUID in %s: %s", path, exc)
    return value
