"""NicSpec.network (issue 18): a NIC on a logical network gets the network's bridge as its source, so a flavor
renders the bridge; a source naming another bridge (or a libvirt network) is refused by field."""

from __future__ import annotations

import pytest
from lxml import etree

from corral.domain.flavors import get_flavor
from corral.domain.render import render
from corral.domain.spec import SpecError, parse_spec


def _spec(nic: dict[str, object]) -> dict[str, object]:
    return {"name": "n", "memory_mib": 64, "nics": [nic]}


def test_network_nic_is_its_bridge_and_keeps_its_name() -> None:
    spec = parse_spec(_spec({"network": "storage-backend"}))
    nic = spec.nics[0]
    assert (nic.network, nic.source_type.value, nic.source) == ("storage-backend", "bridge", "cx-stora-b09cb0")
    again = parse_spec(spec.model_dump(mode="json"))  # a stored spec reads back the same
    assert again.nics[0].network == "storage-backend" and again.nics[0].source == "cx-stora-b09cb0"


@pytest.mark.parametrize("flavor", ["kvm", "xen"])
def test_flavors_render_the_networks_bridge(flavor: str) -> None:
    spec = parse_spec(_spec({"network": "data"}))
    xml = etree.fromstring(render(spec, get_flavor(flavor)).encode())
    assert xml.xpath("//interface[@type='bridge']/source/@bridge") == ["cn-data"]


@pytest.mark.parametrize(("nic", "field"), [
    ({"network": "data", "source": "br0"}, "nics.0.network"),
    ({"network": "data", "source_type": "network", "source": "default"}, "nics.0.network"),
    ({"network": "bad.name"}, "nics.0.network"),
    ({}, "nics.0.source"),
])
def test_refusals_name_the_field(nic: dict[str, object], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(nic))
    assert err.value.field == field
