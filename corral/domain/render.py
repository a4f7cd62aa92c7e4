"""VmSpec -> libvirt domain XML for one flavor. Refuses, all at once, whatever the flavor refuses."""

from __future__ import annotations

from corral.domain.flavors.base import Decision, Flavor
from corral.domain.resolve import RefusedError, RenderOptions, Resolution, resolve
from corral.domain.spec import GuestType, VmSpec


def render_resolution(spec: VmSpec, flavor: Flavor, guest_type: GuestType | None = None,
                      options: RenderOptions | None = None, *, pretty: bool = True) -> tuple[str, Resolution]:
    """The domain XML and the resolution behind it (the agent needs both: e.g. NIC links to set down).
    ``pretty=False`` skips the indenting people want and libvirt does not need."""
    res = resolve(spec, flavor, guest_type, options)
    if res.refused or res.domain is None:
        raise RefusedError(flavor, res.refused)
    return res.domain.to_xml(pretty), res


def render(spec: VmSpec, flavor: Flavor, guest_type: GuestType | None = None,
           options: RenderOptions | None = None) -> str:
    return render_resolution(spec, flavor, guest_type, options)[0]


def plan(spec: VmSpec, flavor: Flavor, guest_type: GuestType | None = None,
         options: RenderOptions | None = None) -> list[Decision]:
    """Every decision the flavor makes for this spec, refused ones included; changes nothing."""
    return resolve(spec, flavor, guest_type, options).decisions
