"""Templates and snapshots in headless Chromium (issue 12), against ``corral all-in-one`` (two agents on the test
driver, its ``local`` dir domain): a stopped VM made a template from its page (the task's progress, then the
link), the templates list and the template's page, its delete refused next to the button while a clone reads
it, a VM made from it in the New VM form (memory prefilled then overridden, its thin clone volume listed in the
domain), and a VM's snapshots taken, refused by name, reverted and deleted from its page; a live snapshot on the
Xen host refused in words. Every page is checked at phone width (390 px). Screenshots go to
``test-output/portal-templates/``."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.portal.support import CHROMIUM, CHROMIUM_ARGS, ENV, REPO, AllInOne, start_qemu_host, wait_task

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from tests.portal.test_portal_browser import Shots  # noqa: E402
from tests.portal.test_portal_storage_browser import DESKTOP, accept_next_dialog, on_phone  # noqa: E402

OUTPUT = REPO / "test-output" / "portal-templates"
GIB = 1 << 30


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AllInOne]:
    aio = AllInOne(tmp_path_factory.mktemp("aio-templates") / "data")
    # its first output line must be the JSON one: no library's warning on the merged stderr before it
    had = ENV.get("PYTHONWARNINGS")
    ENV["PYTHONWARNINGS"] = "ignore"
    try:
        aio.start()
        yield aio
    finally:
        aio.stop()
        if had is None:
            ENV.pop("PYTHONWARNINGS", None)
        else:
            ENV["PYTHONWARNINGS"] = had


@pytest.fixture(scope="module")
def page(engine: AllInOne, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A logged-in Chromium page."""
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    OUTPUT.mkdir(parents=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-templates")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport=DESKTOP, ignore_https_errors=True)  # the engine's own CA
        ctx.set_default_timeout(30_000)
        try:
            p = ctx.pages[0] if ctx.pages else ctx.new_page()
            p.goto(engine.info["url"] + "/portal/login")
            p.fill("#username", "admin")
            p.fill("#password", engine.info["password"])
            p.click("button[type=submit]")
            expect(p.locator("h1")).to_have_text("Dashboard")
            yield p
        finally:
            ctx.close()


@pytest.fixture
def shots(page: Page, engine: AllInOne, request: pytest.FixtureRequest) -> Iterator[Shots]:
    s = Shots(page, OUTPUT / request.node.name)
    s.out.mkdir(parents=True, exist_ok=True)
    failed_before = request.session.testsfailed
    yield s
    if request.session.testsfailed > failed_before:
        s.failure(request.node.name)
        print(engine.logs())


def api_of(engine: AllInOne) -> httpx.Client:
    """The engine's REST API, its certificate checked against the CA the all-in-one printed."""
    return httpx.Client(base_url=engine.info["url"] + "/api/v1", timeout=60,
                        verify=ssl.create_default_context(cafile=engine.info["ca"]),
                        headers={"Authorization": f"Bearer {engine.info['token']}"})


def task_done(api: httpx.Client, r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 202, r.text
    task = wait_task(api, r.json())
    assert task["state"] == "succeeded", task
    return task


def vm_on(api: httpx.Client, name: str, host: str, *, stop: bool) -> dict[str, Any]:
    """A VM with a 1 GiB volume in ``local``, started on ``host`` (its volume made there), stopped if asked."""
    r = api.post("/vms", json={"name": name, "memory_mib": 96, "vcpus": 2, "nics": [],
                               "disks": [{"size_bytes": GIB, "storage": "local"}]})
    assert r.status_code == 201, r.text
    task_done(api, api.post(f"/vms/{name}/start", params={"host": host}))
    if stop:
        task_done(api, api.post(f"/vms/{name}/stop"))
    return dict(api.get(f"/vms/{name}").json())


def test_make_template_then_a_vm_from_it(engine: AllInOne, page: Page, shots: Shots) -> None:
    base = engine.info["url"] + "/portal"
    with api_of(engine) as api:
        gold = vm_on(api, "gold", "kvm-host", stop=True)

    # ---- Make template on the stopped VM's page: the task's progress, then a link to the template
    page.goto(f"{base}/vms/{gold['id']}")
    expect(page.locator("#template-make")).to_be_visible()
    page.fill("#tpl-name", "t-gold")
    page.fill("#tpl-description", "golden image")
    page.click("#template-form button[type=submit]")
    done = page.locator("[data-template-done]")
    expect(done).to_be_visible()
    expect(done).to_contain_text("template t-gold")
    shots.take("template-made")
    done.locator("a").click()
    expect(page.locator("h1")).to_have_text("Template t-gold")
    expect(page.locator('tr[data-base-volume="gold-disk0"]')).to_contain_text("1 GiB")
    expect(page.locator("#template-vms")).to_contain_text("gold")
    shots.take("template-page")
    on_phone(page, shots, "template-page")

    # ---- its delete is refused while gold's clone reads the base: the reason next to the button
    seen: list[str] = []
    accept_next_dialog(page, seen)
    page.click("[data-delete-template]")
    refusal = page.locator('.delete-box .field-error[data-error-for="template"]')
    expect(refusal).to_contain_text("gold")
    assert seen and seen[0].startswith("Delete template t-gold?")
    shots.take("template-delete-refused", expect_errors=True)

    # ---- the list, from the navigation
    page.click("nav >> text=Templates")
    row = page.locator('tr[data-template="t-gold"]')
    expect(row).to_contain_text("96 MiB")
    expect(row).to_contain_text("1 base volume")
    expect(row.locator('[data-cell="clones"]')).to_contain_text("1")
    shots.take("templates")
    on_phone(page, shots, "templates")

    # ---- a VM from it in the New VM form: values prefilled, memory overridden, disks from the template
    page.goto(base + "/vms/new")
    t_id = page.locator("#v-template option", has_text="t-gold").get_attribute("value")
    assert t_id
    page.select_option("#v-template", t_id)
    expect(page.locator("#v-memory")).to_have_value("96")
    expect(page.locator("#v-vcpus")).to_have_value("2")
    expect(page.locator("[data-template-disks] ul:visible")).to_contain_text("gold-disk0 — 1 GiB qcow2")
    expect(page.locator("#v-graphics")).to_be_hidden()
    expect(page.locator('[data-rows="disk"] [data-row]')).to_have_count(0)
    # a disk added to the template's is counted after them (disks.1), as the API counts it
    page.click('[data-add-row="disk"]')
    expect(page.locator('[data-rows="disk"] [data-row] legend')).to_have_text("Disk 2")
    page.click('[data-rows="disk"] [data-remove-row]')
    page.fill("#v-name", "clone1")
    page.fill("#v-memory", "128")
    on_phone(page, shots, "vm-new-from-template")  # reloads: the form comes back with no template picked
    expect(page.locator("#v-template")).to_have_value("")
    expect(page.locator('[data-rows="disk"] [data-row]')).to_have_count(1)
    page.select_option("#v-template", t_id)
    page.fill("#v-name", "clone1")
    page.fill("#v-memory", "128")
    shots.take("vm-new-from-template")
    page.click("#vm-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("VM clone1")
    with api_of(engine) as api:
        vm = api.get("/vms/clone1").json()
        assert vm["memory_mib"] == 128 and vm["spec"]["vcpus"] == 2, vm
        clone = api.get("/volumes/clone1-disk0").json()
        assert clone["backing_id"] == api.get("/volumes/gold-disk0").json()["id"], clone
    # the thin clone is listed in its domain, with its VM
    page.goto(base + "/storage")
    page.click('section[data-domain="local"] h2 a')
    expect(page.locator('tr[data-volume="clone1-disk0"]')).to_contain_text("clone1")
    shots.take("clone-volume")


def test_snapshots_take_refuse_revert_delete(engine: AllInOne, page: Page, shots: Shots) -> None:
    base = engine.info["url"] + "/portal"
    with api_of(engine) as api:
        vm = vm_on(api, "snappy", "kvm-host", stop=False)
    page.goto(f"{base}/vms/{vm['id']}")
    section = page.locator("#snapshots")
    expect(section.locator("[data-snapshot-where]")).to_contain_text("On host kvm-host")
    expect(section.locator("tbody")).to_contain_text("No snapshots yet.")
    expect(page.locator("#template-make")).to_be_hidden()  # running: no template from it

    # ---- take one while it runs: listed with the VM's state then (with its memory), marked current
    page.fill("#snap-name", "s1")
    page.fill("#snap-description", "before the upgrade")
    page.click("#snapshot-form button[type=submit]")
    row = section.locator('tr[data-snapshot="s1"]')
    expect(row).to_contain_text("before the upgrade")
    expect(row).to_contain_text("running, with its memory")
    expect(row.locator(".tag")).to_have_text("current")
    shots.take("snapshot-taken")
    # the same name again: refused next to the name input
    page.fill("#snap-name", "s1")
    page.click("#snapshot-form button[type=submit]")
    expect(page.locator('#snapshot-form .field-error[data-error-for="name"]')).to_contain_text("s1")
    shots.take("snapshot-name-refused", expect_errors=True)
    on_phone(page, shots, "vm-snapshots")

    # ---- powered off, then reverted: the confirmation says where the VM goes back to, and it runs again
    with api_of(engine) as api:
        task_done(api, api.post("/vms/snappy/stop"))
    page.reload()
    expect(page.locator(f'[data-vm-state="{vm["id"]}"]').first).to_have_text("down")
    seen: list[str] = []
    accept_next_dialog(page, seen)
    row.locator('[data-snapshot-action="revert"]').click()
    expect(page.locator(f'[data-vm-state="{vm["id"]}"]').first).to_have_text("up")
    assert seen and "The VM goes back to how it was at" in seen[0], seen
    assert "it comes back running" in seen[0]
    shots.take("snapshot-reverted")

    # ---- deleted after its confirmation
    accept_next_dialog(page, seen)
    row.locator('[data-snapshot-action="delete"]').click()
    expect(section.locator("tbody")).to_contain_text("No snapshots yet.")
    assert seen[-1].startswith("Delete snapshot s1 of VM snappy?")
    shots.take("snapshot-deleted")


def test_live_snapshot_refused_on_xen_in_words(engine: AllInOne, page: Page, shots: Shots) -> None:
    with api_of(engine) as api:
        vm = vm_on(api, "xen-live", "xen-host", stop=False)
    page.goto(f"{engine.info['url']}/portal/vms/{vm['id']}")
    page.fill("#snap-name", "s1")
    page.click("#snapshot-form button[type=submit]")
    banner = page.locator("#snapshot-form [data-form-error]")
    expect(banner).to_contain_text("Live snapshots are not possible on this Xen")
    expect(banner).to_contain_text("stop the VM first. The host says: host xen-host:")
    text = banner.inner_text()
    assert "{" not in text and "[" not in text and "snapshot.live" not in text, text
    shots.take("live-snapshot-refused", expect_errors=True)
    with api_of(engine) as api:
        assert api.get("/vms/xen-live/snapshots").json()["items"] == []


# ------------------------------------------------------------------------------------------- QEMU lab

@pytest.fixture
def lab_image(engine: AllInOne, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A cluster of its own with an agent on the QEMU lab's libvirtd, a dir domain there and a 48 MiB qcow2
    image uploaded into it (all removed after). The test driver cannot take uploads: images need a real host."""
    host = start_qemu_host(tmp_path / "lab-agent")
    if isinstance(host, str):
        from tests.require import unavailable
        unavailable(host)
    assert not isinstance(host, str)
    suffix = uuid.uuid4().hex[:6]
    cluster, pool = f"lab-{suffix}", f"pt-{suffix}"
    qcow = tmp_path / "cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "48M"], check=True, timeout=60)
    api = api_of(engine)
    try:
        assert api.post("/clusters", json={"name": cluster}).status_code == 201
        task = wait_task(api, api.post("/hosts", json={"name": f"lab-{suffix}", "url": host.agent.url,
                                                       "token": host.agent.token, "cluster": cluster}).json(), 120)
        assert task["state"] == "succeeded", task
        r = api.post("/storage-domains", json={"name": pool, "type": "dir", "path": str(tmp_path / "images"),
                                               "cluster": cluster})
        assert r.status_code == 201, r.text
        r = api.put(f"/images/cloud-{suffix}", params={"storage": pool}, content=qcow.read_bytes())
        assert r.status_code == 201, r.text
        yield {"cluster": cluster, "pool": pool, "image": r.json()}
    finally:
        for vm in api.get("/vms", params={"cluster": cluster}).json().get("items", []):
            api.delete(f"/vms/{vm['id']}")
        for img in api.get("/images", params={"storage": pool}).json().get("items", []):
            wait_task(api, api.delete(f"/images/{img['id']}").json())
        api.delete(f"/storage-domains/{pool}")
        for h in api.get("/hosts", params={"cluster": cluster}).json().get("items", []):
            api.delete(f"/hosts/{h['id']}")
        api.close()
        host.stop()
        import libvirt
        conn = libvirt.open(host.lab.uri)
        try:
            p = conn.storagePoolLookupByName(pool)
            if p.isActive():
                p.destroy()
            p.undefine()
        except libvirt.libvirtError:
            pass
        finally:
            conn.close()


@pytest.mark.qemulab
def test_new_vm_disk_cloned_from_an_image(engine: AllInOne, page: Page, shots: Shots,
                                          lab_image: dict[str, Any]) -> None:
    image = lab_image["image"]
    page.goto(engine.info["url"] + "/portal/vms/new")
    page.select_option("#v-cluster", lab_image["cluster"])
    page.fill("#v-name", "from-image")
    page.click('[data-rows="nic"] [data-remove-row]')
    page.select_option('[data-path="disks.0.kind"]', "image")
    page.select_option('[data-path="disks.0.image"]', image["name"])
    # the size is optional, at least the image's (shown); empty keeps it
    expect(page.locator('[data-path="disks.0.size_bytes"]')).to_have_value("")
    expect(page.locator('[data-rows="disk"] [data-image-size]')).to_have_text(
        "Optional: at least the image's 48 MiB; left empty, the disk has that size.")
    expect(page.locator('[data-path="disks.0.format"]')).to_be_hidden()
    # smaller than the image: the API's refusal next to the size
    page.fill('[data-path="disks.0.size_bytes"]', "16")
    page.select_option('[data-path="disks.0.size_unit"]', label="MiB")
    page.click("#vm-form button[type=submit]")
    expect(page.locator('.field-error[data-error-for="disks.0.size_bytes"]')).to_contain_text("virtual size")
    shots.take("image-disk-too-small", expect_errors=True)
    page.fill('[data-path="disks.0.size_bytes"]', "")
    page.click("#vm-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("VM from-image")
    shots.take("vm-from-image")
    with api_of(engine) as api:
        disk = api.get("/vms/from-image").json()["spec"]["disks"][0]
        assert disk["volume"] == "from-image-disk0", disk
        vol = api.get("/volumes/from-image-disk0").json()
        assert vol["backing_id"] == image["id"] and vol["capacity_bytes"] == 48 << 20, vol
