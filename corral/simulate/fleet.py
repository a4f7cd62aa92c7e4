"""The simulated fleet: many ``SimHost``s made from one seed, one event loop between them. Split from
``corral.simulate.sim`` (one simulated host)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator

from corral.simulate.sim import SimHost
from corral.simulate.simvm import (
    CACHE_SPECS,
    OTHER_FLAVOR,
    PAUSED,
    PAUSED_IOERROR,
    RATIO_FLAVOR,
    RUNNING,
    SHUTOFF_SHUTDOWN,
    SimulatorSettings,
    SimVm,
    derive_token,
)
from corral.simulate.templates import KINDS, PROFILES, TEMPLATE_WEIGHTS, TEMPLATES


class Simulator:
    """N hosts, their VMs, and the random disturbances (pauses that resume later, rare crashes)."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        CACHE_SPECS[0] = settings.cache_specs
        self.token = settings.token or derive_token(settings.seed)
        self.rng = random.Random(f"corral-simulate:{settings.seed}:events")
        self.hosts: list[SimHost] = [self._make_host(n) for n in range(1, settings.hosts + 1)]

    def host(self, n: int) -> SimHost | None:
        return self.hosts[n - 1] if 1 <= n <= len(self.hosts) else None

    def flavor_of(self, n: int) -> str:
        """The flavor of host ``n``: the ratio's flavor (``xen_ratio``) spread evenly, exactly round-down(n *
        ratio) of the first n hosts, the other flavor for the rest."""
        ratio = min(1.0, max(0.0, self.settings.xen_ratio))
        return RATIO_FLAVOR if int(n * ratio + 1e-9) != int((n - 1) * ratio + 1e-9) else OTHER_FLAVOR

    def flavor_counts(self) -> dict[str, int]:
        """How many hosts of each flavor, by flavor name (every flavor the simulation has, even at zero)."""
        counts = dict.fromkeys(KINDS, 0)
        for host in self.hosts:
            counts[host.flavor_name] += 1
        return counts

    def _make_host(self, n: int) -> SimHost:
        rng = random.Random(f"corral-simulate:{self.settings.seed}:host:{n}")
        profile = PROFILES[(self.flavor_of(n), rng.choice(("intel", "amd")))]
        host = SimHost(self, n, profile, rng.choice((32, 48, 64, 96)),
                       rng.choice((256, 384, 512, 768)) * 1024)
        indexes, weights = TEMPLATE_WEIGHTS[profile.flavor.name]
        now = time.monotonic()
        width = len(str(self.settings.vms_per_host))
        for m in range(1, self.settings.vms_per_host + 1):
            vm_id = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))
            tmpl = TEMPLATES[rng.choices(indexes, weights)[0]]
            mem = rng.choice((512, 1024, 2048, 2048, 4096, 8192))
            vcpus = rng.choice((1, 2, 2, 4))
            vm = SimVm(vm_id, f"sim{n}-vm{m:0{width}d}", tmpl.index, None, tmpl.guest_type, mem, mem, vcpus,
                       vcpus, rng.randint(2, 60))
            if rng.random() < self.settings.running_ratio and host.free_memory_mib() >= mem:
                host.start_domain(vm, now - rng.uniform(600, 30 * 86400))
            elif rng.random() < 0.5:
                vm.reason = SHUTOFF_SHUTDOWN
            host.add(vm)
        # what the agent publishes once it has read its domains back (``VmManager.recover``)
        running = sum(1 for vm in host.vms.values() if vm.active)
        host.bus.publish("agent", None, None, "recovered", managed=len(host.vms), external=0, running=running)
        return host

    def vm_count(self) -> int:
        return sum(len(h.vms) for h in self.hosts)

    # ---- random disturbances ------------------------------------------------------------------------------

    def disturb(self) -> bool:
        """One random change on a random running VM: a pause (resumed a little later) or, rarely, a crash."""
        if not self.hosts:
            return False
        for _ in range(8):
            host = self.rng.choice(self.hosts)
            if not host.vms or host.busy:
                continue
            vm = list(host.vms.values())[self.rng.randrange(len(host.vms))]
            if vm.state != RUNNING or vm.shutdown_timer is not None:
                continue
            if self.rng.random() < self.settings.crash_share:
                host.crash(vm)
            else:
                host.pause_domain(vm, PAUSED_IOERROR)
                delay = self.rng.uniform(*self.settings.resume_after)
                vm.resume_timer = asyncio.get_running_loop().call_later(delay, self._resume, host, vm)
            return True
        return False

    @staticmethod
    def _resume(host: SimHost, vm: SimVm) -> None:
        vm.resume_timer = None
        if host.vms.get(vm.uuid) is vm and vm.state == PAUSED:
            host.resume_domain(vm)

    async def run_disturbances(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Poisson arrivals at ``event_rate`` per second until cancelled."""
        rate = self.settings.event_rate
        if rate <= 0:
            return
        due = clock() + self.rng.expovariate(rate)
        while True:
            now = clock()
            while due <= now:
                self.disturb()
                due += self.rng.expovariate(rate)
            await asyncio.sleep(min(1.0, max(0.01, due - clock())))

    def urls(self, base: str) -> Iterator[str]:
        for host in self.hosts:
            yield f"{base}/hosts/{host.n}"


__all__ = ["SimHost", "SimVm", "Simulator", "SimulatorSettings", "derive_token"]
