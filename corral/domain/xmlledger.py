"""Reading foreign libvirt XML so that nothing read can go unaccounted for: every element and attribute the
importer reads goes through a recording node (``Node``), and the ledger (``Ledger``) knows which paths were
used, derived or warned about; everything else becomes a warning with its XPath. Split from
``corral.domain.importer``, which holds what the importer does with what it reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree


@dataclass
class ImportWarning:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def xml_path(elem: etree._Element) -> str:
    """The path the importer names an element by (``""`` for ``<domain>`` itself)."""
    parts: list[str] = []
    node = elem
    parent = node.getparent()
    while parent is not None:
        name = _name(node)
        same = [c for c in parent if c.tag == node.tag]
        grand = parent.getparent()
        if len(same) > 1 or (parent.tag == "devices" and grand is not None and grand.getparent() is None):
            name += f"[{same.index(node) + 1}]"
        parts.append(name)
        node, parent = parent, parent.getparent()
    return "/".join(reversed(parts))


def _name(elem: etree._Element) -> str:
    qname = etree.QName(elem)
    return f"{elem.prefix}:{qname.localname}" if elem.prefix else qname.localname


def join_path(path: str, part: str) -> str:
    return f"{path}/{part}" if path else part


def elements(elem: etree._Element) -> Iterator[etree._Element]:
    return (c for c in elem if isinstance(c.tag, str))


class Ledger:
    """What the import has read, recognised or warned about, by path."""

    def __init__(self) -> None:
        self.used: set[str] = set()
        self.derived: set[str] = set()
        self.warnings: list[ImportWarning] = []

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ImportWarning(path, message))

    def covered(self, path: str) -> bool:
        """True when the path, or an element it lies in, is derived or warned about."""
        cut = {w.path for w in self.warnings} | self.derived
        while True:
            if path in cut:
                return True
            if not path:
                return False
            path = path.rpartition("/")[0]


class Node:
    """One element of the imported XML; reading it through these methods records what was read."""

    def __init__(self, ledger: Ledger, elem: etree._Element, path: str) -> None:
        self.ledger, self.elem, self.path = ledger, elem, path
        ledger.used.add(path)

    @property
    def tag(self) -> str:
        return str(self.elem.tag)

    def attr(self, name: str, default: str | None = None) -> str | None:
        value = self.elem.get(name)
        if value is None:
            return default
        self.ledger.used.add(join_path(self.path, f"@{name}"))
        return value

    def text(self) -> str | None:
        return (self.elem.text or "").strip() or None

    def child(self, tag: str) -> Node | None:
        elem = self.elem.find(tag)
        return None if elem is None else Node(self.ledger, elem, xml_path(elem))

    def children(self, tag: str) -> list[Node]:
        return [Node(self.ledger, e, xml_path(e)) for e in self.elem.findall(tag)]

    def has(self, tag: str) -> bool:
        """Whether a child exists, without reading it."""
        return self.elem.find(tag) is not None

    def peek(self, name: str) -> str | None:
        """An attribute's value, without counting it as read (to decide how to read the rest)."""
        return self.elem.get(name)

    def derive(self, *parts: str) -> None:
        """Children (``tag``) or attributes (``@name``) the host re-creates by itself; ``derive()``: all of it."""
        if not parts:
            self.ledger.derived.add(self.path)
            return
        for part in parts:
            if part.startswith("@"):
                if self.elem.get(part[1:]) is not None:
                    self.ledger.derived.add(join_path(self.path, part))
            else:
                self.ledger.derived.update(xml_path(e) for e in self.elem.findall(part))

    def warn(self, message: str, part: str = "") -> None:
        self.ledger.warn(join_path(self.path, part) if part else self.path, message)
