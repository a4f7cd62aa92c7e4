"""The bridge naming rule shared by engine and agent (corral.domain.netnames): pure, so every case is listed."""

from __future__ import annotations

import re

import pytest

from corral.domain.netnames import bridge_for, is_network_bridge, valid_network_name


def test_short_names_keep_their_name() -> None:
    assert bridge_for("data") == "cn-data"
    assert bridge_for("ovirtmgmt", 100) == "cn-ovirtmgmt"  # the VLAN never renames the bridge
    assert bridge_for("abcdefghijkl") == "cn-abcdefghijkl"  # 12 characters: the longest kept whole


def test_long_names_are_cut_and_hashed_within_15_characters() -> None:
    assert bridge_for("storage-backend") == "cx-stora-b09cb0"
    names = [f"network-{i:04d}-long" for i in range(500)]
    bridges = {bridge_for(n) for n in names}
    assert len(bridges) == len(names)  # distinct names sharing a prefix get distinct bridges
    assert all(len(b) == 15 and re.match(r"^cx-netwo-[0-9a-f]{6}$", b) for b in bridges)
    assert bridge_for("abcdefghijklm") != bridge_for("abcdefghijklmn")


def test_short_and_long_forms_cannot_meet() -> None:
    # a short name that looks like a long name's bridge suffix still gets the cn- prefix
    assert bridge_for("stora-b09cb0") == "cn-stora-b09cb0" != bridge_for("storage-backend")
    assert is_network_bridge("cn-data") and is_network_bridge("cx-stora-b09cb0") and not is_network_bridge("br0")


@pytest.mark.parametrize("name", ["", "-x", "a.b", "a b", "a/b", "é", "x" * 51, "a:b"])
def test_bad_names_are_refused(name: str) -> None:
    assert not valid_network_name(name)
    with pytest.raises(ValueError, match="not a network name"):
        bridge_for(name)


def test_bad_vlan_is_refused() -> None:
    with pytest.raises(ValueError, match="VLAN"):
        bridge_for("data", 4095)
