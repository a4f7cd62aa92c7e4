"""Property-based: random valid VmSpecs through every flavor and guest type, against libvirt itself.

For each drawn spec: either render refuses (and the plan shows a refused decision for each refused field),
or the XML passes libvirt's schema (virt-xml-validate), libvirt's test driver defines it, and reading the
defined XML back finds every rendered spec device by its identity — also with every <alias>, <address> and
<driver> stripped, as libxl reports domains. A spec device the flavor does not render (an empty CD-ROM of a
PV guest) must have a translated decision saying so.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from corral.domain import config as cfg
from corral.domain.flavors import get_flavor
from corral.domain.flavors.base import Flavor, Outcome
from corral.domain.importer import import_domain
from corral.domain.read import read_devices
from corral.domain.render import plan, render, render_resolution
from corral.domain.resolve import RefusedError, resolve
from corral.domain.spec import GuestType, VmSpec, parse_spec

from .strategies import Limits, vm_specs
from .support import (
    assert_schema_valid,
    assert_unrendered_are_explained,
    define_and_read_back,
    needs_validator,
    strip,
)

pytestmark = needs_validator

KVM, KVM_TCG, XEN = get_flavor("kvm"), get_flavor("kvm", accel="tcg"), get_flavor("xen")

CASES = {
    "kvm": (KVM, None),
    "kvm-tcg": (KVM_TCG, None),
    "xen-pv": (XEN, GuestType.PV),
    "xen-pvh": (XEN, GuestType.PVH),
    "xen-hvm": (XEN, GuestType.HVM),
}

# Documented limits (issue 2, xen-gaps.md): what each flavor runs without refusing anything.
_ROOMY = {"min_memory_mib": 128, "max_memory_mib": 64 * 1024}
_XEN = {"floppy": False, "nic_filter": False, "crash_preserve": False, "cpu_custom": False, "public_console": False,
        "readonly_file_disk": False,  # qdisk drops it [X6]
        **_ROOMY}
RUNNABLE = {
    "kvm": Limits(bootloader=False, max_disks=4, max_vcpus=KVM.max_vcpus[GuestType.HVM], **_ROOMY),
    "kvm-tcg": Limits(bootloader=False, max_disks=4, max_vcpus=KVM.max_vcpus[GuestType.HVM], **_ROOMY),
    "xen-pv": Limits(cpu_features=False, spice=False, needs_kernel_or_bootloader=True, max_consoles=1,
                     max_vcpus=XEN.max_vcpus[GuestType.PV], **_XEN),
    "xen-pvh": Limits(cpu_features=False, spice=False, needs_kernel_or_bootloader=True, max_consoles=1,
                      max_vcpus=XEN.max_vcpus[GuestType.PVH], **_XEN),
    "xen-hvm": Limits(bootloader=False, pv_consoles=1, max_disks=4, max_vcpus=XEN.max_vcpus[GuestType.HVM],
                      readonly_block_disk=False,  # 'qemu-xen doesn't support read-only IDE disk drivers' [X6]
                      **_XEN),
}


def _without_password(spec: VmSpec) -> dict[str, Any]:
    data = spec.model_dump(mode="json")
    if data["graphics"]:
        data["graphics"]["password"] = None  # kept out of <metadata> on purpose
    return data


def check_spec(data: dict[str, Any], flavor: Flavor, guest_type: GuestType | None) -> bool:
    """The property; True when the spec rendered (False: refused, consistently with the plan)."""
    spec = parse_spec(data)
    decisions = plan(spec, flavor, guest_type)
    refused = [d for d in decisions if d.outcome is Outcome.REFUSED]
    try:
        xml, res = render_resolution(spec, flavor, guest_type)
    except RefusedError as exc:
        assert refused, f"render refused but the plan has no refused decision: {exc}"
        assert exc.decisions == refused
        for d in refused:
            assert f"{d.path}: " in str(exc)
        return False
    assert not refused, f"the plan refuses {refused} but render produced XML"
    assert res.decisions == decisions
    assert render(spec, flavor, guest_type) == xml, "rendering is not deterministic"
    assert_schema_valid(xml)

    want = assert_unrendered_are_explained(spec, res)
    live = define_and_read_back(xml)
    found = read_devices(live)
    got = {ld.device_id for ld in found if ld.device_id}
    assert got == want, f"identities read back {got}, spec devices rendered {want}"
    by_alias = {ld.config.alias: ld for ld in found if ld.matched_by == "alias"}
    for ld in found:
        alias = ld.config.alias or ""
        if alias.startswith(cfg.ALIAS_PREFIX):  # libvirt repeats serial0's alias on its <console> view
            assert alias in by_alias, f"user alias {alias} not used to identify {ld}"
            assert alias.startswith(f"{cfg.ALIAS_PREFIX}{by_alias[alias].device_id}")

    bare = read_devices(strip(live, "alias", "address", "driver"))
    assert [ld.device_id for ld in bare] == [ld.device_id for ld in found]
    for ld in bare:
        assert ld.config.alias is None
        if ld.device_id is None:
            continue
        if ld.kind == "nic":
            assert ld.matched_by == "mac"
        elif isinstance(ld.config, cfg.Disk):
            assert ld.matched_by == "target"
        else:
            assert ld.matched_by == "order", ld

    # a Corral domain imports as the spec it carries: the caller's, with its own guest type (the one the host
    # renders it as is the metadata's guest-type attribute)
    imported = import_domain(live)
    assert _without_password(imported.spec) == _without_password(spec)
    return True


@pytest.mark.parametrize("case", CASES)
@given(data=vm_specs())
def test_any_valid_spec_is_refused_or_renders_to_xml_libvirt_accepts(case: str, data: dict[str, Any]) -> None:
    event("rendered" if check_spec(data, *CASES[case]) else "refused")


@pytest.mark.parametrize("case", CASES)
@given(st.data())
def test_spec_within_documented_limits_always_renders(case: str, data: st.DataObject) -> None:
    spec = data.draw(vm_specs(RUNNABLE[case]), label="spec")
    assert check_spec(spec, *CASES[case]), "a spec within the documented limits was refused"


@given(data=vm_specs())
def test_resolution_spec_text_is_the_spec_as_json(data: dict[str, Any]) -> None:
    """The agent answers with the spec decoded from ``Resolution.spec_text`` (what ``<metadata>`` stores)
    instead of dumping it again: the two must be the same, but for a VNC password, which is never stored."""
    spec = VmSpec.model_validate(data)
    res = resolve(spec, get_flavor("kvm"))
    expected = spec.model_dump(mode="json")
    if spec.graphics is not None and spec.graphics.password:
        expected["graphics"].pop("password")
    assert json.loads(res.spec_text) == expected
