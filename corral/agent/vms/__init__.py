"""VM lifecycle on this host: define, start, stop, devices, memory, vCPUs, and recovery after a restart.

libvirt is the source of truth: every Corral domain carries its VmSpec in ``<metadata>`` (written by
``render``), the persistent definition is re-rendered whenever the spec changes, and on start the agent
reads every domain back (running ones are never touched). What a flavor cannot do live is refused with a
message saying what works instead, before anything is changed. ``VmManager`` (manager.py) is the facade the
rest of the agent uses; its collaborators are listed there.
"""

from corral.agent.vms.manager import VmManager
from corral.agent.vms.registry import Vm
from corral.agent.vms.rendering import RenderedVm
from corral.agent.vms.states import LIBVIRT_STATES, STATE_NAMES, state_name

__all__ = ["LIBVIRT_STATES", "STATE_NAMES", "RenderedVm", "Vm", "VmManager", "state_name"]
