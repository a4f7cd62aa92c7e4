"""The flavors' shape: every flavor answers every feature, policy answers are typed, and no code outside the
flavors compares a hypervisor's name (issue 15)."""

from __future__ import annotations

import ast
from enum import StrEnum
from pathlib import Path

import pytest

from corral.domain.flavors import all_flavors, flavor_for_domain_type
from corral.domain.flavors import features as feat
from corral.domain.flavors.base import Flavor, Rule
from corral.domain.flavors.features import POLICY_TYPES, Feature

ROOT = Path(__file__).resolve().parents[2]
FLAVORS = {f"{f.name}/{f.domain_type}": f for f in all_flavors()}


@pytest.mark.parametrize("flavor", FLAVORS.values(), ids=FLAVORS.keys())
def test_every_flavor_answers_every_feature_for_every_guest_type(flavor: Flavor) -> None:
    assert set(flavor.table) == set(Feature), "a table lacks (or adds) keys"
    for feature in Feature:
        cell = flavor.table[feature]
        if not isinstance(cell, Rule):
            assert set(cell) == set(flavor.guest_types), f"{feature}: a guest type without a rule"


@pytest.mark.parametrize("flavor", FLAVORS.values(), ids=FLAVORS.keys())
def test_policy_answers_have_their_declared_type(flavor: Flavor) -> None:
    for feature, kind in POLICY_TYPES.items():
        for gt in flavor.guest_types:
            value = flavor.rule(feature, gt).value
            assert value is None or isinstance(value, kind), f"{flavor.title} {feature} {gt}: {value!r}"


@pytest.mark.parametrize("family", ["GUEST_TYPE", "DISK_BUS", "CDROM_BUS", "RAW_SOURCE", "NIC_MODEL", "NIC_SOURCE",
                                    "GRAPHICS", "CONSOLE", "CPU_MODE", "ON_CRASH"])
def test_feature_families_cover_their_spec_enum(family: str) -> None:
    mapping = getattr(feat, family)
    enum_type = type(next(iter(mapping)))
    assert issubclass(enum_type, StrEnum)
    assert set(mapping) == set(enum_type), f"{family} misses members of {enum_type.__name__}"


def test_flavors_are_immutable_and_hashable_without_state() -> None:
    """The process-wide decision cache on a frozen Flavor is gone: a flavor holds data only."""
    for flavor in all_flavors():
        assert not any(isinstance(v, dict) and not v for v in vars(flavor).values()), "an empty mutable dict"
        hash(flavor)
        with pytest.raises(AttributeError):
            flavor.name = "other"  # type: ignore[misc]


def test_domain_types_map_to_their_flavor() -> None:
    assert flavor_for_domain_type("xen").name == "xen"
    assert flavor_for_domain_type("kvm").accel == "kvm"
    assert flavor_for_domain_type("qemu").accel == "tcg"


HYPERVISOR_NAMES = {"xen", "kvm", "qemu", "tcg"}


def _compared_names(tree: ast.AST) -> list[tuple[int, str]]:
    """Comparisons (==, !=, in, not in) of anything with a hypervisor's name as a string constant."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        for op in operands:
            values = [op] if isinstance(op, ast.Constant) else \
                list(op.elts) if isinstance(op, ast.Tuple | ast.List | ast.Set) else []
            for v in values:
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and v.value in HYPERVISOR_NAMES:
                    found.append((node.lineno, v.value))
    return found


HYPERVISOR_ATTRIBUTES = {"xen", "is_xen"}


def _hypervisor_attributes(tree: ast.AST) -> list[tuple[int, str]]:
    """Attributes that answer "is this Xen?" (``profile.xen``, ``host.is_xen(n)``), read or defined: a branch on
    them is a hypervisor-name branch in disguise."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in HYPERVISOR_ATTRIBUTES:
            found.append((node.lineno, f"reads .{node.attr}"))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in HYPERVISOR_ATTRIBUTES:
            found.append((node.lineno, f"defines {node.name}"))
    return found


def test_hypervisor_attribute_check_finds_the_old_simulator_branches() -> None:
    """The check below would have caught the simulator's ``HostProfile.xen`` property and its uses."""
    old = """
class HostProfile:
    @property
    def xen(self) -> bool:
        return self.flavor.name == 'xen'

def stats(self, vm):
    kvm = not self.profile.xen
    if self.sim.is_xen(3):
        return kvm
"""
    found = sorted(_hypervisor_attributes(ast.parse(old)))
    assert found == [(4, "defines xen"), (8, "reads .xen"), (9, "reads .is_xen")]


def test_no_hypervisor_attributes_outside_the_flavors() -> None:
    """No ``.xen`` / ``.is_xen`` outside corral/domain/flavors/: ask the flavor a typed question instead."""
    offenders = []
    for path in sorted((ROOT / "corral").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("corral/domain/flavors/"):
            continue
        for line, what in _hypervisor_attributes(ast.parse(path.read_text())):
            offenders.append(f"{rel}:{line} {what}")
    assert not offenders, "hypervisor attributes outside corral/domain/flavors/:\n" + "\n".join(offenders)


def test_no_hypervisor_name_branches_outside_the_flavors() -> None:
    """The flavors are the only code that knows a hypervisor: elsewhere a difference is a typed flavor answer.

    Allowed: validating a user's choice of flavor name (CLI options, API literals), which names every flavor
    alike and branches on none of them; those places are listed here with the reason."""
    allowed = {
        # libvirt XML vocabulary read from foreign domains (a console's target type 'xen'), mapped to the spec
        "corral/domain/importer.py",
    }
    offenders = []
    for path in sorted((ROOT / "corral").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("corral/domain/flavors/") or rel in allowed:
            continue
        for line, name in _compared_names(ast.parse(path.read_text())):
            offenders.append(f"{rel}:{line} compares with {name!r}")
    assert not offenders, "hypervisor branches outside corral/domain/flavors/:\n" + "\n".join(offenders)
