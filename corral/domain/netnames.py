"""The one rule that names the Linux bridge carrying a logical network on a host (issue 18).

The engine and the agent both need it: the engine to say whether a host carries a network (the network's bridge
is among the bridges the host reports) and to turn a NIC's ``network`` into the bridge a flavor renders; the
agent to make that bridge when it sets up the host's networks. It lives here, once, so they cannot disagree.

The rule (documented in docs/networks.md):

- a network name is 1-50 letters, digits, ``_`` or ``-``, starting with a letter or digit (``NETWORK_NAME_RE``);
- a name of up to 12 characters gives ``cn-<name>`` (``data`` -> ``cn-data``, ``ovirtmgmt`` -> ``cn-ovirtmgmt``);
- a longer one gives ``cx-<its first 5 characters>-<6 hex digits of the SHA-256 of the whole name>``
  (``storage-backend`` -> ``cx-stora-b09cb0``): 15 characters, Linux's limit (IFNAMSIZ 16 with the NUL).

The two prefixes differ, so a short name's bridge can never equal a long name's. The bridge depends on the
network's name only, not on its VLAN: the VLAN is the bridge's uplink (``<nic>.<vlan>`` enslaved to it), and a
name that followed the VLAN would rename the bridge under running VMs.
"""

from __future__ import annotations

import hashlib
import re

NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,49}\Z")
IFNAMSIZ = 15  # the longest Linux interface name (the kernel's IFNAMSIZ is 16 with the terminating NUL)
SHORT_PREFIX = "cn-"
LONG_PREFIX = "cx-"
_SHORT_MAX = IFNAMSIZ - len(SHORT_PREFIX)  # 12
_KEEP = 5  # characters of a long name kept in its bridge's name
_HASH = IFNAMSIZ - len(LONG_PREFIX) - _KEEP - 1  # 6 hex digits


def valid_network_name(name: str) -> bool:
    return bool(NETWORK_NAME_RE.match(name))


def bridge_for(network: str, vlan: int | None = None) -> str:
    """The name of the Linux bridge that carries logical network ``network`` on every host of its cluster.

    ``vlan`` does not change the name (see the module's docstring); it is accepted so that callers holding a
    network's fields can pass them all. Raises ValueError for a name that is not a network name."""
    if not valid_network_name(network):
        raise ValueError(f"not a network name: {network!r} (1-50 letters, digits, '_' or '-', "
                         "starting with a letter or digit)")
    if vlan is not None and not 1 <= vlan <= 4094:
        raise ValueError(f"not a VLAN id: {vlan} (1-4094)")
    if len(network) <= _SHORT_MAX:
        return SHORT_PREFIX + network
    digest = hashlib.sha256(network.encode()).hexdigest()[:_HASH]
    return f"{LONG_PREFIX}{network[:_KEEP]}-{digest}"


def is_network_bridge(bridge: str) -> bool:
    """Whether a bridge name is one this rule makes (a bridge Corral's networks own, not the operator's)."""
    return bridge.startswith((SHORT_PREFIX, LONG_PREFIX)) and len(bridge) <= IFNAMSIZ
