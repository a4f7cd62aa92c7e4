"""The admin portal end to end, in headless Chromium, against ``corral all-in-one`` on the test driver.

One walk through what an operator does first: log in; look at the dashboard and the hosts; add a host (a
third emulated agent) and read its hardware check and capability matrix; put it in maintenance and back;
define a VM in the form (an API error shows next to the field it names first); read its plan on the Xen and
on the KVM host (different translations); start it and see its state change without a reload; list VMs with
filters; open its consoles; power it off; log out. Then the graphical console for real: a VM with VNC
graphics on the QEMU lab's libvirtd (an extra agent on ``qemu:///system``), started from the portal, and the
noVNC canvas connected through the engine's WebSocket proxy; that part alone is skipped when the lab is
unavailable.

Every page is screenshotted into ``test-output/portal/`` and checked: no error banner, no field error, no
JavaScript error in the console (except on the steps that show an error on purpose).
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.domain.flavors import get_flavor
from tests.portal.support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    OUTPUT,
    Agent,
    AllInOne,
    QemuHost,
    start_qemu_host,
    wait_task,
)
from tests.require import unavailable

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (/usr/bin/chromium)", allow_module_level=True)

from playwright.sync_api import ConsoleMessage, Page, expect, sync_playwright  # noqa: E402

TIMEOUT_MS = 30_000


class Shots:
    """Screenshots in order, each checked for error banners, field errors and JavaScript errors."""

    def __init__(self, page: Page, out: Path) -> None:
        self.page = page
        self.out = out
        self.n = 0
        self.js_errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.js_errors.append(f"page error: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.js_errors.append(f"console error at {self.page.url}: {msg.text}")

    def take(self, name: str, *, expect_errors: bool = False) -> Path:
        self.n += 1
        path = self.out / f"{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if expect_errors:
            # the step shows an API error on purpose; the browser logs the 4xx response as a console error
            self.js_errors = [e for e in self.js_errors if not re.search(r"status of 4\d\d", e)]
        else:
            banners = [t for t in self.page.locator(".banner.error:visible").all_inner_texts() if t.strip()]
            fields = [t for t in self.page.locator(".field-error:visible").all_inner_texts() if t.strip()]
            assert not banners, f"{path.name}: error banner(s) {banners}"
            assert not fields, f"{path.name}: field error(s) {fields}"
        assert not self.js_errors, f"{path.name}: JavaScript errors {self.js_errors}"
        return path

    def failure(self, name: str) -> None:
        """A screenshot of the page a test failed on, for the report (no checks)."""
        try:
            self.page.screenshot(path=str(self.out / f"FAILED-{name}.png"), full_page=True)
        except Exception as exc:  # the browser may be gone
            print(f"no failure screenshot: {exc}")
        print(f"failed at {self.page.url}; JavaScript errors: {self.js_errors}")


@pytest.fixture(scope="module")
def out_dir() -> Path:
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    OUTPUT.mkdir(parents=True)
    return OUTPUT


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AllInOne]:
    aio = AllInOne(tmp_path_factory.mktemp("aio") / "data")
    try:
        aio.start()
        yield aio
    finally:
        aio.stop()


@pytest.fixture(scope="module")
def qemu_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[concurrent.futures.Future[QemuHost | str]]:
    """The QEMU lab's agent, started in the background while the first test runs."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(start_qemu_host, tmp_path_factory.mktemp("qemu-agent"))
    try:
        yield future
    finally:
        host = future.result(timeout=900)
        if isinstance(host, QemuHost):
            host.stop()
        pool.shutdown()


@pytest.fixture(scope="module")
def page(out_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1366, "height": 768},
            ignore_https_errors=True)  # the engine's own CA (TLS itself: tests/cli/test_engine_tls.py)
        ctx.set_default_timeout(TIMEOUT_MS)
        try:
            yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally:
            ctx.close()


@pytest.fixture(scope="module")
def all_shots(page: Page, out_dir: Path) -> Shots:
    return Shots(page, out_dir)


@pytest.fixture
def shots(all_shots: Shots, engine: AllInOne, request: pytest.FixtureRequest) -> Iterator[Shots]:
    """Per test: JavaScript errors start from none; a failed test leaves a screenshot and the engine's logs."""
    all_shots.js_errors.clear()
    failed_before = request.session.testsfailed
    yield all_shots
    if request.session.testsfailed > failed_before:
        all_shots.failure(request.node.name)
        print(engine.logs())


def _plan_outcomes(page: Page) -> dict[str, str]:
    rows = page.locator("#plan-table tbody tr")
    return {r.get_attribute("data-path") or "": r.get_attribute("data-outcome") or "" for r in rows.all()}


def _choose_plan(page: Page, host: str) -> dict[str, str]:
    page.select_option("#plan-host", host)
    expect(page.locator(f'#plan-table[data-host="{host}"]')).to_be_visible()
    return _plan_outcomes(page)


def test_portal_walk(engine: AllInOne, page: Page, shots: Shots, tmp_path: Path,
                     qemu_host: concurrent.futures.Future[QemuHost | str]) -> None:
    t0 = time.monotonic()
    extra = Agent(tmp_path / "kvm-extra", ["--libvirt", "test:///default", "--emulate", "kvm", "--bridge", "br0"])
    info = engine.info
    base = info["url"]
    try:
        extra.start()
        assert info["username"] == "admin" and info["password"]
        # ---- login (a wrong password first: the message is shown, no session)
        page.goto(base + "/")
        expect(page).to_have_url(re.compile(r"/portal/login"))
        shots.take("login")
        page.fill("#username", "admin")
        page.fill("#password", "not-the-password")
        page.click("button[type=submit]")
        expect(page.locator("#login-error")).to_contain_text("Wrong user name or password")
        shots.take("login-refused", expect_errors=True)
        page.fill("#password", info["password"])
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Dashboard")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "on")
        shots.take("dashboard")

        # ---- hosts: the two all-in-one hosts, then add a third
        page.click("nav >> text=Hosts")
        expect(page.locator("#hosts-table tbody tr")).to_have_count(2)
        # hypervisors are named by their flavors' titles
        expect(page.locator("#hosts-table")).to_contain_text(f"{get_flavor('xen').title} (emulated)")
        expect(page.locator("#hosts-table")).to_contain_text(f"{get_flavor('kvm').title} (emulated)")
        shots.take("hosts")
        page.click("text=Add host")
        page.fill("#h-url", extra.url)
        page.fill("#h-token", "wrong-token")
        page.fill("#h-name", "kvm-extra")
        page.click("#host-form button[type=submit]")
        token_error = page.locator('.field-error[data-error-for="token"]')
        expect(token_error).to_be_visible()
        assert page.locator("#h-token").get_attribute("aria-invalid") == "true"
        shots.take("host-add-refused", expect_errors=True)
        page.fill("#h-url", extra.url)
        page.fill("#h-token", extra.token)
        page.fill("#h-name", "kvm-extra")
        page.click("#host-form button[type=submit]")
        result = page.locator("#host-result")
        expect(result).to_be_visible()
        expect(result).to_contain_text("the hardware check passed")
        expect(result.locator("li.ok").first).to_be_visible()
        shots.take("host-added")
        result.locator("text=Open the host page").click()
        expect(page.locator("h1")).to_contain_text("Host kvm-extra")
        matrix = page.locator("#capability-matrix")
        expect(matrix).to_contain_text("nic.model.virtio")
        expect(matrix.locator(".outcome-native").first).to_be_visible()
        shots.take("host-page")
        page.click('[data-host-action="maintenance"]')
        expect(page.locator("h1 .state")).to_have_text("maintenance")
        shots.take("host-maintenance")
        page.click('[data-host-action="activate"]')
        expect(page.locator("h1 .state")).to_have_text("up")
        # the Xen host's matrix translates what KVM runs natively
        page.goto(base + "/portal/hosts")
        page.click("#hosts-table >> text=xen-host")
        expect(page.locator('#capability-matrix tr:has(code:text-is("disk.bus.virtio")) .outcome-translated')
               .first).to_be_visible()
        shots.take("host-xen-matrix")

        # ---- a new VM: an API error lands next to the field it names, then the VM is created
        page.goto(base + "/portal/vms")
        page.click("text=New VM")
        page.fill("#v-name", "e2e-web")
        page.fill("#v-memory", "256")
        page.select_option('[data-path="disks.0.kind"]', "source")  # a file on the host (not a new volume)
        disk = page.locator('[data-path="disks.0.source"]')
        disk.fill("images/e2e-web.qcow2")
        page.fill('[data-path="nics.0.source"]', "virbr0")
        page.check("#v-agent")
        page.click("#vm-form button[type=submit]")
        err = page.locator('.field-error[data-error-for="disks.0.source"]')
        expect(err).to_contain_text("absolute path")
        assert disk.get_attribute("aria-invalid") == "true"
        assert page.locator('fieldset[data-path="disks.0"] .field-error').count() == 1  # in the disk's own row
        shots.take("vm-new-field-error", expect_errors=True)
        disk.fill("/var/lib/corral/images/e2e-web.qcow2")
        page.click("#vm-form button[type=submit]")
        expect(page.locator("h1")).to_contain_text("VM e2e-web")
        vm_id = page.locator("#vm").get_attribute("data-vm")
        assert vm_id
        expect(page.locator(f'h1 [data-vm-state="{vm_id}"]')).to_have_text("down")

        # ---- the plan on each host, before starting: the Xen flavor translates, KVM runs it natively
        xen = _choose_plan(page, "xen-host")
        assert xen["nics.0.model"] == "translated" and xen["guest_agent"] == "translated", xen
        expect(page.locator('#plan-table tr[data-path="nics.0.model"]')).to_contain_text("e1000")
        shots.take("vm-plan-xen")
        kvm = _choose_plan(page, "kvm-host")
        assert kvm["nics.0.model"] == "native" and kvm["guest_agent"] == "native", kvm
        assert {p for p in xen if xen[p] != kvm.get(p)} >= {"nics.0.model", "guest_agent", "balloon"}
        shots.take("vm-plan-kvm")
        # a setting the Xen flavor refuses: the plan says why, and Start is off for that host
        with engine.api() as api:
            floppy = api.post("/vms", json={"name": "e2e-floppy", "memory_mib": 64, "disks": [
                {"device": "floppy", "source": "/var/lib/corral/boot.img"}]})
            assert floppy.status_code == 201, floppy.text
        page.goto(base + f"/portal/vms/{floppy.json()['id']}")
        refused = _choose_plan(page, "xen-host")
        assert "refused" in refused.values(), refused
        expect(page.locator(".plan-summary")).to_contain_text("cannot start this VM")
        expect(page.locator('[data-vm-action="start"]')).to_be_disabled()
        shots.take("vm-plan-refused")
        page.goto(base + f"/portal/vms/{vm_id}")
        _choose_plan(page, "kvm-host")

        # ---- start on the KVM host; the state changes on the page without a reload
        page.evaluate("window.__sameDocument = true")
        page.click('[data-vm-action="start"]')
        expect(page.locator(f'h1 [data-vm-state="{vm_id}"]')).to_have_text("up")
        expect(page.locator(f'dd[data-vm-host="{vm_id}"]')).to_have_text("kvm-host")
        expect(page.locator('table[data-events] tbody')).to_contain_text("VM e2e-web is up")
        assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        expect(page.locator('[data-vm-action="stop"]')).to_be_enabled()
        expect(page.locator('[data-vm-action="start"]')).to_be_disabled()
        expect(page.locator("[data-devices-source]")).to_have_attribute("data-devices-source", "live")
        shots.take("vm-running")
        page.click('[data-vm-action="pause"]')
        expect(page.locator(f'h1 [data-vm-state="{vm_id}"]')).to_have_text("paused")
        expect(page.locator('[data-vm-action="resume"]')).to_be_enabled()
        page.click('[data-vm-action="resume"]')
        expect(page.locator(f'h1 [data-vm-state="{vm_id}"]')).to_have_text("up")
        assert page.evaluate("window.__sameDocument") is True
        # ---- Migrate (issue 13): libvirt's test driver has no migration: its reason is shown, the VM stays here
        page.click('[data-vm-action="migrate"]')
        banner = page.locator("#vm > [data-action-error]")
        expect(banner).to_contain_text("virDomainMigrateToURI3")
        expect(page.locator(f'h1 [data-vm-state="{vm_id}"]')).to_have_text("up")
        expect(page.locator(f'dd[data-vm-host="{vm_id}"]')).to_have_text("kvm-host")

        # ---- the VM list with filters
        page.goto(base + "/portal/vms")
        page.select_option("#f-state", "up")
        page.fill("#f-host", "kvm-host")
        page.click("form.filters button[type=submit]")
        row = page.locator(f'tr[data-vm-row="{vm_id}"]')
        expect(row).to_contain_text("e2e-web")
        expect(row.locator(".state")).to_have_text("up")
        expect(page.locator("#vm-count")).to_contain_text("match")
        shots.take("vms-filtered")

        # ---- consoles of the test-driver VM: no VNC server there (said so), the serial log page
        page.goto(base + f"/portal/vms/{vm_id}/console")
        expect(page.locator("#vnc-unavailable")).to_contain_text("no VNC port")
        shots.take("vm-console-test-driver")
        page.goto(base + f"/portal/vms/{vm_id}/serial")
        expect(page.locator("#serial-log")).to_be_visible()
        shots.take("vm-serial")

        # ---- power off, live again
        page.goto(base + f"/portal/vms/{vm_id}")
        page.evaluate("window.__sameDocument = true")
        page.click('[data-vm-action="stop"]')
        expect(page.locator(f'h1 [data-vm-state="{vm_id}"]')).to_have_text("down")
        assert page.evaluate("window.__sameDocument") is True
        shots.take("vm-stopped")
        page.goto(base + "/portal/events")
        expect(page.locator("table[data-events]")).to_contain_text("VM e2e-web")
        shots.take("events")
        page.goto(base + "/portal/")
        shots.take("dashboard-after")
        print(f"portal walk (test driver): {time.monotonic() - t0:.1f} s")
    finally:
        extra.stop()


def test_host_deploy_over_ssh_from_the_form(engine: AllInOne, page: Page, shots: Shots) -> None:
    """The Add host form's SSH mode: its own fields, the body the API takes, and a deploy that fails (nobody
    listens on the port) reported next to the address it could not reach."""
    info = engine.info
    base = info["url"]
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    page.goto(base + "/portal/hosts/new")
    if "/portal/login" in page.url:  # run alone: not logged in by the walk
        page.fill("#username", "admin")
        page.fill("#password", info["password"])
        page.click("button[type=submit]")
        expect(page.locator("h1")).to_have_text("Add a host")
    expect(page.locator("#h-url")).to_be_visible()
    expect(page.locator("#h-ssh-address")).to_be_hidden()
    page.check('input[name="mode"][value="ssh"]')
    expect(page.locator("#h-url")).to_be_hidden()
    expect(page.locator("#h-ssh-address")).to_be_visible()
    shots.take("host-add-ssh")
    page.fill("#h-name", "ssh-nowhere")
    page.fill("#h-ssh-address", "127.0.0.1")
    page.fill("#h-ssh-port", str(closed))
    page.fill("#h-ssh-password", "secret")
    page.check('input[name="allow_tcg"]')
    page.click("#host-form button[type=submit]")
    # a password goes only to a host whose key is known: refused next to the fingerprint, nothing added
    fp_error = page.locator('.field-error[data-error-for="ssh.host_key_fingerprint"]')
    expect(fp_error).to_contain_text("trust_on_first_use")
    page.check('input[name="ssh_trust_on_first_use"]')
    page.click("#host-form button[type=submit]")
    error = page.locator('.field-error[data-error-for="ssh.address"]')
    expect(error).to_contain_text("cannot reach 127.0.0.1")
    assert page.locator("#h-ssh-address").get_attribute("aria-invalid") == "true"
    shots.take("host-add-ssh-unreachable", expect_errors=True)
    with engine.api() as api:
        hosts = api.get("/hosts", params={"limit": 1000}).json()["items"]
        failed = next(h for h in hosts if h["name"] == "ssh-nowhere")
        assert failed["state"] in ("unreachable", "non_operational"), failed
        assert api.delete(f"/hosts/{failed['id']}").status_code == 204


def test_portal_console_on_a_real_vnc_server(engine: AllInOne, page: Page, shots: Shots,
                                             qemu_host: concurrent.futures.Future[QemuHost | str]) -> None:
    """noVNC connected through the engine's console WebSocket, relayed by the agent to the VNC server of a VM on
    the QEMU lab (listening on the loopback only); then the serial terminal through the same relay."""
    t0 = time.monotonic()
    host = qemu_host.result(timeout=900)
    if isinstance(host, str):
        unavailable(f"no real VNC server here: {host}")
    with engine.api() as api:
        _real_console(page, shots, api, engine.info["url"], host)
    print(f"console on the QEMU lab: {time.monotonic() - t0:.1f} s")


def test_logout(engine: AllInOne, page: Page, shots: Shots) -> None:
    base = engine.info["url"]
    page.goto(base + "/portal/")
    page.click("text=Log out")
    expect(page).to_have_url(re.compile(r"/portal/login"))
    page.goto(base + "/portal/vms")
    expect(page).to_have_url(re.compile(r"/portal/login\?next="))
    shots.take("logged-out")


def _real_console(page: Page, shots: Shots, api: Any, base: str, qemu: QemuHost) -> None:
    import libvirt

    task = api.post("/hosts", json={"url": qemu.agent.url, "token": qemu.agent.token, "name": "qemu-lab"}).json()
    task = wait_task(api, task)
    assert task["state"] == "succeeded", task
    assert task["result"]["state"] == "up", task
    lab = qemu.lab
    spec = {"name": f"e2e-vnc-{int(time.time()) % 100000}", "memory_mib": 192, "vcpus": 1,
            "kernel": str(lab.kernel), "initrd": str(lab.initrd), "cmdline": "console=ttyS0 panic=-1",
            "consoles": [{"kind": "serial"}], "nics": [{"source": qemu.bridge}],
            "graphics": {"type": "vnc", "listen": "127.0.0.1"}, "on_reboot": "destroy"}
    resp = api.post("/vms", json=spec)
    assert resp.status_code == 201, resp.text
    vm = resp.json()
    try:
        page.goto(base + f"/portal/vms/{vm['id']}")
        plan = _choose_plan(page, "qemu-lab")
        assert plan["graphics.type"] == "native", plan
        page.click('[data-vm-action="start"]')
        expect(page.locator(f'h1 [data-vm-state="{vm["id"]}"]')).to_have_text("up", timeout=90_000)
        shots.take("qemu-vm-running")
        page.click("text=Console")
        status = page.locator("#vnc-status")
        expect(status).to_have_attribute("data-state", "connected", timeout=30_000)
        canvas = page.locator("#vnc-screen canvas")
        expect(canvas).to_be_visible()
        size = canvas.evaluate("c => [c.width, c.height]")
        assert size[0] >= 320 and size[1] >= 200, size
        page.wait_for_timeout(1500)  # let the first frame paint for the screenshot
        shots.take("qemu-vm-console")
        # the serial terminal (xterm.js) through the same relay: the guest's ticks come, keys go
        page.click("text=Serial terminal")
        expect(page.locator("#term-status")).to_have_attribute("data-state", "connected", timeout=30_000)
        text = page.locator(".xterm-rows") if page.locator("#terminal").get_attribute("data-xterm") \
            else page.locator("#terminal-text")
        expect(text).to_contain_text("CORRAL-GUEST-TICK", timeout=30_000)
        shots.take("qemu-vm-terminal")
        page.goto(base + f"/portal/vms/{vm['id']}/serial")
        expect(page.locator("#serial-log")).to_contain_text("CORRAL-GUEST-UP", timeout=60_000)
        shots.take("qemu-vm-serial")
        page.goto(base + f"/portal/vms/{vm['id']}")
        page.click('[data-vm-action="stop"]')
        expect(page.locator(f'h1 [data-vm-state="{vm["id"]}"]')).to_have_text("down", timeout=60_000)
        shots.take("qemu-vm-stopped")
    finally:
        state = api.get(f"/vms/{vm['id']}").json().get("state")
        if state not in ("down", "crashed"):
            wait_task(api, api.post(f"/vms/{vm['id']}/stop").json())
        assert api.delete(f"/vms/{vm['id']}").status_code == 204
        conn = libvirt.open(lab.uri)
        try:
            assert vm["id"] not in {d.UUIDString() for d in conn.listAllDomains(0)}
        finally:
            conn.close()
