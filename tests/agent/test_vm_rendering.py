"""``RenderedVm``: what the agent defines is a resolution the flavor accepted, with its domain narrowed once;
a refusal (or a resolution left without a domain) is answered as the agent's ``Refused`` naming the field,
never an ``AttributeError`` on a missing domain later. And the package keeps mypy --strict without
``type: ignore`` (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.agent.errors import NotFound, Refused
from corral.agent.vms import RenderedVm
from corral.domain import config as cfg
from corral.domain.flavors import all_flavors
from corral.domain.resolve import Resolution, resolve
from corral.domain.spec import GuestType, VmSpec

XEN = next(f for f in all_flavors() if f.name == "xen")
PACKAGE = Path(__file__).resolve().parents[2] / "corral" / "agent" / "vms"


def pv_spec(**extra: object) -> VmSpec:
    return VmSpec.model_validate({"name": "r1", "memory_mib": 128, "kernel": "/boot/vmlinuz", "guest_type": "pv",
                                  "nics": [{"source": "xenbr0"}], **extra})


def test_accepted_resolution_keeps_its_domain_and_finds_devices_by_spec_id() -> None:
    spec = pv_spec()
    res = resolve(spec, XEN)
    rendered = RenderedVm.accepted(res)
    assert rendered.domain is res.domain and rendered.guest_type is GuestType.PV
    nic = rendered.rendered(spec.nics[0].id)
    assert isinstance(nic, cfg.Interface) and nic.source == "xenbr0"
    assert rendered.device("no-such-device") is None
    with pytest.raises(NotFound) as err:
        rendered.rendered("no-such-device")
    assert err.value.field == "device_id"


def test_refused_resolution_is_refused_by_field() -> None:
    res = resolve(pv_spec(disks=[{"source": "/img/f.img", "device": "floppy"}]), XEN)
    assert res.domain is not None  # a refused field still leaves a domain: refusal, not the domain, decides
    with pytest.raises(Refused) as err:
        RenderedVm.accepted(res)
    assert err.value.field == "disks.0.device" and "floppy" in err.value.message


def test_resolution_without_domain_is_refused_not_an_attribute_error() -> None:
    with pytest.raises(Refused):
        RenderedVm.accepted(Resolution(flavor=XEN, guest_type=GuestType.PV))


def test_vm_package_has_no_type_ignore() -> None:
    offenders = [f"{p.name}:{n}" for p in sorted(PACKAGE.glob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1) if "type: ignore" in line]
    assert not offenders, offenders
