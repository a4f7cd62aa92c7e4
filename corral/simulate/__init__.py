"""``corral simulate``: many simulated host agents in one process, speaking the agent API (docs/agent-api.md).

Addressing: host ``n`` (1..N) is the agent at ``http://HOST:PORT/hosts/<n>``; ``/hosts/<n>/v1/health``,
``/hosts/<n>/v1/vms``, ... answer exactly as ``corral agent serve`` answers ``/v1/...`` (same routes and OpenAPI
document, same JSON keys, same error bodies and statuses). ``GET /`` summarises the simulator.

Token: one bearer token for every host (``--token``, ``--token-file``, or derived from ``--seed``), checked as
the agent checks it: every path but ``/v1/health`` needs it.

Hosts: a mix of Xen dom0s and KVM hosts (``--xen-ratio``), as a real, not emulated, agent reports them. What
differs between them comes from the host's flavor (``corral.domain.flavors``: URI, accel, graceful destroy,
node CPU stats, console logs, NIC link control, memory at start, host tools...) and from the host kind's data
(``corral.simulate.templates.HostKind``: what the simulated libvirt driver and machine show, e.g. the facts a
healthy host reads); the hardware check and the guest types are the flavor's host checks evaluated on those facts
(``corral.domain.flavors.hostcheck``), as the agent and the deploy evaluate them. Capability matrix from the flavor,
bridges ``br0`` (on every host) plus the kind's own, CPUs, memory and NUMA cells. VMs (of every guest type the
flavor has) have specs that plan and render on their host; running ones have CPU time that grows, a balloon
that now and then sits below its target, RSS that moves; random pauses (resumed seconds later) and rare crashes
publish lifecycle events (``--event-rate``). A plan, create, start or device change refuses a bridge the host
lacks, as the agent does (guests' files are taken to exist).

What the simulation does not reproduce of a real agent:

- no libvirt: ``health.libvirt`` is always true, no 503 ``unavailable``, and the only 502 ``libvirt`` error is a
  driver that does not overcommit (libxl) refusing to start a VM it has no free memory for; libvirt's own
  refusals (e.g. hot-plugging on a bus that cannot) are not simulated — the flavor's refusals (422 ``refused``,
  409 ``unsupported``) and the host's missing bridges are;
- no hooks (no ``warnings``, no 409 ``hook_failed``), no external (non-Corral) domains, no Xen device-model
  watchdog (no ``device_model_lost`` events), no TLS client certificates (bearer token only);
- the devices of ``GET /v1/vms/{id}`` are the rendered ones plus what libvirt usually adds (console twin of the
  serial port, controllers, inputs, vif/vnet names, VNC port, pty), not a real live XML;
- ``reboot`` changes nothing visible (as QEMU: no lifecycle event); the console log is a few invented lines;
- stats keys are libvirt's (``cpu_time``, ``balloon_current``, ``vcpu_current``, ``vcpu_0_time``...), as the
  agent passes them on; values are invented.
"""

from corral.simulate.app import create_simulator_app
from corral.simulate.fleet import Simulator
from corral.simulate.sim import SimHost
from corral.simulate.simvm import SimulatorSettings, SimVm

__all__ = ["SimHost", "SimVm", "Simulator", "SimulatorSettings", "create_simulator_app"]
