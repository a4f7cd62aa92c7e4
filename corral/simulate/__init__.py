"""``corral simulate``: many simulated host agents in one process, speaking the agent API (docs/agent-api.md).

Addressing: host ``n`` (1..N) is the agent at ``http://HOST:PORT/hosts/<n>``; ``/hosts/<n>/v1/health``,
``/hosts/<n>/v1/vms``, ... answer exactly as ``corral agent serve`` answers ``/v1/...`` (same routes and OpenAPI
document, same JSON keys, same error bodies and statuses). ``GET /`` summarises the simulator.

Token: one bearer token for every host (``--token``, ``--token-file``, or derived from ``--seed``), checked as
the agent checks it: every path but ``/v1/health`` needs it.

Hosts: a mix of Xen dom0s (flavor and hypervisor ``xen``, detection evidence of a control domain) and KVM hosts,
as a real, not emulated, agent reports them: capability matrix from the flavor, a passing hardware check,
bridges ``br0`` (on every host) plus ``xenbr0``/``virbr0``, CPUs, memory and NUMA cells. VMs (Xen: HVM, PVH
and PV guests; KVM: HVM) have specs that plan and render on their host; running ones have CPU time that grows,
a balloon that now and then sits below its target, RSS that moves; random pauses (resumed seconds later) and
rare crashes publish lifecycle events (``--event-rate``).

What the simulation does not reproduce of a real agent:

- no libvirt: ``health.libvirt`` is always true, no 503 ``unavailable``, and the only 502 ``libvirt`` error is a
  Xen host refusing to start a VM it has no free memory for; libvirt's own refusals (e.g. hot-plugging on a bus
  that cannot) are not simulated — the flavor's refusals (422 ``refused``, 409 ``unsupported``) are;
- no hooks (no ``warnings``, no 409 ``hook_failed``), no external (non-Corral) domains, no Xen device-model
  watchdog (no ``device_model_lost`` events), no TLS client certificates (bearer token only);
- the devices of ``GET /v1/vms/{id}`` are the rendered ones plus what libvirt usually adds (console twin of the
  serial port, controllers, inputs, vif/vnet names, VNC port, pty), not a real live XML;
- ``reboot`` changes nothing visible (as QEMU: no lifecycle event); the console log is a few invented lines;
- stats keys are libvirt's (``cpu_time``, ``balloon_current``, ``vcpu_current``, ``vcpu_0_time``...), as the
  agent passes them on; values are invented.
"""

from corral.simulate.app import create_simulator_app
from corral.simulate.sim import SimHost, Simulator, SimulatorSettings, SimVm

__all__ = ["SimHost", "SimVm", "Simulator", "SimulatorSettings", "create_simulator_app"]
