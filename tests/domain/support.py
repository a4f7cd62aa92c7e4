"""Shared helpers of the domain tests: libvirt's own schema check, the test driver, XML probes."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from lxml import etree

from corral.domain.config import ALIAS_PREFIX
from corral.domain.flavors.base import Decision, Outcome
from corral.domain.resolve import Resolution
from corral.domain.spec import VmSpec

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_XEN_XML = (REPO / ".." / "shared" / "libvirt-xen-xml").resolve()
CORRAL = Path(sys.executable).parent / "corral"
VIRT_XML_VALIDATE = shutil.which("virt-xml-validate")

needs_validator = pytest.mark.skipif(VIRT_XML_VALIDATE is None, reason="virt-xml-validate is not installed")


def schema_errors(xml: str) -> str | None:
    """None when libvirt's schema accepts ``xml`` as a domain, else virt-xml-validate's complaint."""
    assert VIRT_XML_VALIDATE is not None
    with tempfile.NamedTemporaryFile("w", suffix=".xml", encoding="utf-8") as f:
        f.write(xml)
        f.flush()
        proc = subprocess.run([VIRT_XML_VALIDATE, f.name, "domain"], capture_output=True, text=True,
                              check=False, timeout=60)
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


def assert_schema_valid(xml: str) -> None:
    errors = schema_errors(xml)
    assert errors is None, f"libvirt's schema rejects the XML:\n{errors}\n{xml}"


@functools.cache
def libvirt_test_driver() -> libvirt.virConnect:
    """libvirt's test driver, in this process (shared by every open of test:///default)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors surface as exceptions, not stderr
    return libvirt.open("test:///default")


def define_and_read_back(xml: str) -> str:
    """Define ``xml`` in the test driver, return the XML libvirt holds for it, undefine it again."""
    dom = libvirt_test_driver().defineXML(xml)
    try:
        return str(dom.XMLDesc(0))
    finally:
        dom.undefine()


def parse(xml: str | bytes) -> etree._Element:
    return etree.fromstring(xml.encode() if isinstance(xml, str) else xml)


def strip(xml: str, *tags: str) -> str:
    """The XML without any element named in ``tags`` (libxl's live XML has no alias/address)."""
    root = parse(xml)
    for tag in tags:
        for elem in root.iter(tag):
            parent = elem.getparent()
            if parent is not None:
                parent.remove(elem)
    return etree.tostring(root, encoding="unicode")


def device_strings(root: etree._Element) -> Iterator[str]:
    """Every tag, attribute value and text of the domain outside Corral's <metadata>."""
    for elem in root.iter():
        if not isinstance(elem.tag, str):
            continue
        if any(a.tag == "metadata" for a in elem.iterancestors()) or elem.tag == "metadata":
            continue
        yield elem.tag
        yield from elem.attrib.values()
        if elem.text and elem.text.strip():
            yield elem.text.strip()


def decision(decisions: list[Decision], path: str, feature: str | None = None) -> Decision:
    found = [d for d in decisions if d.path == path and feature in (None, d.feature)]
    assert found, f"no decision for {path}: {[d.as_dict() for d in decisions]}"
    assert len(found) == 1, f"several decisions for {path}: {found}"
    return found[0]


def refused_paths(decisions: list[Decision]) -> set[str]:
    return {d.path for d in decisions if d.outcome is Outcome.REFUSED}


def rendered_ids(res: Resolution) -> set[str]:
    """Spec device ids the resolution turned into device elements (from their identity or user alias)."""
    out = set()
    for dev in res.domain.devices if res.domain is not None else []:
        alias = dev.alias or ""
        if dev.device_id:
            out.add(dev.device_id)
        elif alias.startswith(ALIAS_PREFIX):
            out.add(alias[len(ALIAS_PREFIX):len(ALIAS_PREFIX) + 36])
    return out


def device_paths(spec: VmSpec) -> dict[str, str]:
    """Spec device id -> its field path (``disks.2``, ``graphics``)."""
    out = {}
    for group in ("disks", "nics", "consoles"):
        out.update({d.id: f"{group}.{i}" for i, d in enumerate(getattr(spec, group))})
    for single in ("graphics", "guest_agent", "balloon"):
        dev = getattr(spec, single)
        if dev is not None:
            out[dev.id] = single
    return out


def assert_unrendered_are_explained(spec: VmSpec, res: Resolution) -> set[str]:
    """Every spec device not rendered has a translated decision saying so; returns the rendered ids."""
    ids = rendered_ids(res)
    for dev_id, path in device_paths(spec).items():
        if dev_id in ids:
            continue
        reasons = [d for d in res.decisions if (d.path == path or d.path.startswith(f"{path}."))
                   and d.outcome is Outcome.TRANSLATED]
        assert reasons, f"{path} is not rendered and no decision says why: {res.decisions}"
    return ids
