"""The element classes of ``corral.domain.config``: what is formatted is what is parsed, and back.

Issue 15: each field is declared once (``corral.domain.xmlprop``) for both directions. These tests hold every
element class to that: format -> parse -> format gives the same XML for any values the declarations can hold
(strategies derived from the declarations themselves, so a new field is covered without a new test), and
parsing libvirt's own XML (the 39 Xen files, the fixtures) then formatting keeps every attribute and text a
class declares. The graphics bug (``listen`` written twice, ``port`` never) has its own tests in
``test_config_graphics.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from corral.domain import config as cfg
from corral.domain import xmlprop

from .strategies import _XML_CHAR, macs
from .support import FIXTURES, SHARED_XEN_XML

CLASSES = [cfg.Disk, cfg.Interface, cfg.Graphics, cfg.CharDevice, cfg.Memballoon, cfg.Video, cfg.Controller,
           cfg.CpuFeatureConfig, cfg.Cpu, cfg.Os, cfg.Domain]
NOT_FORMATTED = {cfg.Device: "the base of the device classes", cfg.OtherDevice: "kept for reports, never rendered"}
REAL_XML = sorted(FIXTURES.glob("*.xml")) + (sorted(SHARED_XEN_XML.glob("*.xml")) if SHARED_XEN_XML.is_dir() else [])


def xml_of(obj: xmlprop.XmlElement) -> str:
    return etree.tostring(obj.to_element(), encoding="unicode")


def reparse(cls: type[xmlprop.XmlElement], obj: xmlprop.XmlElement) -> xmlprop.XmlElement:
    """What a parse of the formatted object gives (through text, as libvirt hands XML back)."""
    elem = etree.fromstring(xml_of(obj), etree.XMLParser(remove_blank_text=True))
    return cls.from_element(elem)


# --- format -> parse -> format, for every element class ---------------------------------------------------


def test_every_element_class_is_covered() -> None:
    found = {c for c in vars(cfg).values()
             if isinstance(c, type) and issubclass(c, xmlprop.XmlElement) and c is not xmlprop.XmlElement}
    assert found == set(CLASSES) | set(NOT_FORMATTED)


_TEXT = st.text(_XML_CHAR, min_size=1, max_size=20)
_TRIMMED = _TEXT.map(str.strip).filter(bool)  # a stripped text field holds no edge whitespace
_NAMES = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
_INTS = st.integers(-(2**40), 2**40)

_CONVS: dict[str, st.SearchStrategy[Any]] = {
    "int": _INTS, "uint": st.integers(0, 2**40), "port": st.integers(-1, 65535), "id": st.integers(-1, 2**31),
    "yes/no": st.booleans(), "mac": macs(), "KiB": st.integers(0, 2**44),
}


def _value(prop: xmlprop.Value, optional: bool) -> st.SearchStrategy[Any]:
    if prop.conv.name != "str":
        base = _CONVS[prop.conv.name]
    elif any(p.attr is None for p in prop.paths()):
        base = _TRIMMED if prop.strip else _TEXT.filter(str.strip)
    else:
        base = st.text(_XML_CHAR, max_size=20)
    return st.none() | base if optional else base


def _metadata() -> st.SearchStrategy[etree._Element]:
    def build(attr: str, text: str) -> etree._Element:
        root = etree.Element("metadata")
        node = etree.SubElement(root, f"{{{cfg.CORRAL_NS}}}vm", nsmap={"corral": cfg.CORRAL_NS})
        node.set("a", attr)
        node.text = text
        return root
    return st.builds(build, st.text(_XML_CHAR, max_size=10), _TRIMMED)


@st.composite
def objects(draw: st.DrawFn, cls: type[Any]) -> Any:
    """Any instance the declarations of ``cls`` can hold, field by field."""
    spec = cls.__xml__
    optional = {f.name for f in dataclasses.fields(cls) if "None" in str(f.type)}
    values: dict[str, Any] = {}
    if spec.tag_field is not None:
        values[spec.tag_field] = draw(st.sampled_from(cfg.CHAR_ELEMENTS))
    for prop in spec.props:
        if isinstance(prop, xmlprop.Value):
            strat = _value(prop, prop.name in optional)
            if prop.by_paths:  # the field choosing a path: its keys as often as anything else
                strat = st.sampled_from(sorted(prop.by_paths)) | strat
            choosers = {p.by_field for p in spec.props if isinstance(p, xmlprop.Value) and p.by_field}
            if prop.name in choosers:
                keys = {k for p in spec.props if isinstance(p, xmlprop.Value) and p.by_field == prop.name
                        for k in p.by_paths}
                strat = st.sampled_from(sorted(keys)) | _TEXT
            value = draw(strat)
            if value is None and prop.absent is not None:
                value = prop.absent
            values[prop.name] = value
        elif isinstance(prop, xmlprop.Flag):
            values[prop.name] = draw(st.booleans())
        elif isinstance(prop, xmlprop.Items):
            inner = objects(prop.of) if prop.of is not None else _NAMES
            values[prop.name] = draw(st.lists(inner, max_size=3))
        elif isinstance(prop, xmlprop.Tags):
            values[prop.name] = draw(st.lists(_NAMES, max_size=3))
        elif isinstance(prop, xmlprop.Raw):
            values[prop.name] = draw(st.none() | _metadata())
        elif isinstance(prop, xmlprop.Child) and prop.each is not None:
            values[prop.name] = draw(st.lists(st.sampled_from(CLASSES[:7]).flatmap(objects), max_size=4))
        elif isinstance(prop, xmlprop.Child):
            assert prop.of is not None
            inner = objects(prop.of)
            values[prop.name] = draw(inner if prop.required else st.none() | inner)
        else:
            raise AssertionError(f"no strategy for {type(prop).__name__} {cls.__name__}.{prop.name}")
    return cls(**values)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_format_parse_format_is_identical(cls: type[Any], data: st.DataObject) -> None:
    obj = data.draw(objects(cls))
    first = xml_of(obj)
    again = xml_of(reparse(cls, obj))
    assert again == first


@given(dom=objects(cfg.Domain))
def test_domain_to_xml_and_from_xml_round_trip(dom: cfg.Domain) -> None:
    """The same through the public text API, both indentings."""
    for pretty in (True, False):
        text = dom.to_xml(pretty)
        assert cfg.Domain.from_xml(text).to_xml(pretty) == text


def test_formatting_twice_gives_the_same_and_keeps_the_object() -> None:
    """The metadata is copied into the XML, not moved out of the object."""
    meta = etree.Element(f"{{{cfg.CORRAL_NS}}}vm", nsmap={"corral": cfg.CORRAL_NS})
    dom = cfg.Domain(type="kvm", name="a", uuid="u", memory_kib=1024, metadata=meta)
    assert dom.to_xml() == dom.to_xml()
    parsed = cfg.Domain.from_xml(dom.to_xml())
    assert parsed.to_xml() == dom.to_xml()  # a <metadata> parsed back is written as it is, not wrapped twice


# --- real libvirt XML: every declared attribute is kept ----------------------------------------------------

# Where a declaration writes libvirt's canonical spelling of what it read (same value, other text):
NORMALIZED = {
    (cfg.Domain, "memory_kib"), (cfg.Domain, "current_memory_kib"),  # any unit -> KiB
    (cfg.Domain, "current_vcpus"),  # current == vcpus says nothing: left out
    (cfg.Interface, "mac"),  # lower case
    (cfg.Graphics, "port"),  # -1 (legacy "any") -> no port, autoport
    (cfg.Graphics, "listen"),  # the legacy attribute -> <listen type='address'>
}


def _read(prop: xmlprop.Value, elem: etree._Element, chooser: Any) -> tuple[str | None, etree._Element | None]:
    path = prop.path_for(chooser)
    for p in (path, *prop.fallback) if path is not None else prop.fallback:
        text, node = p.read(elem, prop.strip)
        if text is not None:
            return text, node
    return None, None


def _check_kept(cls: type[Any], orig: etree._Element, out: etree._Element, where: str) -> int:
    obj = cls.from_element(orig)
    checked = 0
    for prop in cls.__xml__.props:
        if isinstance(prop, xmlprop.Child) and prop.of is not None:
            sub_orig, sub_out = prop.path.node(orig), prop.path.node(out)
            if sub_orig is not None:
                assert sub_out is not None, f"{where}: <{prop.path.text}> lost"
                checked += _check_kept(prop.of, sub_orig, sub_out, f"{where}/{prop.path.text}")
            continue
        if isinstance(prop, (xmlprop.Flag, xmlprop.Tags, xmlprop.Items)):
            assert getattr(cls.from_element(out), prop.name) == getattr(obj, prop.name), f"{where}: {prop.name}"
            continue
        if not isinstance(prop, xmlprop.Value):
            continue
        chooser = getattr(obj, prop.by_field) if prop.by_field else None
        before, node_before = _read(prop, orig, chooser)
        if before is None:
            continue
        checked += 1
        after, node_after = _read(prop, out, chooser)
        if after == before:
            continue
        assert (cls, prop.name) in NORMALIZED, f"{where}: {prop.name} was {before!r}, formatted {after!r}"
        value_before = prop.conv.parse(before, node_before, where)
        value_after = prop.conv.parse(after, node_after, where) if after is not None and node_after is not None \
            else None
        assert value_after == value_before or (cls, prop.name) == (cfg.Domain, "current_vcpus"), \
            f"{where}: {prop.name} {value_before!r} became {value_after!r}"
    return checked


@pytest.mark.parametrize("path", REAL_XML, ids=lambda p: p.name.split("__")[-1])
def test_real_libvirt_xml_keeps_every_declared_attribute(path: Path) -> None:
    root = cfg.parse_xml(path.read_bytes())
    dom = cfg.Domain.from_element(root)
    dom.devices = [d for d in dom.devices if not isinstance(d, cfg.OtherDevice)]
    out = dom.to_element()
    checked = _check_kept(cfg.Domain, root, out, path.name)
    devices = root.find("devices")
    modelled = [e for e in (devices if devices is not None else []) if isinstance(e.tag, str)
                and (e.tag in cfg.DEVICE_CLASSES or e.tag in cfg.CHAR_ELEMENTS)]
    written = list(out.find("devices") if out.find("devices") is not None else [])
    assert [e.tag for e in written] == [e.tag for e in modelled]
    for i, (orig, formatted) in enumerate(zip(modelled, written, strict=True)):
        cls = cfg.DEVICE_CLASSES.get(str(orig.tag), cfg.CharDevice)
        checked += _check_kept(cls, orig, formatted, f"{path.name}: devices/{orig.tag}[{i}]")
    assert checked >= 5  # name, uuid, memory, os/type, a device attribute at least
    # and the formatted domain reads back as itself
    assert cfg.Domain.from_element(out).to_xml() == dom.to_xml()


def test_real_xml_files_are_there() -> None:
    assert len(REAL_XML) >= 2, "no real libvirt XML to check against"
