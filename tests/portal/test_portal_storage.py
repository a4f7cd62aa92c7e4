"""The portal's storage pages without a browser (issue 12): storage domains with a capacity bar per host, one
domain's hosts and volumes, the image library, the New VM form's storage choices, and the API proxy streaming an
upload's body -- against the engine with real agents on libvirt's test driver (``tests/engine/agents.py``), on
SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from corral.engine.app import create_app
from corral.engine.portal import users
from corral.engine.portal.core import _bytes
from corral.engine.portal.sessions import csrf_token
from tests.engine import conftest as engine_fixtures
from tests.engine.agents import AgentProc
from tests.portal.test_portal_app import PASSWORD, login

GIB = 1 << 30
# the engine tests' fixtures: a database on SQLite and on PostgreSQL, two agents on the test driver
pg_cluster, db_url, agents = engine_fixtures.pg_cluster, engine_fixtures.db_url, engine_fixtures.agents


@pytest.fixture
def portal(db_url: str, agents: dict[str, AgentProc], tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    """A logged-in portal client (and its CSRF token) on an engine with the two test-driver hosts up and a dir
    storage domain ``images`` in the default cluster."""
    users.create_admin(db_url, "admin", PASSWORD)
    with TestClient(create_app(db_url, monitor=engine_fixtures.FAST), base_url="http://testserver") as c:
        csrf = csrf_token(login(c))
        h = {"X-CSRF-Token": csrf}
        for name, a in agents.items():
            r = c.post("/portal/api/hosts", json={"name": name, "url": a.url, "token": a.token}, headers=h)
            assert r.status_code == 202, r.text
            task = r.json()
            while task["state"] in ("pending", "running"):
                task = c.get(f"/portal/api/tasks/{task['id']}").json()
            assert task["state"] == "succeeded", task
        r = c.post("/portal/api/storage-domains", headers=h,
                   json={"name": "images", "type": "dir", "path": str(tmp_path / "images")})
        assert r.status_code == 201, r.text
        assert sorted(x["state"] for x in r.json()["hosts"]) == ["active", "active"], r.json()
        yield c, csrf


def test_sizes_are_binary_with_units() -> None:
    assert [_bytes(n) for n in (None, 0, 512, 1536, 10 * GIB, 3 << 40)] == \
        ["?", "0 bytes", "512 bytes", "1.5 KiB", "10 GiB", "3 TiB"]


def test_storage_page_has_a_capacity_bar_per_host_and_the_add_form(portal: tuple[TestClient, str]) -> None:
    c, _ = portal
    html = c.get("/portal/storage").text
    assert 'aria-current="page">Storage<' in html
    section = html[html.index('data-domain="images"'):]
    for host in ("xen-host", "kvm-host"):
        row = re.search(rf'<tr data-domain-host="{host}">(.*?)</tr>', section, re.S)
        assert row, host
        # the state in words, and the bar with its figures written out (not colour only)
        assert ">active<" in row.group(1)
        assert re.search(r'<meter min="0" max="\d+" value="\d+"', row.group(1))
        assert re.search(r'aria-label="space used in images on ' + host, row.group(1))
        assert re.search(r"[\d.]+ (bytes|KiB|MiB|GiB|TiB) used of [\d.]+ \w+ \(\d+%\), [\d.]+ \w+ free", row.group(1))
    # the form's inputs name the fields the API's refusals name
    for path in ("name", "type", "path", "source.host", "source.dir", "source.vg", "cluster"):
        assert f'data-path="{path}"' in html
    assert "<script" in html and "/static/storage.js" in html


def test_domain_page_lists_volumes_with_vm_and_host(portal: tuple[TestClient, str]) -> None:
    c, csrf = portal
    h = {"X-CSRF-Token": csrf}
    r = c.post("/portal/api/vms", headers=h, json={"name": "web1", "memory_mib": 64, "vcpus": 1,
                                                  "disks": [{"size_bytes": 2 * GIB, "storage": "images"}]})
    assert r.status_code == 201, r.text
    domain = c.get("/portal/api/storage-domains/images").json()
    html = c.get(f"/portal/storage/{domain['id']}").text
    row = re.search(r'<tr data-volume="web1-disk0">(.*?)</tr>', html, re.S)
    assert row, html
    cells = row.group(1)
    assert "qcow2" in cells and "2 GiB" in cells and ">web1</a>" in cells and "not made yet" in cells
    assert "pending" in cells
    assert len(re.findall(r'<tr data-domain-host="', html)) == 2
    assert 'data-delete-domain="' + domain["id"] in html
    # an unknown domain: the API's answer, as a page
    assert c.get("/portal/storage/nope").status_code == 404


def test_images_page_and_new_vm_form_offer_the_storage(portal: tuple[TestClient, str]) -> None:
    c, _ = portal
    html = c.get("/portal/images").text
    assert 'id="upload-form"' in html and 'data-sha-max="268435456"' in html
    assert '<option value="images" data-shared="no"' in html
    assert re.search(r'<option value="(xen|kvm)-host" data-domain="images">', html)
    assert "No images yet" in html
    form = c.get("/portal/vms/new").text
    assert '<option value="images" data-cluster="default">images (dir)</option>' in form
    assert 'data-key="size_bytes"' in form and 'data-cdrom-iso' in form and "/static/vmform.js" in form
    assert "No ISO uploaded yet" in form


def test_proxy_streams_an_upload_and_passes_the_refusal_on(portal: tuple[TestClient, str]) -> None:
    """The proxy passes the body on with its Content-Length: the test driver's hosts refuse the upload itself
    (409 unsupported, naming the host), and nothing is left."""
    c, csrf = portal
    data = b"\0" * (3 << 20)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    r = c.put("/portal/api/images/disk1", params={"storage": "images"}, content=data)
    assert r.status_code == 403  # no CSRF token
    r = c.put("/portal/api/images/disk1", params={"storage": "images"}, content=chunks(),
              headers={"X-CSRF-Token": csrf, "Content-Length": str(len(data))})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "unsupported" and re.match(r"host (xen|kvm)-host: ", body["message"]), body
    assert c.get("/portal/api/volumes").json()["items"] == []
    # without a Content-Length the API says which header is missing
    r = c.put("/portal/api/images/disk1", params={"storage": "images"}, content=chunks(),
              headers={"X-CSRF-Token": csrf})
    assert r.status_code == 411 and r.json()["field"] == "Content-Length", r.text
