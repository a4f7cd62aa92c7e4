"""The portal's templates and snapshots without a browser (issue 12): the templates list and a template's page
(base volumes, clones, delete refused while clones read), "Make template" on a stopped VM's page only, the New
VM form's template picker and image disks, the VM page's snapshot section naming its host's hypervisor -- against
the engine with real agents on libvirt's test driver, on SQLite and PostgreSQL."""

from __future__ import annotations

import html as htmllib
import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from corral.engine.portal.sessions import COOKIE, csrf_token
from tests.engine import conftest as engine_fixtures
from tests.portal.test_portal_storage import GIB
from tests.portal.test_portal_storage import portal as portal

pg_cluster, db_url, agents = engine_fixtures.pg_cluster, engine_fixtures.db_url, engine_fixtures.agents


def done(c: TestClient, csrf: str, method: str, path: str, body: Any = None, state: str = "succeeded",
         status: int = 202) -> dict[str, Any]:
    r = c.request(method, "/portal/api" + path, json=body, headers={"X-CSRF-Token": csrf})
    assert r.status_code == status, r.text
    task = r.json()
    while task["state"] in ("pending", "running"):
        task = c.get(f"/portal/api/tasks/{task['id']}").json()
    assert task["state"] == state, task
    return task


def stopped_vm(c: TestClient, csrf: str, name: str, host: str = "kvm-host") -> dict[str, Any]:
    """A VM with a 1 GiB volume in ``images``, started once on ``host`` (so its volume exists) and stopped."""
    r = c.post("/portal/api/vms", headers={"X-CSRF-Token": csrf},
               json={"name": name, "memory_mib": 96, "vcpus": 2, "nics": [],
                     "disks": [{"size_bytes": GIB, "storage": "images"}]})
    assert r.status_code == 201, r.text
    done(c, csrf, "POST", f"/vms/{name}/start?host={host}")
    done(c, csrf, "POST", f"/vms/{name}/stop")
    return dict(c.get(f"/portal/api/vms/{name}").json())


def test_make_template_list_detail_and_delete_refusal(portal: tuple[TestClient, str]) -> None:
    c, csrf = portal
    vm = stopped_vm(c, csrf, "gold")
    page = c.get(f"/portal/vms/{vm['id']}").text
    # a stopped VM offers "Make template" (its form names the API's fields) and the snapshot section
    assert re.search(r'<section class="card" id="template-make" aria-labelledby="h-template-make">', page)
    assert 'id="template-form"' in page and 'data-path="vm"' in page and "/static/templates.js" in page
    assert 'id="snapshots"' in page and 'id="snapshot-form"' in page and "/static/snapshots.js" in page

    task = done(c, csrf, "POST", "/templates", {"name": "t1", "vm": "gold", "description": "golden"})
    t = task["result"]
    html = c.get("/portal/templates").text
    assert 'aria-current="page">Templates<' in html
    row = re.search(r'<tr data-template="t1">(.*?)</tr>', html, re.S)
    assert row, html
    cells = row.group(1)
    assert f'href="/portal/templates/{t["id"]}">t1</a>' in cells and "golden" in cells and "default" in cells
    assert "96 MiB" in cells and ">2<" in cells and "1 base volume" in cells and "1 GiB" in cells
    assert re.search(r'data-cell="clones">1 <small class="muted">\(1 VM\)', cells), cells  # gold itself

    detail = c.get(f"/portal/templates/{t['id']}").text
    base = re.search(r'<tr data-base-volume="gold-disk0">(.*?)</tr>', detail, re.S)
    assert base and "qcow2" in base.group(1) and "1 GiB" in base.group(1) and "kvm-host" in base.group(1)
    assert f'<a href="/portal/vms/{vm["id"]}">gold</a>' in detail and "<code>gold-disk0-1</code>" in detail
    assert f'data-delete-template="{t["id"]}"' in detail and 'data-path="template"' in detail
    # the delete is refused while gold's clone reads the base: by field, in words (what the page shows)
    r = c.delete(f"/portal/api/templates/{t['id']}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 409 and r.json()["field"] == "template" and "gold" in r.json()["message"], r.text
    assert c.get("/portal/templates/nope").status_code == 404

    # a running VM's page does not offer it (the API would refuse: a template is made from a stopped VM)
    done(c, csrf, "POST", "/vms/gold/start")
    page = c.get(f"/portal/vms/{vm['id']}").text
    assert re.search(r'id="template-make" aria-labelledby="h-template-make" hidden>', page)

    # a viewer reads the templates; roles.css hides the controls of actions the role lacks (the API refuses them)
    r = c.post("/portal/api/users", headers={"X-CSRF-Token": csrf},
               json={"username": "ann", "role": "viewer", "password": "ann-password-1"})
    assert r.status_code == 201, r.text
    c.post("/portal/logout", data={"csrf": csrf}, follow_redirects=False)
    r = c.post("/portal/login", data={"username": "ann", "password": "ann-password-1", "next": "/portal/"},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    listed = c.get("/portal/templates")
    assert listed.status_code == 200 and '<body data-prefix="/portal" data-role="viewer"' in listed.text
    viewed = c.get(f"/portal/templates/{t['id']}")
    assert viewed.status_code == 200 and "data-delete-template" in viewed.text  # hidden by roles.css
    assert c.delete(f"/portal/api/templates/{t['id']}",
                    headers={"X-CSRF-Token": csrf_token(c.cookies.get(COOKIE) or "")}).status_code == 403


def picker_option(form: str, template_id: str) -> dict[str, str]:
    opt = re.search(rf'<option value="{template_id}"([^>]*)>', form)
    assert opt, form
    return {k: htmllib.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', opt.group(1))}


def test_new_vm_form_offers_templates_and_the_clone_made_from_it(portal: tuple[TestClient, str]) -> None:
    c, csrf = portal
    stopped_vm(c, csrf, "gold")
    t = done(c, csrf, "POST", "/templates", {"name": "t1", "vm": "gold"})["result"]
    form = c.get(f"/portal/vms/new?template={t['id']}").text
    assert 'data-template-picker' in form and 'data-path="clone"' in form
    opt = picker_option(form, t["id"])
    assert (opt["memory"], opt["vcpus"], opt["cluster"]) == ("96", "2", "default")
    assert json.loads(opt["bases"]) == ["gold-disk0"]
    assert [d["volume"] for d in json.loads(opt["disks"])] == ["gold-disk0"]
    assert re.search(rf'<option value="{t["id"]}"[^>]* selected>t1 ', form)  # ?template= picks it
    assert re.search(rf'<ul class="plain" data-template-bases="{t["id"]}" hidden><li>gold-disk0 — 1 GiB qcow2', form)
    # a disk image to clone: none on the test driver (it cannot take uploads), so the choice is off, and said so
    assert '<option value="image" disabled>a clone of a disk image</option>' in form

    # what the form posts with the template picked and memory overridden: a thin clone of the base
    r = c.post("/portal/api/vms", headers={"X-CSRF-Token": csrf},
               json={"name": "web1", "template": t["id"], "clone": "thin", "memory_mib": 128, "vcpus": 2,
                     "guest_type": "hvm"})
    assert r.status_code == 201, r.text
    web1 = r.json()
    assert web1["memory_mib"] == 128 and web1["spec"]["disks"][0]["volume"] == "web1-disk0"
    base = c.get("/portal/api/volumes/gold-disk0").json()
    assert c.get("/portal/api/volumes/web1-disk0").json()["backing_id"] == base["id"]
    detail = c.get(f"/portal/templates/{t['id']}").text
    assert f'<a href="/portal/vms/{web1["id"]}">web1</a>' in detail


def test_vm_page_snapshot_section_names_the_host_hypervisor(portal: tuple[TestClient, str]) -> None:
    c, csrf = portal
    vm = stopped_vm(c, csrf, "snappy")
    page = c.get(f"/portal/vms/{vm['id']}").text
    section = re.search(r'<section class="card" id="snapshots"[^>]*>', page)
    assert section and 'data-vm-name="snappy"' in section.group(0) and 'data-host="kvm-host"' in section.group(0)
    # the hypervisor of the host that has the VM's disks (its flavor's title), for the live-snapshot refusal
    assert re.search(r'data-hypervisor="[^"]*KVM[^"]*"', section.group(0)), section.group(0)
    # what the section reads and does, through the portal's API proxy: take, list, delete
    done(c, csrf, "POST", "/vms/snappy/snapshots", {"name": "s1", "description": "before"})
    listed = c.get("/portal/api/vms/snappy/snapshots").json()
    assert [(s["name"], s["description"], s["vm_state"]) for s in listed["items"]] == [("s1", "before", "shutoff")]
    failed = done(c, csrf, "POST", "/vms/snappy/snapshots", {"name": "s1"}, state="failed")
    assert failed["error"]["field"] == "name"  # shown next to the name input
    done(c, csrf, "DELETE", "/vms/snappy/snapshots/s1")
    # a VM that never ran: the section says why there are none (the API's words)
    r = c.post("/portal/api/vms", headers={"X-CSRF-Token": csrf},
               json={"name": "fresh", "memory_mib": 64, "vcpus": 1, "disks": []})
    assert r.status_code == 201
    page = c.get(f"/portal/vms/{r.json()['id']}").text
    assert re.search(r'<section class="card" id="snapshots"[^>]* data-host="">', page)  # the script asks nothing
    answer = c.get("/portal/api/vms/fresh/snapshots")
    assert answer.status_code == 409 and "has not run on any host yet" in answer.json()["message"]


def test_roles_hide_the_new_controls() -> None:
    css = (Path(__file__).resolve().parents[2] / "corral/engine/portal/static/roles.css").read_text()
    for rule in ('body[data-role="viewer"] [data-snapshot-action]', 'body[data-role="viewer"] #snapshot-form',
                 'body:not([data-role="admin"]) [data-delete-template]',
                 'body:not([data-role="admin"]) #template-make'):
        assert rule in css

