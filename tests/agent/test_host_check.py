"""The host checks: one implementation for the agent's ``/v1/host`` and the deploy's remote probe.

A fake host tree (``HostProbe.root``) stands in for a dom0: the agent emulating Xen on libvirt's test driver reads
the guest types Xen offers from it (issue 15: HVM was never checked, so an HVM VM could land on a PV-only dom0),
and the deploy's shell probe, run on the same tree, reads the same facts, which the same checks judge alike.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from corral.agent.host import Detection, HostProbe, gather_facts
from corral.agent.service import Agent, Settings
from corral.domain.flavors import get_flavor, hostcheck
from corral.domain.flavors.hostcheck import HostFacts, LibvirtAnswer, Setting
from corral.domain.spec import GuestType
from corral.engine.deploy.probe import parse_probe
from tests.agent.conftest import Api, write_node

PV_ONLY = "xen-3.0-x86_64 xen-3.0-x86_32p"
WITH_HVM = "xen-3.0-x86_64 xen-3.0-x86_32p hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64"


def dom0_tree(root: Path, capabilities: str | None, *, daemons: tuple[str, ...] = ("xenstored", "xenconsoled"),
              ) -> Path:
    """The files of a Xen dom0 that the host checks read, under ``root``."""
    files = {"proc/xen/capabilities": "control_d\n", "sys/hypervisor/type": "xen\n",
             "proc/cpuinfo": "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae\n",
             "usr/lib/x86_64-linux-gnu/libxenlight.so.4.17.0": ""}
    if capabilities is not None:
        files["sys/hypervisor/properties/capabilities"] = capabilities + "\n"
    for n, name in enumerate(daemons):
        files[f"proc/{100 + n}/comm"] = name + "\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "sys/class/net/xenbr0/bridge").mkdir(parents=True)
    (root / "sys/class/net/zz0").mkdir()  # an interface that is no bridge, listed last
    return root


@pytest.fixture
def emulated_xen(tmp_path: Path) -> Iterator[Any]:
    agents: list[Agent] = []

    def make(root: Path) -> Api:
        n = len(agents)
        agent = Agent(Settings(libvirt=write_node(tmp_path / f"node{n}.xml"), emulate="xen",
                               state_dir=tmp_path / f"state{n}"), HostProbe(root))
        agent.start()
        agents.append(agent)
        return Api(agent)

    yield make
    for agent in agents:
        agent.stop()


def test_pv_only_dom0_offers_pv_guests_only(emulated_xen: Any, tmp_path: Path) -> None:
    host = emulated_xen(dom0_tree(tmp_path / "pv-only", PV_ONLY)).get("/v1/host", expect=200).json()
    assert host["guest_types"] == ["pv"]  # PVH runs in an HVM container: no HVM, no PVH either
    check = {i["name"]: i for i in host["hardware_check"]["items"]}
    assert check["guest types"]["ok"] is True  # a PV-only dom0 is a good host for PV guests
    assert "no HVM" in check["guest types"]["detail"] and PV_ONLY in check["guest types"]["detail"]
    assert host["hardware_check"]["ok"] is True


def test_dom0_with_hvm_offers_every_guest_type(emulated_xen: Any, tmp_path: Path) -> None:
    host = emulated_xen(dom0_tree(tmp_path / "hvm", WITH_HVM)).get("/v1/host", expect=200).json()
    assert host["guest_types"] == ["pv", "pvh", "hvm"]
    empty = tmp_path / "nothing"
    empty.mkdir()
    host = emulated_xen(empty).get("/v1/host", expect=200).json()  # an emulation with nothing to say less
    assert host["guest_types"] == ["pv", "pvh", "hvm"]


def test_kvm_hosts_run_hvm(agent_factory: Any) -> None:
    host = Api(agent_factory("kvm")).get("/v1/host", expect=200).json()
    assert host["guest_types"] == ["hvm"]  # pv/pvh specs are translated to HVM by the flavor


def _shell_facts(root: Path) -> HostFacts:
    """The deploy's reading of ``root``: its shell probe, run here, parsed as over SSH."""
    out = subprocess.run(["sh", "-s"], input=hostcheck.probe_script(str(root)), capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return parse_probe(out).facts


@pytest.mark.parametrize("capabilities", [PV_ONLY, WITH_HVM, None], ids=["pv-only", "hvm", "unknown"])
def test_agent_and_deploy_read_the_same_facts_and_judge_them_alike(tmp_path: Path, capabilities: str | None) -> None:
    root = dom0_tree(tmp_path / "dom0", capabilities, daemons=("oxenstored", "xenconsoled", "bash"))
    xen = get_flavor("xen")
    conn = libvirt.open(write_node(tmp_path / "node.xml"))
    try:
        det = Detection("xen", xen, None, False)  # a real dom0 as the agent would detect it
        probe = HostProbe(root)
        agent = gather_facts(det, conn, probe, probe.bridges())
    finally:
        conn.close()
    deploy = _shell_facts(root)
    answer = LibvirtAnswer("xen:///system", True, "Xen 4.17.0")
    assert agent.with_libvirt(answer) == deploy.with_libvirt(answer)
    assert deploy.daemons == {"oxenstored", "xenconsoled"} and deploy.libxl_versions == ("4.17.0",)
    assert deploy.bridges == ("xenbr0",)
    on_agent = hostcheck.evaluate(xen, agent.with_libvirt(answer))
    on_deploy = hostcheck.evaluate(xen, deploy.with_libvirt(answer))
    assert on_agent == on_deploy
    names = [i["name"] for i in on_deploy.items]
    assert names[:3] == ["xen dom0", "hypervisor", "guest types"]
    if capabilities == PV_ONLY:
        assert on_deploy.ok and on_deploy.guest_types == (GuestType.PV,)
    elif capabilities == WITH_HVM:
        assert on_deploy.ok and on_deploy.guest_types == (GuestType.PV, GuestType.PVH, GuestType.HVM)
    else:  # a real dom0 that cannot tell what Xen runs fails loudly rather than accept HVM guests blindly
        failed = [i for i in on_deploy.items if not i["ok"]]
        assert [i["name"] for i in failed] == ["guest types"] and on_deploy.guest_types == ()


def test_xl_virt_caps_is_read_where_sysfs_is_silent() -> None:
    facts = parse_probe("file.xen_caps=control_d\nxl.virt_caps=pv hvm_directio pv_directio hap shadow\n").facts
    assert hostcheck.xen_guest_types(facts) == (GuestType.PV,)  # hvm_directio is not hvm
    facts = parse_probe("file.xen_caps=control_d\nxl.virt_caps=pv hvm hvm_directio hap shadow\n").facts
    assert hostcheck.xen_guest_types(facts) == (GuestType.PV, GuestType.PVH, GuestType.HVM)


def test_kvm_checks_take_tcg_as_a_setting() -> None:
    kvm = get_flavor("kvm")
    facts = HostFacts(kvm=hostcheck.KvmDevice.PRESENT, kvm_detail="Permission denied", bridges=("br0",),
                      libvirt=LibvirtAnswer("qemu:///system", True, "QEMU 7.2.0"))
    strict = hostcheck.evaluate(kvm, facts)
    assert {i["name"]: i["ok"] for i in strict.items} == {"/dev/kvm": False, "cpu virtualization": False,
                                                         "libvirt qemu driver": True, "bridge": True}
    assert "Permission denied" in strict.items[0]["detail"]
    assert hostcheck.evaluate(kvm, facts, Setting(allow_tcg=True)).ok
    usable = HostFacts(kvm=hostcheck.KvmDevice.USABLE, bridges=("br0",), libvirt=facts.libvirt)
    assert hostcheck.evaluate(kvm, usable).ok  # vmx masked (nested) but /dev/kvm creates VMs
