"""Declared XML properties: each field of an element class says once where it lives in the XML.

A field is declared with ``xml("target/@dev")`` (an attribute), ``xml("kernel")`` (a child's text),
``flag("readonly")``, ``items("boot/@dev")``, ``child(Os)``... and both directions walk the same
declarations: ``from_element`` reads every declared place, ``to_element`` writes every declared place, so
parse and format cannot drift apart (the hand-written pairs did: graphics wrote its listen address twice and
never its port). The idea is virt-manager's ``XMLProperty`` and Nova's config objects; the code is ours.

Paths are a small subset of XPath, compiled once per class: ``@name``, ``tag/@name``, ``a/b/@name``,
``tag`` (the text of a child) and steps with predicates such as ``listen[@type='address']``, which a parse
requires and a format writes. Converters turn text into typed values and back (``INT``, ``YESNO``...).
Formatting is on every VM create, so the walk is flat: no XPath evaluation, one ``getattr`` per field,
children created once per path.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from lxml import etree

_XML = "corral.xml"  # the key of a field's declaration in its dataclass metadata


class XmlError(ValueError):
    """XML that is not a libvirt domain Corral can read; names the element at fault."""

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        super().__init__(f"{where}: {message}")


# --- converters --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """Text <-> value. ``parse`` gets the text, its node (for a unit beside it) and the path for errors;
    either direction may answer None: the value is then absent (not parsed, or not written)."""

    name: str
    parse: Callable[[str, etree._Element, str], Any]
    format: Callable[[Any], str | None]


def _strict_int(text: str, node: etree._Element, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise XmlError(where, f"not an integer: {text!r}") from None


def _lax_int(text: str, node: etree._Element, where: str) -> int | None:
    """libvirt writes these; anything else in a live XML is ignored, as before (no error on a read)."""
    return int(text) if text.isdigit() else None


def _positive(text: str, node: etree._Element, where: str) -> int | None:
    value = int(text) if text.lstrip("-").isdigit() else 0
    return value if value > 0 else None


def _non_negative(text: str, node: etree._Element, where: str) -> int | None:
    value = int(text) if text.lstrip("-").isdigit() else -1
    return value if value >= 0 else None


def _unsigned(value: int) -> str | None:
    return str(value) if value >= 0 else None  # what the parse would not read back is not written


def _yesno(text: str, node: etree._Element, where: str) -> bool | None:
    return {"yes": True, "no": False}.get(text)


STR = Conv("str", lambda text, node, where: text, str)
INT = Conv("int", _strict_int, str)
LAX_INT = Conv("uint", _lax_int, _unsigned)
NONZERO_INT = Conv("uint", _lax_int, lambda v: str(v) if v > 0 else None)  # 0 means "the default": not written
PORT = Conv("port", _positive, lambda v: str(v) if v > 0 else None)  # -1 is libvirt's legacy "allocate one"
NONNEG_ID = Conv("id", _non_negative, _unsigned)  # a running domain's id (0: Domain-0); -1 is absent
YESNO = Conv("yes/no", _yesno, lambda v: "yes" if v else "no")
MAC = Conv("mac", lambda text, node, where: text.lower() or None, lambda v: v.lower() or None)

_MEMORY_UNITS = {
    "b": 1 / 1024, "bytes": 1 / 1024,
    "k": 1, "kib": 1, "kb": 1000 / 1024,
    "m": 1024, "mib": 1024, "mb": 1000**2 / 1024,
    "g": 1024**2, "gib": 1024**2, "gb": 1000**3 / 1024,
    "t": 1024**3, "tib": 1024**3, "tb": 1000**4 / 1024,
}


def kib(text: str, node: etree._Element, where: str) -> int:
    """A memory size in KiB from its text and the ``unit`` attribute beside it (KiB when absent)."""
    unit = (node.get("unit") or "KiB").lower()
    if unit not in _MEMORY_UNITS:
        raise XmlError(where, f"unknown memory unit {node.get('unit')!r}")
    return int(_strict_int(text, node, where) * _MEMORY_UNITS[unit])


KIB = Conv("KiB", kib, str)  # written with also={"unit": "KiB"}


# --- paths -------------------------------------------------------------------------------------------------

_STEP = re.compile(r"^([A-Za-z_][\w.-]*)((?:\[@[\w.-]+='[^']*'\])*)$")
_PRED = re.compile(r"\[@([\w.-]+)='([^']*)'\]")


@dataclass(frozen=True)
class Path:
    """A compiled path: element steps (tag, fixed attributes), then an attribute name or None (the text)."""

    text: str
    steps: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    attr: str | None
    find: str | None  # what lxml's ``find`` takes for the steps, None for the element itself
    # for the writer: each step's path from the element (its key among the children made) and its attributes
    made: tuple[tuple[str, str, dict[str, str] | None], ...] = dataclasses.field(init=False, compare=False)
    plain: bool = dataclasses.field(init=False, compare=False)  # steps without predicates

    def __post_init__(self) -> None:
        raw = (self.find or "").split("/")  # a prefix's text is its key: strings hash once, tuples every time
        made = tuple(("/".join(raw[: i + 1]), tag, dict(fixed) or None) for i, (tag, fixed) in enumerate(self.steps))
        object.__setattr__(self, "made", made)
        object.__setattr__(self, "plain", not any(fixed for _, fixed in self.steps))

    @classmethod
    def compile(cls, text: str) -> Path:
        parts = [p for p in text.split("/") if p not in ("", ".")]
        attr = parts.pop()[1:] if parts and parts[-1].startswith("@") else None
        steps = []
        for part in parts:
            m = _STEP.match(part)
            if m is None:
                raise ValueError(f"unsupported XML path step {part!r} in {text!r}")
            steps.append((m.group(1), tuple(_PRED.findall(m.group(2)))))
        return cls(text, tuple(steps), attr, "/".join(parts) or None)

    @property
    def first(self) -> str | None:
        """The child of the element this path enters (for reporting what a class does not model)."""
        return self.steps[0][0] if self.steps else None

    def node(self, elem: etree._Element) -> etree._Element | None:
        if self.find is None:
            return elem
        if self.plain:  # tags only: lxml's iterchildren is three times faster than find's path parsing
            node = elem
            for tag, _ in self.steps:
                found = next(node.iterchildren(tag), None)
                if found is None:
                    return None
                node = found
            return node
        return elem.find(self.find)

    def read(self, elem: etree._Element, strip: bool = True) -> tuple[str | None, etree._Element | None]:
        node = self.node(elem)
        if node is None:
            return None, None
        if self.attr is not None:
            return node.get(self.attr), node
        text = node.text or ""
        return (text.strip() if strip else text) or None, node


class _Writer:
    """Creates each child element once, in the order the declarations first touch them."""

    __slots__ = ("elem", "made")

    def __init__(self, elem: etree._Element) -> None:
        self.elem = elem
        self.made: dict[str | None, etree._Element] = {}

    def node(self, path: Path) -> etree._Element:
        node = self.made.get(path.find)
        if node is not None:
            return node
        node = self.elem
        for key, tag, fixed in path.made:
            child = self.made.get(key)
            if child is None:
                child = self.made[key] = etree.SubElement(node, tag, fixed)
            node = child
        return node


# --- declarations ------------------------------------------------------------------------------------------


class Prop:
    """Where one field lives. ``name`` is the field's, filled in when the class is declared."""

    name: str = ""

    def paths(self) -> Iterable[Path]:
        return ()

    def parse(self, elem: etree._Element, where: str, values: dict[str, Any]) -> None:
        raise NotImplementedError

    def write(self, obj: Any, out: _Writer) -> None:
        raise NotImplementedError


class Value(Prop):
    """One attribute or one child's text, typed by ``conv``.

    ``path`` may be a mapping chosen by another (earlier) field's value: ``by=("type", {"file": ...})``.
    ``fallback`` paths are read when the path is absent (libvirt's older spellings); only ``path`` is written.
    ``also`` are fixed attributes written beside the value (``unit='KiB'``); ``fill(obj)`` is written when the
    value is None (a default libvirt needs said); ``skip(obj)`` leaves out a value that says nothing.
    """

    def __init__(self, path: str | None, conv: Conv = STR, *, by: tuple[str, Mapping[str, str]] | None = None,
                 fallback: tuple[str, ...] = (), absent: Any = None, required: bool = False,
                 also: Mapping[str, str] | None = None, fill: Callable[[Any], str | None] | None = None,
                 skip: Callable[[Any], bool] | None = None, strip: bool = True) -> None:
        self.path = Path.compile(path) if path is not None else None
        self.by_field: str | None = by[0] if by is not None else None
        by_paths = by[1] if by is not None else {}
        self.by_paths = {k: Path.compile(v) for k, v in by_paths.items()}
        self.fallback = tuple(Path.compile(p) for p in fallback)
        self.conv, self.absent, self.required = conv, absent, required
        self.format, self.parse_text = conv.format, conv.parse
        self.also = dict(also or {})
        self.fill, self.skip, self.strip = fill, skip, strip

    def paths(self) -> Iterable[Path]:
        yield from (p for p in (self.path, *self.by_paths.values(), *self.fallback) if p is not None)

    def path_for(self, chooser: Any) -> Path | None:
        if self.by_field is None:
            return self.path
        return self.by_paths.get(chooser, self.path)

    def parse(self, elem: etree._Element, where: str, values: dict[str, Any]) -> None:
        path = self.path if self.by_field is None else self.path_for(values.get(self.by_field))
        value = None
        for p in self.fallback if path is None else (path, *self.fallback) if self.fallback else (path,):
            text, node = p.read(elem, self.strip)
            if text is not None and node is not None:
                value = self.parse_text(text, node, f"{where}/{p.text}" if where else p.text)
                if value is not None:
                    break
        if value is None:
            if self.required:
                raise XmlError(_join(where, (path or self.fallback[0]).text), "missing")
            value = self.absent
        values[self.name] = value

    def write(self, obj: Any, out: _Writer) -> None:
        value = getattr(obj, self.name)
        if value is None or (self.skip is not None and self.skip(obj)):
            if self.fill is None:
                return
            text = self.fill(obj)
        else:
            text = self.format(value)
        if text is None:
            return
        path = self.path if self.by_field is None else self.path_for(getattr(obj, self.by_field))
        if path is None:
            return
        node = out.node(path) if path.steps else out.elem
        if path.attr is not None:
            node.set(path.attr, text)
        elif text:
            node.text = text
        else:
            return  # an empty text would read back as absent: not written
        if self.also:
            for key, fixed in self.also.items():
                node.set(key, fixed)


class Flag(Prop):
    """True when an (empty) child element is present: ``<readonly/>``."""

    def __init__(self, path: str) -> None:
        self.path = Path.compile(path)

    def paths(self) -> Iterable[Path]:
        return (self.path,)

    def parse(self, elem: etree._Element, where: str, values: dict[str, Any]) -> None:
        values[self.name] = self.path.node(elem) is not None

    def write(self, obj: Any, out: _Writer) -> None:
        if getattr(obj, self.name):
            out.node(self.path)


class Items(Prop):
    """A repeated child: its values (``boot/@dev``) or, with ``of``, element objects (``feature``)."""

    def __init__(self, path: str, of: type[XmlElement] | None = None) -> None:
        self.path, self.of = Path.compile(path), of
        self.tag, self.fixed = self.path.steps[-1]
        up = self.path.steps[:-1]
        self.parent = Path(path, up, None, "/".join(tag for tag, _ in up) or None)

    def paths(self) -> Iterable[Path]:
        return (self.path,)

    def parse(self, elem: etree._Element, where: str, values: dict[str, Any]) -> None:
        parent = self.parent.node(elem)
        found = [] if parent is None else parent.findall(self.tag)
        if self.of is not None:
            values[self.name] = [self.of.from_element(e, where) for e in found]
        else:
            attr = self.path.attr
            values[self.name] = [e.get(attr, "") if attr else (e.text or "").strip() for e in found]

    def write(self, obj: Any, out: _Writer) -> None:
        items = getattr(obj, self.name)
        if not items:
            return
        parent = out.node(self.parent)
        for item in items:
            if self.of is not None:
                parent.append(item.to_element())
                continue
            node = etree.SubElement(parent, self.tag, dict(self.fixed) if self.fixed else None)
            if self.path.attr:
                node.set(self.path.attr, str(item))
            else:
                node.text = str(item)


class Tags(Prop):
    """The tags of a container's children: ``<features><acpi/><apic/></features>`` is ["acpi", "apic"]."""

    def __init__(self, path: str) -> None:
        self.path = Path.compile(path)

    def paths(self) -> Iterable[Path]:
        return (self.path,)

    def parse(self, elem: etree._Element, where: str, values: dict[str, Any]) -> None:
        node = self.path.node(elem)
        values[self.name] = [] if node is None else [str(c.tag) for c in node if isinstance(c.tag, str)]

    def write(self, obj: Any, out: _Writer) -> None:
        tags = getattr(obj, self.name)
        if tags:
            node = out.node(self.path)
            for tag in tags:
                etree.SubElement(node, tag)


class Child(Prop):
    """One nested element object (``<os>``, ``<cpu>``), or every child of a container parsed by ``parse``."""

    def __init__(self, of: type[XmlElement] | None = None, *, path: str | None = None, required: bool = False,
                 each: Callable[[etree._Element], Any] | None = None) -> None:
        self.of, self.each, self.required = of, each, required
        tag = path or (of.__xml__.tag if of is not None and of.__xml__.tag else "")
        self.path = Path.compile(tag)

    def paths(self) -> Iterable[Path]:
        return (self.path,)

    def parse(self, elem: etree._Element, where: str, values: dict[str, Any]) -> None:
        node = self.path.node(elem)
        if self.each is not None:
            values[self.name] = [] if node is None else [self.each(c) for c in node if isinstance(c.tag, str)]
        elif node is None:
            if self.required:
                raise XmlError(_join(where, self.path.text), f"missing <{self.path.text}>")
            values[self.name] = None
        else:
            assert self.of is not None
            values[self.name] = self.of.from_element(node, where)

    def write(self, obj: Any, out: _Writer) -> None:
        value = getattr(obj, self.name)
        if self.each is not None:
            if value:
                node = etree.SubElement(out.elem, self.path.text)
                for item in value:
                    node.append(item.to_element())
        elif value is not None:
            out.elem.append(value.to_element())


class Raw(Prop):
    """An element kept as lxml holds it (``<metadata>``): parsed as the element, written as a copy."""

    def __init__(self, path: str) -> None:
        self.path = Path.compile(path)

    def paths(self) -> Iterable[Path]:
        return (self.path,)

    def parse(self, elem: etree._Element, where: str, values: dict[str, Any]) -> None:
        values[self.name] = self.path.node(elem)

    def write(self, obj: Any, out: _Writer) -> None:
        value = getattr(obj, self.name)
        if value is None:
            return
        if value.tag == self.path.steps[-1][0]:
            out.elem.append(_copy(value))
        else:  # the content alone (what ``resolve`` builds): wrapped in its element
            out.node(self.path).append(_copy(value))


def _copy(elem: etree._Element) -> etree._Element:
    """A copy: appending the element itself would move it out of the object (a second format loses it)."""
    dup = copy.deepcopy(elem)
    dup.tail = None
    return dup


def _join(where: str, path: str) -> str:
    return f"{where}/{path}" if where else path


# --- field helpers (dataclass fields that carry their declaration) ----------------------------------------

def _field(prop: Prop, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    return dataclasses.field(default=default, default_factory=factory, metadata={_XML: prop})


NODEFAULT: Any = dataclasses.MISSING  # ``xml(..., default=NODEFAULT)``: the constructor must be given it


def xml(path: str | None, conv: Conv = STR, default: Any = None, **options: Any) -> Any:
    """An attribute (``@a``, ``b/@a``) or a child's text (``b``). ``absent`` is what a parse gives when the
    XML has none (the default unless said), ``required=True`` makes that an ``XmlError`` instead."""
    options.setdefault("absent", None if default is NODEFAULT else default)
    return _field(Value(path, conv, **options), default)


def flag(path: str) -> Any:
    return _field(Flag(path), False)


def items(path: str, of: type[XmlElement] | None = None) -> Any:
    return _field(Items(path, of), factory=list)


def tags(path: str) -> Any:
    return _field(Tags(path), factory=list)


def child(of: type[XmlElement], *, default_factory: Callable[[], Any] | None = None, required: bool = False) -> Any:
    if default_factory is not None:
        return _field(Child(of, required=required), factory=default_factory)
    return _field(Child(of, required=required), None)


def children(path: str, each: Callable[[etree._Element], Any]) -> Any:
    return _field(Child(path=path, each=each), factory=list)


def raw(path: str) -> Any:
    return _field(Raw(path), None)


# --- element classes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementSpec:
    """What a class's declarations add up to: its tag (or the field holding it) and its props in XML order."""

    tag: str | None
    tag_field: str | None
    props: tuple[Prop, ...]
    known_children: frozenset[str]
    known_attrs: frozenset[str]


C = TypeVar("C", bound="XmlElement")


class XmlElement:
    """Base of the element classes: ``to_element`` and ``from_element`` walk ``__xml__``."""

    __xml__: ClassVar[ElementSpec]

    def to_element(self) -> etree._Element:
        spec = self.__xml__
        tag = spec.tag if spec.tag_field is None else getattr(self, spec.tag_field)
        out = _Writer(etree.Element(str(tag)))
        for prop in spec.props:
            prop.write(self, out)
        return out.elem

    @classmethod
    def from_element(cls: type[C], elem: etree._Element, where: str = "") -> C:
        spec = cls.__xml__
        values: dict[str, Any] = {}
        if spec.tag_field is not None:
            values[spec.tag_field] = str(elem.tag)
        for prop in spec.props:
            prop.parse(elem, where, values)
        obj = cls(**values)
        obj._parsed(elem)
        return obj

    def _parsed(self, elem: etree._Element) -> None:
        """What the declarations cannot say: a class's own reading of its element, after them."""

    @classmethod
    def unmodelled(cls, elem: etree._Element) -> list[str]:
        """The children (``tag``) and attributes (``@name``) of ``elem`` that no declaration reads."""
        spec = cls.__xml__
        out = [str(c.tag) for c in elem if isinstance(c.tag, str) and c.tag not in spec.known_children]
        out += [f"@{k!s}" for k in elem.attrib if k not in spec.known_attrs]
        return out


def element(tag: str | None = None, *, tag_field: str | None = None, ignore: Iterable[str] = ()
            ) -> Callable[[type[C]], type[C]]:
    """Collect a dataclass's declared fields: its own first, then inherited ones (alias goes last).

    ``ignore`` names children/attributes (``@name``) the class reads nowhere and does not report as unknown
    (``address``: libvirt's, never needed to identify a device)."""

    def wrap(cls: type[C]) -> type[C]:
        own = inspect.get_annotations(cls)
        fields = [f for f in dataclasses.fields(cls) if _XML in f.metadata]  # type: ignore[arg-type]
        ordered = [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]
        props = []
        for f in ordered:
            prop = f.metadata[_XML]
            prop.name = f.name
            props.append(prop)
        paths = [p for prop in props for p in prop.paths()]
        ignored = set(ignore)
        cls.__xml__ = ElementSpec(
            tag, tag_field, tuple(props),
            frozenset({p.first for p in paths if p.first} | {i for i in ignored if not i.startswith("@")}),
            frozenset({p.attr for p in paths if not p.steps and p.attr} | {i[1:] for i in ignored
                                                                           if i.startswith("@")}))
        return cls

    return wrap

