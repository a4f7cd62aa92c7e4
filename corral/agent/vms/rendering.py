"""A VmSpec turned into domain XML for this very host: its flavor's decisions, the host facts rendering needs,
and what the host lacks (bridges, files...), refused by field before anything changes.

A ``Resolution`` may lack its domain (a refused guest type); what the agent defines is a ``RenderedVm``, a
resolution the flavor accepted, whose domain is there: it is narrowed once, here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from corral.agent.cloudinit import SeedStore
from corral.agent.errors import NotFound, Refused
from corral.agent.host import Detection
from corral.agent.hostfacts import HostView, check_spec, merge
from corral.agent.vms.registry import JSON, AnswerCache, DevicesCache, Vm
from corral.domain import config as cfg
from corral.domain.cloudinit import add_seed
from corral.domain.flavors.base import Decision, Outcome
from corral.domain.resolve import RefusedError, RenderOptions, Resolution, mac_for, resolve
from corral.domain.spec import GuestType, VmSpec


def _refused(exc: RefusedError) -> Refused:
    return Refused(str(exc), field=exc.field, decisions=[d.as_dict() for d in exc.decisions])


@dataclass(frozen=True, slots=True)
class RenderedVm:
    """A resolution the flavor accepted (nothing refused): the domain to define and the decisions behind it."""

    resolution: Resolution
    domain: cfg.Domain

    @classmethod
    def accepted(cls, res: Resolution) -> RenderedVm:
        """``res`` narrowed to a domain; a refusal (which leaves no domain for a refused guest type) raises."""
        if res.refused or res.domain is None:
            raise _refused(RefusedError(res.flavor, res.refused))
        return cls(res, res.domain)

    @property
    def guest_type(self) -> GuestType:
        return self.resolution.guest_type

    def device(self, device_id: str) -> cfg.Device | None:
        """The device rendered for a spec device, or None where the flavor renders none (yet)."""
        for dev in self.domain.devices:
            if dev.device_id == device_id or dev.alias == f"{cfg.ALIAS_PREFIX}{device_id}":
                return dev
        return None

    def rendered(self, device_id: str) -> cfg.Device:
        dev = self.device(device_id)
        if dev is None:
            raise NotFound(f"device {device_id} is not rendered for this host", field="device_id")
        return dev

    def seed(self, vm: Vm) -> None:
        """This resolution is the one ``Rendering.expected_devices`` would compute again for ``vm`` (just given
        its spec), and its spec JSON the one answers carry (decoded: a third of the cost of dumping the spec)."""
        vm.devices_cache = DevicesCache(vm.spec, vm.guest_type, self.domain.devices)
        spec = vm.spec
        text = self.resolution.spec_text
        if spec is not None and text and not (spec.graphics is not None and spec.graphics.password):
            vm.answer_cache = AnswerCache(spec, vm.guest_type, JSON.decode(text),
                                          vm.guest_type.value if vm.guest_type else None)


class Rendering:
    """The flavor applied on this host: render options from host facts, host refusals, plans, renders."""

    def __init__(self, get_conn: Callable[[], libvirt.virConnect], det: Detection, state_dir: Path,
                 host_view: Callable[[], HostView] | None = None) -> None:
        self._get_conn = get_conn
        self.det = det
        self.flavor = det.flavor
        self.state_dir = state_dir
        self._options: tuple[float, RenderOptions | None] = (0.0, None)  # (when read, options)
        self._host_view = host_view
        self._view: tuple[float, HostView | None] = (0.0, None)  # (when read, view)
        self.seeds = SeedStore(state_dir)  # cloud-init seeds (corral.agent.cloudinit)

    def _resolve(self, spec: VmSpec, guest_type: GuestType | None,
                 options: RenderOptions | None = None) -> Resolution:
        """The flavor's resolution of ``spec``, with its cloud-init seed device (a device of this host's
        making, not one of the spec's: ``corral.domain.cloudinit``)."""
        res = resolve(spec, self.flavor, guest_type, options)
        if spec.cloud_init is not None:
            add_seed(res, spec, str(self.seeds.path(spec.id)))
        return res

    def prepare(self, spec: VmSpec) -> None:
        """The host-side files ``spec`` needs before its domain is defined or started: its cloud-init seed,
        written again only when its data changed."""
        self.seeds.ensure(spec, self.flavor.mac_prefix)

    def forget(self, uuid: str) -> None:
        """A VM undefined: its host-side files go."""
        self.seeds.drop(uuid)

    def options(self) -> RenderOptions:
        """Host facts for rendering, read once a minute (the CPU count is a libvirt call), not per render."""
        when, options = self._options
        if options is not None and time.monotonic() - when < 60:
            return options
        try:
            cpus: int | None = self._get_conn().getInfo()[2]
        except libvirt.libvirtError:
            cpus = None
        console_dir = None
        if not self.det.emulated:
            console_dir = str(self.state_dir / "consoles")
        options = RenderOptions(host_cpus=cpus, console_log_dir=console_dir,
                                channel_dir=str(self.state_dir / "channels"))
        if cpus is not None:
            self._options = (time.monotonic(), options)
        return options

    def host_refusals(self, spec: VmSpec, prefix: str = "") -> list[Decision]:
        """What this host lacks for ``spec`` (bridges, files...); the view is read again before a refusal, so a
        bridge added a moment ago is seen (it is otherwise kept a few seconds: creates come in bursts)."""
        if self._host_view is None:
            return []
        when, view = self._view
        if view is None or time.monotonic() - when > 5:
            view = self._host_view()
            self._view = (time.monotonic(), view)
            return [d for d in check_spec(spec, view) if d.path.startswith(prefix)]
        found = [d for d in check_spec(spec, view) if d.path.startswith(prefix)]
        if found:
            self._view = (0.0, None)
            return self.host_refusals(spec, prefix)
        return found

    def refuse_missing(self, spec: VmSpec, doing: str, prefix: str = "") -> None:
        missing = self.host_refusals(spec, prefix)
        if missing:
            raise Refused(f"cannot {doing}: " + "; ".join(f"{d.path}: {d.detail}" for d in missing),
                          field=missing[0].path, decisions=[d.as_dict() for d in missing])

    def plan(self, spec: VmSpec) -> dict[str, Any]:
        res = self._resolve(spec, None, self.options())
        decisions = merge(res.decisions, self.host_refusals(spec))
        ok = not any(d.outcome is Outcome.REFUSED for d in decisions)
        return {"flavor": self.flavor.name, "guest_type": res.guest_type.value, "ok": ok,
                "decisions": [d.as_dict() for d in decisions]}

    def render(self, spec: VmSpec, guest_type: GuestType | None = None) -> tuple[str, RenderedVm]:
        """The domain XML to define (unindented: libvirt needs no indenting) and the resolution behind it."""
        rendered = RenderedVm.accepted(self._resolve(spec, guest_type, self.options()))
        self.prepare(spec)
        return rendered.domain.to_xml(False), rendered

    def check(self, vm: Vm, spec: VmSpec, path_prefix: str) -> RenderedVm:
        """A change of ``vm`` to ``spec``, checked against the host and the flavor; the refusals named are
        those under ``path_prefix`` (the part changed) where there are any, else all."""
        res = self._resolve(spec, vm.guest_type, self.options())
        self.refuse_missing(spec, f"change {vm.name}", path_prefix)
        bad = [d for d in res.refused if d.path.startswith(path_prefix) or path_prefix == ""]
        if res.refused:
            bad = bad or res.refused
            raise Refused(f"{self.flavor.title} refuses: " + "; ".join(f"{d.path}: {d.detail}" for d in bad),
                          field=bad[0].path, decisions=[d.as_dict() for d in bad])
        return RenderedVm.accepted(res)

    def fill_macs(self, spec: VmSpec) -> VmSpec:
        """Store generated MACs in the spec, so they survive a move to a host of another flavor."""
        if all(n.mac for n in spec.nics):
            return spec
        nics = [n if n.mac else n.model_copy(update={"mac": mac_for(n.id, self.flavor.mac_prefix)})
                for n in spec.nics]
        return spec.model_copy(update={"nics": nics})

    def expected_devices(self, vm: Vm) -> list[cfg.Device]:
        """The devices the spec renders to, which live devices are matched against: resolved once per spec
        (``read_domain`` resolved the spec and re-validated the metadata's copy of it on every read)."""
        assert vm.spec is not None
        cached = vm.devices_cache
        if cached is None or cached.spec is not vm.spec or cached.guest_type != vm.guest_type:
            res = self._resolve(vm.spec, vm.guest_type)
            cached = vm.devices_cache = DevicesCache(vm.spec, vm.guest_type,
                                                     res.domain.devices if res.domain else [])
        return cached.devices
