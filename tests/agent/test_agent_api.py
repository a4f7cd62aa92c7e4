"""Every endpoint of docs/agent-api.md, in-process, against libvirt's test driver, on each host kind.

The ``api`` fixture runs each test three times: the plain test driver (presented as itself, KVM flavor under
TCG), and the test driver emulating a Xen dom0 and a KVM host (``Settings(emulate=...)``). What libvirt
holds is checked on the agent's own connection: a private test driver has no other view.
"""

from __future__ import annotations

import uuid
from typing import Any

import libvirt
import pytest
from lxml import etree

from corral.domain import config as cfg
from corral.domain.config import CORRAL_NS
from corral.domain.read import read_metadata

from .conftest import BRIDGE, Api, spec

DOMAIN_TYPE = {None: "qemu", "xen": "xen", "kvm": "kvm"}  # test driver = KVM flavor under TCG


def libvirt_state(api: Api, vm_id: str) -> int:
    return int(api.conn().lookupByUUIDString(vm_id).state()[0])


def domain_names(api: Api) -> set[str]:
    return {d.name() for d in api.conn().listAllDomains(0)}


# ---- host ----------------------------------------------------------------------------------------------


def test_health_answers_without_token(api: Api) -> None:
    body = api.get("/v1/health", auth=False, expect=200).json()
    assert body["status"] == "ok" and body["libvirt"] is True and body["version"]


def test_host_describes_the_hypervisor_and_passes_the_hardware_check(api: Api) -> None:
    host = api.get("/v1/host", expect=200).json()
    emulate = api.agent.settings.emulate
    assert host["hypervisor"] == (emulate or "test")
    assert host["emulated"] is True
    assert host["flavor"] == ("xen" if emulate == "xen" else "kvm")
    assert host["accel"] == {None: "tcg", "xen": None, "kvm": "kvm"}[emulate]
    sources = {d["source"]: d["value"] for d in host["detection"]}
    assert sources["libvirt getType()"] == "TEST"
    if emulate:
        assert sources["--emulate"] == emulate
    assert host["cpu"]["count"] == 4 and host["memory_mib"] == 8192
    assert isinstance(host["numa_cells"], list)  # a node file has none; test:///default has two (test_recovery)
    assert BRIDGE in host["bridges"]
    assert host["libvirt_version"].count(".") == 2
    check = host["hardware_check"]
    assert check["ok"] is True, check
    assert {"emulated", "bridge"} <= {i["name"] for i in check["items"]}
    caps = host["capabilities"]
    if emulate == "xen":
        assert set(caps["floppy"]) == {"pv", "pvh", "hvm"}
        assert caps["floppy"]["hvm"]["outcome"] == "refused"
        assert caps["graphics.password"]["hvm"]["value"] == "relay"
    else:
        assert caps["floppy"]["hvm"]["outcome"] == "native"


def test_host_stats_count_the_vms(api: Api) -> None:
    before = api.get("/v1/host/stats", expect=200).json()
    assert before["cpu"]["count"] == 4
    assert before["memory"]["total_mib"] == 8192
    assert before["vms"] == {"total": 0, "running": 0, "memory_mib": 0, "vcpus": 0}
    api.create(spec(memory_mib=300, vcpus=2), start=True)
    api.create(spec(memory_mib=128))
    after = api.get("/v1/host/stats", expect=200).json()
    assert after["vms"] == {"total": 2, "running": 1, "memory_mib": 300, "vcpus": 2}


# ---- create, read, list, plan ---------------------------------------------------------------------------


def test_create_stores_the_spec_in_libvirt_and_reads_devices_back(api: Api) -> None:
    data = spec(description="made by a test")
    info = api.create(data)
    assert info["id"] == data["id"] and info["name"] == data["name"]
    assert info["state"] == "down" and info["libvirt_state"] == "shutoff" and info["domain_id"] is None
    assert info["external"] is False and info["memory_mib"] == 256 and info["vcpus"] == 1
    assert info["spec"]["disks"][0]["source"] == data["disks"][0]["source"]
    # generated MACs are kept in the spec, in the flavor's vendor prefix
    prefix = "00:16:3e" if api.agent.settings.emulate == "xen" else "52:54:00"
    assert info["spec"]["nics"][0]["mac"].startswith(prefix)
    ids = {d["id"]: d for d in api.get(f"/v1/vms/{data['id']}").json()["devices"] if d["id"]}
    assert ids[data["disks"][0]["id"]]["kind"] == "disk"
    assert ids[data["disks"][0]["id"]]["source"] == data["disks"][0]["source"]
    assert ids[data["nics"][0]["id"]]["kind"] == "nic"
    assert ids[data["nics"][0]["id"]]["source"] == BRIDGE
    # libvirt is the source of truth: the spec lives in the domain's <metadata>
    dom = api.conn().lookupByUUIDString(data["id"])
    root = etree.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    assert root.get("type") == DOMAIN_TYPE[api.agent.settings.emulate]
    assert root.find(f"metadata/{{{CORRAL_NS}}}vm/{{{CORRAL_NS}}}spec") is not None
    assert root.findtext("description") == "made by a test"
    assert not dom.isActive()


def test_get_and_list(api: Api) -> None:
    a = api.create(spec(), start=True)
    b = api.create(spec())
    items = {v["id"]: v for v in api.get("/v1/vms", expect=200).json()["items"]}
    assert set(items) == {a["id"], b["id"]}
    assert items[a["id"]]["state"] == "up" and items[b["id"]]["state"] == "down"
    assert all("devices" not in v for v in items.values())
    assert items[a["id"]]["spec"]["name"] == a["name"]
    one = api.get(f"/v1/vms/{a['id']}", expect=200).json()
    assert one["state"] == "up" and isinstance(one["domain_id"], int) and one["devices"]
    for key in ("id", "name", "state", "libvirt_state", "reason", "external", "domain_id", "memory_mib",
                "vcpus", "stats", "spec"):
        assert key in one


def test_create_and_start_in_one_call(api: Api) -> None:
    info = api.create(spec(), start=True)
    assert info["state"] == "up" and info["libvirt_state"] == "running"
    assert libvirt_state(api, info["id"]) == libvirt.VIR_DOMAIN_RUNNING


def test_plan_changes_nothing(api: Api) -> None:
    data = spec(disks=[{"source": "/images/a.qcow2", "format": "qcow2", "bus": "virtio"}])
    plan = api.post("/v1/vms/plan", json=data, expect=200).json()
    assert plan["ok"] is True
    assert plan["flavor"] == ("xen" if api.agent.settings.emulate == "xen" else "kvm")
    assert plan["guest_type"] == "hvm"
    bus = next(d for d in plan["decisions"] if d["path"] == "disks.0.bus")
    if api.agent.settings.emulate == "xen":
        assert bus["outcome"] == "translated" and "ide" in bus["detail"]
    else:
        assert bus["outcome"] == "native"
    assert domain_names(api) == set()


def test_plan_shows_refusals(api: Api) -> None:
    data = spec(disks=[{"source": "/images/floppy.img", "device": "floppy"}])
    plan = api.post("/v1/vms/plan", json=data, expect=200).json()
    floppy = next(d for d in plan["decisions"] if d["path"] == "disks.0.device")
    if api.agent.settings.emulate == "xen":
        assert plan["ok"] is False and floppy["outcome"] == "refused" and "floppy" in floppy["detail"]
    else:
        assert plan["ok"] is True and floppy["outcome"] == "native"
    assert domain_names(api) == set()


# ---- lifecycle ---------------------------------------------------------------------------------------------


def test_full_lifecycle(api: Api) -> None:
    vm_id = api.create(spec())["id"]
    url = f"/v1/vms/{vm_id}"
    info = api.post(f"{url}/start", expect=200).json()
    assert info["state"] == "up" and isinstance(info["domain_id"], int)
    assert libvirt_state(api, vm_id) == libvirt.VIR_DOMAIN_RUNNING
    assert api.post(f"{url}/pause", expect=200).json()["state"] == "paused"
    assert libvirt_state(api, vm_id) == libvirt.VIR_DOMAIN_PAUSED
    assert api.get(url, expect=200).json()["libvirt_state"] == "paused"
    assert api.post(f"{url}/resume", expect=200).json()["state"] == "up"
    assert libvirt_state(api, vm_id) == libvirt.VIR_DOMAIN_RUNNING
    assert api.post(f"{url}/reboot", expect=200).json()["state"] == "up"
    info = api.post(f"{url}/shutdown", json={"timeout": 5}, expect=200).json()
    assert info["state"] == "down" and info["stopped_by"] == "shutdown"
    assert libvirt_state(api, vm_id) == libvirt.VIR_DOMAIN_SHUTOFF
    assert api.post(f"{url}/start", expect=200).json()["state"] == "up"
    info = api.post(f"{url}/destroy", expect=200).json()
    assert info["state"] == "down" and info["domain_id"] is None
    assert libvirt_state(api, vm_id) == libvirt.VIR_DOMAIN_SHUTOFF
    assert api.delete(url, expect=204).content == b""
    api.get(url, expect=404)
    with pytest.raises(libvirt.libvirtError):
        api.conn().lookupByUUIDString(vm_id)
    assert api.get("/v1/vms", expect=200).json()["items"] == []


def test_shutdown_without_a_body_and_with_force(api: Api) -> None:
    vm_id = api.create(spec(), start=True)["id"]
    info = api.post(f"/v1/vms/{vm_id}/shutdown", json={"timeout": 2, "force": True}, expect=200).json()
    assert info["state"] == "down" and info["stopped_by"] == "shutdown"
    api.post(f"/v1/vms/{vm_id}/start", expect=200)
    assert api.post(f"/v1/vms/{vm_id}/shutdown", expect=200).json()["state"] == "down"


def test_memory_and_vcpus(api: Api) -> None:
    data = spec(memory_mib=256, max_memory_mib=512, vcpus=1, max_vcpus=3)
    vm_id = api.create(data, start=True)["id"]
    info = api.put(f"/v1/vms/{vm_id}/memory", json={"memory_mib": 384}, expect=200).json()
    assert info["memory_mib"] == 384 and info["spec"]["memory_mib"] == 384
    dom = api.conn().lookupByUUIDString(vm_id)
    assert dom.info()[2] == 384 * 1024  # the live balloon target
    info = api.put(f"/v1/vms/{vm_id}/vcpus", json={"vcpus": 3}, expect=200).json()
    assert info["vcpus"] == 3 and info["spec"]["vcpus"] == 3
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE) == 3
    # the persistent definition follows: the spec in <metadata> was re-rendered
    persistent = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    stored = read_metadata(cfg.Domain.from_xml(persistent))
    assert stored is not None and stored.spec.memory_mib == 384 and stored.spec.vcpus == 3


def test_console_log(api: Api) -> None:
    console_id = str(uuid.uuid4())
    data = spec(consoles=[{"id": console_id, "kind": "serial"}])
    vm_id = api.create(data, start=True)["id"]
    body = api.get(f"/v1/vms/{vm_id}/console", expect=200).json()
    assert body["log"] == ""  # nothing runs on the test driver, so nothing was logged
    if api.agent.settings.emulate == "xen":
        # an HVM guest's serial console is a file the agent reads (libxl has no <log> on consoles)
        assert body["path"].endswith(f"/{data['name']}-{console_id}.log")
    api.get(f"/v1/vms/{vm_id}/console?tail=0", expect=422)


def test_xen_pv_console_log_is_read_from_xenconsoled(agent_factory: Any, tmp_path: Any) -> None:
    console_dir = tmp_path / "xen-console"
    console_dir.mkdir()
    api = Api(agent_factory("xen", xen_console_dir=console_dir))
    data = spec(name="xc1", guest_type="pv", kernel="/boot/vmlinuz-xen", consoles=[{"kind": "pv"}])
    info = api.create(data, start=True)
    (console_dir / "guest-xc1.log").write_text("early line\n" + "x" * 100 + "\nCORRAL-GUEST-UP\n")
    body = api.get(f"/v1/vms/{info['id']}/console?tail=16", expect=200).json()
    assert body["log"] == "CORRAL-GUEST-UP\n" and body["path"] == str(console_dir / "guest-xc1.log")


# ---- devices ------------------------------------------------------------------------------------------------


def test_hotplug_and_unplug_on_a_stopped_vm_change_the_definition(api: Api) -> None:
    vm_id = api.create(spec())["id"]
    disk_id, nic_id = str(uuid.uuid4()), str(uuid.uuid4())
    info = api.post(f"/v1/vms/{vm_id}/devices", json={"disk": {"id": disk_id, "source": "/images/extra.raw"}},
                    expect=200).json()
    dev = next(d for d in info["devices"] if d["id"] == disk_id)
    assert dev["source"] == "/images/extra.raw" and dev["matched_by"] == "alias"
    info = api.post(f"/v1/vms/{vm_id}/devices", json={"nic": {"id": nic_id, "source": BRIDGE}},
                    expect=200).json()
    nic = next(d for d in info["devices"] if d["id"] == nic_id)
    assert nic["mac"].startswith("00:16:3e" if api.agent.settings.emulate == "xen" else "52:54:00")
    xml = api.conn().lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "/images/extra.raw" in xml and nic["mac"] in xml
    # the same device twice is a conflict, not a second copy
    api.post(f"/v1/vms/{vm_id}/devices", json={"disk": {"id": disk_id, "source": "/images/extra.raw"}},
             expect=409)
    info = api.delete(f"/v1/vms/{vm_id}/devices/{disk_id}", expect=200).json()
    assert disk_id not in {d["id"] for d in info["devices"]}
    assert disk_id not in {d["id"] for d in info["spec"]["disks"]}
    xml = api.conn().lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "/images/extra.raw" not in xml
    api.delete(f"/v1/vms/{vm_id}/devices/{disk_id}", expect=404)


def test_cdrom_media_change_on_a_stopped_vm(api: Api) -> None:
    cd_id = str(uuid.uuid4())
    vm_id = api.create(spec(disks=[{"id": cd_id, "device": "cdrom"}]))["id"]
    info = api.patch(f"/v1/vms/{vm_id}/devices/{cd_id}", json={"media": "/isos/install.iso"}, expect=200).json()
    cd = next(d for d in info["devices"] if d["id"] == cd_id)
    assert cd["source"] == "/isos/install.iso" and cd["kind"] == "cdrom"
    info = api.patch(f"/v1/vms/{vm_id}/devices/{cd_id}", json={"media": None}, expect=200).json()
    assert next(d for d in info["devices"] if d["id"] == cd_id)["source"] is None
    api.patch(f"/v1/vms/{vm_id}/devices/{cd_id}", json={"media": 5}, expect=422)
    api.patch(f"/v1/vms/{vm_id}/devices/{cd_id}", json={"link": "down"}, expect=422)


def test_nic_link_on_a_stopped_vm(api: Api) -> None:
    data = spec()
    nic_id = data["nics"][0]["id"]
    vm_id = api.create(data)["id"]
    info = api.patch(f"/v1/vms/{vm_id}/devices/{nic_id}", json={"link": "down"}, expect=200).json()
    assert info["spec"]["nics"][0]["link"] == "down"
    assert next(d for d in info["devices"] if d["id"] == nic_id)["link"] == "down"
    xml = api.conn().lookupByUUIDString(vm_id).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    if api.agent.settings.emulate == "xen":
        assert "<link" not in xml  # libxl ignores <link state>; the agent sets vifD.N down itself
    else:
        assert "<link state='down'/>" in xml
    api.patch(f"/v1/vms/{vm_id}/devices/{nic_id}", json={"link": "sideways"}, expect=422)


def test_live_device_changes_the_driver_cannot_do_are_refused_and_not_half_applied(api: Api) -> None:
    """The test driver has no live device update: 409 unsupported, and the definition is unchanged."""
    cd_id = str(uuid.uuid4())
    data = spec(disks=[{"id": cd_id, "device": "cdrom", "source": "/isos/a.iso"}])
    vm_id = api.create(data, start=True)["id"]
    dom = api.conn().lookupByUUIDString(vm_id)
    before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    body = api.patch(f"/v1/vms/{vm_id}/devices/{cd_id}", json={"media": "/isos/b.iso"}, expect=409).json()
    assert body["code"] == "unsupported" and "CD-ROM" in body["message"]
    body = api.post(f"/v1/vms/{vm_id}/devices", json={"disk": {"source": "/images/hot.raw"}}, expect=409).json()
    assert body["code"] == "unsupported"
    nic_id = data["nics"][0]["id"]
    body = api.patch(f"/v1/vms/{vm_id}/devices/{nic_id}", json={"link": "down"}, expect=409).json()
    assert body["code"] == "unsupported"
    if api.agent.settings.emulate == "xen":  # libxl ignores <link>; the agent would set vifD.N, absent here
        assert "emulated" in body["message"]
    body = api.delete(f"/v1/vms/{vm_id}/devices/{nic_id}", expect=409).json()
    assert body["code"] == "unsupported"
    assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == before
    spec_now = api.get(f"/v1/vms/{vm_id}").json()["spec"]
    assert spec_now["disks"][0]["source"] == "/isos/a.iso"
    assert spec_now["nics"][0]["link"] == "up" and len(spec_now["nics"]) == 1


def test_vnc_password(api: Api) -> None:
    data = spec(graphics={"id": str(uuid.uuid4()), "type": "vnc"})
    vm_id = api.create(data)["id"]
    url = f"/v1/vms/{vm_id}/devices/{data['graphics']['id']}"
    dom = api.conn().lookupByUUIDString(vm_id)
    if api.agent.settings.emulate == "xen":
        before = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
        body = api.patch(url, json={"password": "s3cret"}, expect=409).json()
        assert body["code"] == "unsupported" and body["field"] == "password"
        assert "relay" in body["message"] and "not needed" in body["message"]
        assert dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE) == before
        return
    info = api.patch(url, json={"password": "s3cret"}, expect=200).json()
    gfx = next(d for d in info["devices"] if d["kind"] == "graphics")
    assert gfx["password_set"] is True
    secure = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    assert "passwd='s3cret'" in secure
    assert "s3cret" not in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)  # not in <metadata>, which all can read
    # a later re-render of the definition (here: a memory change) keeps the password
    api.put(f"/v1/vms/{vm_id}/memory", json={"memory_mib": 200}, expect=200)
    assert "passwd='s3cret'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    api.patch(url, json={"password": "much-too-long"}, expect=422)


# ---- external domains -------------------------------------------------------------------------------------


def test_domains_the_agent_did_not_create_are_listed_as_external(api: Api) -> None:
    dom_type = DOMAIN_TYPE[api.agent.settings.emulate]
    raw = api.conn().defineXML(
        f"<domain type='{dom_type}'><name>handmade</name><memory unit='MiB'>64</memory>"
        "<os><type>hvm</type></os></domain>")
    items = {v["name"]: v for v in api.get("/v1/vms", expect=200).json()["items"]}
    assert items["handmade"]["external"] is True and items["handmade"]["spec"] is None
    url = f"/v1/vms/{raw.UUIDString()}"
    shown = api.get(url, expect=200).json()
    assert shown["external"] is True and shown["spec"] is None and isinstance(shown["devices"], list)
    body = api.put(f"{url}/memory", json={"memory_mib": 32}, expect=409).json()
    assert "external" in body["message"]


def test_listed_domain_id_follows_a_restart_behind_the_agents_back(api: Api) -> None:
    """The stats cycle keeps a running domain's id between cycles; a lifecycle event makes it read again."""
    from .conftest import wait_for

    vm_id = api.create(spec(), start=True)["id"]
    first = next(v for v in api.get("/v1/vms").json()["items"] if v["id"] == vm_id)["domain_id"]
    dom = api.conn().lookupByUUIDString(vm_id)
    dom.destroy()
    dom.create()  # the test driver gives the new run another domain id
    fresh = api.conn().lookupByUUIDString(vm_id).ID()
    assert fresh != first
    wait_for(lambda: next(v for v in api.get("/v1/vms").json()["items"] if v["id"] == vm_id)["domain_id"] == fresh,
             what="the listed domain id to follow the restart")


def test_create_conflicts_with_domains_defined_behind_the_agents_back(api: Api) -> None:
    """A name or id taken by a domain someone defined with virsh: 409 naming the field, nothing redefined."""
    from corral.domain.flavors import get_flavor
    from corral.domain.render import render
    from corral.domain.spec import VmSpec

    other = VmSpec.model_validate(spec(name="made-by-virsh"))
    dom = api.conn().defineXML(render(other, get_flavor("kvm", accel="tcg")))
    before = dom.XMLDesc(0)
    body = api.post("/v1/vms", json=spec(name="made-by-virsh"), expect=409).json()
    assert body["field"] == "name" and "made-by-virsh" in body["message"]
    body = api.post("/v1/vms", json={**spec(name="another-name"), "id": other.id}, expect=409).json()
    assert body["field"] == "id"
    assert api.conn().lookupByUUIDString(other.id).XMLDesc(0) == before
    assert [d.name() for d in api.conn().listAllDomains(0)].count("another-name") == 0


def test_spec_keeps_its_guest_type_through_changes(agent_factory: Any) -> None:
    """A PV spec run as HVM by a KVM host: the answers and the <metadata> keep the spec's own guest type after
    a change re-renders the definition (the guest type the host chose is apart, in ``guest_type``)."""
    api = Api(agent_factory("kvm"))
    data = spec(guest_type="pv", kernel="/boot/vmlinuz", memory_mib=256, max_memory_mib=512)
    created = api.create(data)
    assert created["spec"]["guest_type"] == "pv" and created["guest_type"] == "hvm"
    changed = api.put(f"/v1/vms/{created['id']}/memory", json={"memory_mib": 384}, expect=200).json()
    assert changed["spec"]["guest_type"] == "pv" and changed["guest_type"] == "hvm"
    assert next(v for v in api.get("/v1/vms").json()["items"] if v["id"] == created["id"])["spec"]["guest_type"] == "pv"
    persistent = api.conn().lookupByUUIDString(created["id"]).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    stored = read_metadata(cfg.Domain.from_xml(persistent))
    assert stored is not None and stored.spec.guest_type.value == "pv"


def test_hot_plug_an_empty_cdrom_into_a_running_xen_pv_guest(agent_factory: Any) -> None:
    """Xen PV has no drive for an empty CD-ROM until media goes in: the plug is saved, nothing attached yet."""
    api = Api(agent_factory("xen"))
    vm_id = api.create(spec(guest_type="pv", kernel="/boot/vmlinuz", nics=[]), start=True)["id"]
    cd_id = str(uuid.uuid4())
    info = api.post(f"/v1/vms/{vm_id}/devices", json={"disk": {"id": cd_id, "device": "cdrom"}}, expect=200).json()
    assert any(d["id"] == cd_id and d["device"] == "cdrom" for d in info["spec"]["disks"])
    assert all(d.get("id") != cd_id for d in info["devices"])  # no drive in the running domain yet
