"""The portal knows no hypervisor by name: its labels are the flavors' titles, and no portal code, template or
script compares against a hypervisor's name (issue 15: hypervisor differences live in corral/domain/flavors/)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from corral.domain.flavors import all_flavors, get_flavor
from corral.engine.app import create_app
from corral.engine.db.models import Cluster, Host
from corral.engine.db.session import Database
from corral.engine.ids import new_id
from corral.engine.portal import data, users
from tests.portal.test_portal_app import PASSWORD, login

PORTAL = Path(data.__file__).resolve().parent
NAMES = {n for f in all_flavors() for n in (f.name, f.domain_type)}


def test_hypervisor_labels_are_the_flavors_titles() -> None:
    for flavor in all_flavors():
        assert data.hypervisor_label(flavor.domain_type) == flavor.title
        assert data.hypervisor_label(flavor.domain_type, emulated=True) == f"{flavor.title} (emulated)"
    assert data.hypervisor_label("test", emulated=True) == "test driver (emulated)"  # libvirt's, no flavor's
    assert data.hypervisor_label(None) == "unknown" and data.hypervisor_label("bhyve") == "bhyve"


def _python_names() -> Iterator[str]:
    for path in sorted(PORTAL.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in NAMES:
                yield f"{path.relative_to(PORTAL)}:{node.lineno}: {node.value!r}"


def test_no_hypervisor_names_in_portal_code() -> None:
    """No string in the portal's Python is a flavor's or a domain type's name (no table, no ``== "xen"``)."""
    assert list(_python_names()) == []


def test_no_hypervisor_comparisons_in_templates_or_scripts() -> None:
    names = "|".join(sorted(NAMES))
    compare = re.compile(rf"""[=!]==?\s*['"]({names})['"]|['"]({names})['"]\s*[=!]==?""", re.IGNORECASE)
    found = [f"{p.relative_to(PORTAL)}: {m.group(0)}" for p in sorted(PORTAL.rglob("*"))
             if p.suffix in (".html", ".js") for m in compare.finditer(p.read_text())]
    assert found == []


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    url = f"sqlite:///{tmp_path / 'engine.db'}"
    users.create_admin(url, "admin", PASSWORD)
    app = create_app(url, start_monitor=False)
    with TestClient(app, base_url="http://testserver") as c:
        yield c, url


def test_host_pages_name_the_hypervisor_by_its_flavor(client: tuple[TestClient, str]) -> None:
    c, url = client
    xen = get_flavor("xen")
    db = Database(url)
    host_id = new_id()
    try:
        def add(s: Session) -> None:
            cluster = new_id()
            s.add(Cluster(id=cluster, name="c-labels", description="", flavor_policy="any"))
            s.flush()
            s.add(Host(id=host_id, name="xen-emulated", cluster_id=cluster, agent_url="http://127.0.0.1:1",
                       state="non_operational", hypervisor=xen.domain_type, flavor=xen.name, emulated=True))
        db.call(add)
    finally:
        db.dispose()
    login(c)
    want = f"{xen.title} (emulated)"
    for path in ("/portal/hosts", f"/portal/hosts/{host_id}", "/portal/"):
        page = c.get(path)
        assert page.status_code == 200 and want in page.text, path
