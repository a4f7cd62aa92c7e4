"""The portal's storage pages in headless Chromium (issue 12), against ``corral all-in-one`` (two agents on the
test driver and its ``local`` dir domain): the storage page's capacity bar per host, adding a domain through
the form (a refusal shown next to its field first) and deleting it after the confirmation, a delete refused by
field, the New VM form making a VM with a disk of a size, and an upload that the test driver cannot take (its
refusal shown). On the QEMU lab (``qemulab``), an upload for real: the progress bar, the image listed with its
sha256, and a cancelled upload that leaves nothing. Every page is also checked at phone width (390 px): nothing
wider than the screen. Screenshots go to ``test-output/portal-storage/``."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.portal.support import CHROMIUM, CHROMIUM_ARGS, REPO, AllInOne, start_qemu_host, wait_task

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)", allow_module_level=True)

from playwright.sync_api import Dialog, Page, expect, sync_playwright  # noqa: E402

from tests.portal.test_portal_browser import Shots  # noqa: E402

OUTPUT = REPO / "test-output" / "portal-storage"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1366, "height": 768}
MiB = 1 << 20


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AllInOne]:
    aio = AllInOne(tmp_path_factory.mktemp("aio-storage") / "data")
    try:
        aio.start()
        yield aio
    finally:
        aio.stop()


@pytest.fixture(scope="module")
def page(engine: AllInOne, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A logged-in Chromium page."""
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    OUTPUT.mkdir(parents=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-storage")), executable_path=CHROMIUM, headless=True,
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


def on_phone(page: Page, shots: Shots, name: str) -> None:
    """The page at 390 px: nothing wider than the screen (no sideways scrolling), screenshotted."""
    page.set_viewport_size(PHONE)
    try:
        page.reload()
        page.wait_for_load_state("domcontentloaded")
        width = page.evaluate("document.documentElement.scrollWidth")
        wide = page.evaluate("""() => Array.from(document.querySelectorAll('main *, header *'))
            .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && !e.closest('.scroll'))
            .slice(0, 5).map((e) => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)""")
        shots.take(name + "-phone")
        assert width <= PHONE["width"], (page.url, width, wide)
    finally:
        page.set_viewport_size(DESKTOP)


def accept_next_dialog(page: Page, seen: list[str]) -> None:
    def accept(d: Dialog) -> None:
        seen.append(d.message)
        d.accept()
    page.once("dialog", accept)


def test_storage_domains_add_delete_and_new_vm_disk(engine: AllInOne, page: Page, shots: Shots,
                                                    tmp_path: Path) -> None:
    base = engine.info["url"] + "/portal"
    # ---- the all-in-one's domain, with a capacity bar per host and its figures in words
    page.click("nav >> text=Storage")
    local = page.locator('section[data-domain="local"]')
    expect(local).to_be_visible()
    rows = local.locator("tr[data-domain-host]")
    expect(rows).to_have_count(2)
    for row in rows.all():
        expect(row.locator("[data-domain-state]")).to_have_text("active")
        assert row.locator("meter").count() == 1
        assert row.locator("meter").get_attribute("aria-label", timeout=1000)
        expect(row.locator("[data-capacity-text]")).to_have_text(re.compile(r"used of .+ \(\d+%\), .+ free"))
    shots.take("storage")
    on_phone(page, shots, "storage")

    # ---- add a domain: a relative path is refused next to the path field, then an absolute one is taken
    page.fill("#sd-name", "extra")
    page.fill("#sd-path", "relative/dir")
    page.click("#domain-form button[type=submit]")
    err = page.locator('.field-error[data-error-for="path"]')
    expect(err).to_contain_text("absolute")
    assert page.locator("#sd-path").get_attribute("aria-invalid") == "true"
    shots.take("domain-path-refused", expect_errors=True)
    # an nfs domain shows its server and export inputs
    page.select_option("#sd-type", "nfs")
    expect(page.locator("#sd-server")).to_be_visible()
    page.select_option("#sd-type", "dir")
    expect(page.locator("#sd-server")).to_be_hidden()
    page.fill("#sd-path", str(tmp_path / "extra"))
    page.click("#domain-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Storage domain extra")
    expect(page.locator("#domain-hosts tr[data-domain-host] [data-domain-state]")).to_have_text(["active", "active"])
    shots.take("domain-extra")
    on_phone(page, shots, "domain-extra")

    # ---- a volume made in it from its page, then the domain's delete refused while it holds it (by field)
    page.fill("#nv-name", "scratch")
    page.fill("#nv-size", "64")
    page.select_option('#volume-form [data-size-unit]', label="MiB")
    page.click("#volume-form button[type=submit]")
    expect(page.locator('tr[data-volume="scratch"]')).to_contain_text("64 MiB")
    seen: list[str] = []
    accept_next_dialog(page, seen)
    page.click("[data-delete-domain]")
    expect(page.locator('.delete-box .field-error[data-error-for="domain"]')).to_contain_text("holds 1 volume")
    assert seen and "Delete storage domain extra?" in seen[0]
    shots.take("domain-delete-refused", expect_errors=True)
    accept_next_dialog(page, seen)
    page.click('[data-delete-volume]')
    expect(page.locator('tr[data-volume="scratch"]')).to_have_count(0)
    # dismissing the confirmation does nothing; accepting it deletes the domain
    page.once("dialog", lambda d: d.dismiss())
    page.click("[data-delete-domain]")
    expect(page.locator("h1")).to_have_text("Storage domain extra")
    accept_next_dialog(page, seen)
    page.click("[data-delete-domain]")
    expect(page).to_have_url(re.compile(r"/portal/storage$"))
    expect(page.locator('section[data-domain="extra"]')).to_have_count(0)

    # ---- the New VM form: a 1 GiB disk in the local domain, made as the VM's own volume
    page.goto(base + "/vms/new")
    page.fill("#v-name", "st-web")
    page.fill("#v-memory", "128")
    page.fill('[data-path="nics.0.source"]', "virbr0")
    expect(page.locator('[data-path="disks.0.kind"]')).to_have_value("size")
    page.fill('[data-path="disks.0.size_bytes"]', "0")
    page.click("#vm-form button[type=submit]")
    size_error = page.locator('.field-error[data-error-for="disks.0.size_bytes"]')
    expect(size_error).to_have_text("Give a size greater than zero.")
    shots.take("vm-new-size-refused", expect_errors=True)
    page.fill('[data-path="disks.0.size_bytes"]', "1")
    page.select_option('[data-path="disks.0.storage"]', "local")
    on_phone(page, shots, "vm-new")
    page.fill("#v-name", "st-web")
    page.fill('[data-path="nics.0.source"]', "virbr0")
    page.fill('[data-path="disks.0.size_bytes"]', "1")
    # first-boot data for a cloud image: a user, a key, a host name, a static address
    key = "ssh-ed25519 " + base64.b64encode(b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + bytes(32)).decode()
    page.click("#cloud-init summary")
    page.fill("#ci-user", "alice")
    page.fill("#ci-keys", key + " alice@laptop\n")
    page.fill("#ci-hostname", "st-web")
    page.select_option("#ci-net", "static")
    page.fill("#ci-addr", "192.0.2.10/24")
    page.fill("#ci-gw", "192.0.2.1")
    page.fill("#ci-dns", "192.0.2.53, 192.0.2.54")
    page.click("#vm-form button[type=submit]")
    expect(page.locator("h1")).to_contain_text("VM st-web")
    shots.take("vm-with-volume")
    with engine.api() as api:
        vm = api.get("/vms/st-web").json()
        assert vm["spec"]["disks"][0]["volume"] == "st-web-disk0", vm["spec"]["disks"]
        ci = vm["spec"]["cloud_init"]
        assert (ci["user"], ci["hostname"], ci["ssh_authorized_keys"]) == ("alice", "st-web", [key + " alice@laptop"])
        assert ci["network"] == {"mode": "static", "address": "192.0.2.10/24", "gateway": "192.0.2.1",
                                 "dns": ["192.0.2.53", "192.0.2.54"]}, ci
        vol = api.get("/volumes/st-web-disk0").json()
        assert (vol["capacity_bytes"], vol["format"], vol["vm"], vol["domain"]) == (1 << 30, "qcow2", "st-web", "local")
    # the domain page lists it with its VM
    page.goto(base + "/storage")
    page.click('section[data-domain="local"] h2 a')
    expect(page.locator('tr[data-volume="st-web-disk0"]')).to_contain_text("st-web")
    expect(page.locator('tr[data-volume="st-web-disk0"]')).to_contain_text("1 GiB")
    on_phone(page, shots, "domain-local")


def test_upload_refused_by_the_test_driver_is_shown(engine: AllInOne, page: Page, shots: Shots,
                                                    tmp_path: Path) -> None:
    page.goto(engine.info["url"] + "/portal/images")
    shots.take("images-empty")
    on_phone(page, shots, "images")
    f = tmp_path / "tiny.img"
    f.write_bytes(os.urandom(2 * MiB))
    page.set_input_files("#up-file", str(f))
    expect(page.locator("#up-name")).to_have_value("tiny.img")
    page.select_option("#up-storage", "local")
    page.click("[data-upload-start]")
    banner = page.locator("#upload-form [data-form-error]")
    expect(banner).to_contain_text("virStorageVolUpload")
    shots.take("upload-refused", expect_errors=True)
    with engine.api() as api:
        assert api.get("/volumes", params={"name": "tiny.img"}).json()["items"] == []


# ------------------------------------------------------------------------------------------- QEMU lab

@pytest.fixture
def lab_domain(engine: AllInOne, tmp_path: Path) -> Iterator[str]:
    """A cluster of its own with an agent on the QEMU lab's libvirtd, and a dir domain there (removed after)."""
    host = start_qemu_host(tmp_path / "lab-agent")
    if isinstance(host, str):
        from tests.require import unavailable
        unavailable(host)
    assert not isinstance(host, str)
    suffix = uuid.uuid4().hex[:6]
    cluster, pool = f"lab-{suffix}", f"ps-{suffix}"
    api = engine.api()
    try:
        assert api.post("/clusters", json={"name": cluster}).status_code == 201
        task = wait_task(api, api.post("/hosts", json={"name": f"lab-{suffix}", "url": host.agent.url,
                                                       "token": host.agent.token, "cluster": cluster}).json(), 120)
        assert task["state"] == "succeeded", task
        r = api.post("/storage-domains", json={"name": pool, "type": "dir", "path": str(tmp_path / "images"),
                                               "cluster": cluster})
        assert r.status_code == 201 and [h["state"] for h in r.json()["hosts"]] == ["active"], r.text
        yield pool
    finally:
        for img in api.get("/images", params={"storage": pool}).json().get("items", []):
            wait_task(api, api.delete(f"/images/{img['id']}").json())
        api.delete(f"/storage-domains/{pool}")
        hosts = api.get("/hosts", params={"cluster": cluster}).json().get("items", [])
        for h in hosts:
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


def _eventually(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


@pytest.mark.qemulab
def test_upload_with_progress_and_cancel_on_the_qemu_lab(engine: AllInOne, page: Page, shots: Shots,
                                                         lab_domain: str, tmp_path: Path) -> None:
    data = os.urandom(24 * MiB + 123)
    f = tmp_path / "cloud.raw"
    f.write_bytes(data)
    page.goto(engine.info["url"] + "/portal/images")
    # throttled to about 4 MiB/s, so the bar moves through several figures and the cancel comes in time
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": 4 * MiB})
    seen: list[int] = []
    try:
        page.set_input_files("#up-file", str(f))
        page.select_option("#up-storage", lab_domain)
        page.click("[data-upload-start]")
        status = page.locator("[data-upload-status]")
        expect(status).to_contain_text("Uploading: ")
        expect(page.locator("[data-upload-cancel]")).to_be_visible()
        while not page.locator("#upload-form[data-uploaded]").count():
            seen.append(int(page.locator("#up-progress").get_attribute("value") or 0))
            page.wait_for_timeout(250)
        expect(status).to_contain_text("Uploaded cloud.raw: disk image, raw, 24 MiB. SHA-256 checked end to end.")
        shots.take("upload-done")
        assert len(set(seen)) >= 3 and seen == sorted(seen), seen  # the bar moved forward through several values
        page.wait_for_url(re.compile(r"/portal/images"))
        expect(page.locator('tr[data-image="cloud.raw"]')).to_contain_text(hashlib.sha256(data).hexdigest()[:12])
        shots.take("images-listed")

        # a cancelled upload: nothing is kept, on the host or in the engine
        big = tmp_path / "big.raw"
        big.write_bytes(os.urandom(64 * MiB))
        page.set_input_files("#up-file", str(big))
        page.select_option("#up-storage", lab_domain)
        page.click("[data-upload-start]")
        expect(page.locator("[data-upload-status]")).to_contain_text("Uploading: ")
        page.click("[data-upload-cancel]")
        expect(page.locator("[data-upload-status]")).to_have_text("Upload cancelled: nothing was kept.")
        shots.take("upload-cancelled")
        with AllInOne.api(engine) as api:
            _eventually(lambda: api.get("/volumes", params={"name": "big.raw"}).json()["items"] == [])
        assert not (tmp_path / "images" / "big.raw").exists()
    finally:
        cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                      "uploadThroughput": -1})
