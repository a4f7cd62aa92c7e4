"""`corral xml import|render|plan|matrix` as operators run them: the console script, in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from lxml import etree

from corral.domain.flavors import all_flavors, get_flavor
from corral.domain.render import plan
from corral.domain.spec import GuestType, parse_spec

from .support import CORRAL, FIXTURES, REPO, assert_schema_valid, needs_validator, parse

pytestmark = pytest.mark.skipif(not CORRAL.exists(), reason=f"no corral console script at {CORRAL}")

KVM_XML = FIXTURES / "kvm-virtio-guest.xml"
CAPABILITIES = REPO / "docs" / "capabilities.md"


def corral(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CORRAL), *map(str, args)], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)


def write_spec(tmp_path: Path, **changes: object) -> Path:
    data = {"name": "cli", "memory_mib": 512, "kernel": "/boot/vmlinuz",
            "disks": [{"source": "/srv/cli.img"}], "nics": [{"source": "br0"}], **changes}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(data))
    return path


@needs_validator
def test_import_output_feeds_render_as_is() -> None:
    imported = corral("xml", "import", KVM_XML)
    assert imported.returncode == 0, imported.stderr
    # nothing to warn about but the CD-ROM's slot (hdc becomes hda: Corral numbers a bus's disks in order) and the
    # VNC's public listen (consoles listen on the loopback, relayed by the agent: issue 14)
    lines = imported.stderr.splitlines()
    assert lines[0].startswith("warning: devices/disk[3]/target/@dev: ") and len(lines) == 2, lines
    assert lines[1].startswith("warning: devices/graphics[1]/@listen: listen '0.0.0.0' -> '127.0.0.1'"), lines
    spec = parse_spec(json.loads(imported.stdout))
    assert spec.name == parse(KVM_XML.read_text()).findtext("name")

    for guest_type in ("hvm", "pv"):
        extra = ["--guest-type", guest_type]
        stdin = imported.stdout
        if guest_type == "pv":  # PV needs a kernel or a bootloader: say so first, then give one
            refused = corral("xml", "render", "-", "--flavor", "xen", *extra, stdin=stdin)
            assert refused.returncode == 2 and "kernel" in refused.stderr and refused.stdout == ""
            stdin = json.dumps({**json.loads(stdin), "bootloader": "pygrub"})
        rendered = corral("xml", "render", "-", "--flavor", "xen", *extra, stdin=stdin)
        assert rendered.returncode == 0, rendered.stderr
        assert_schema_valid(rendered.stdout)
        root = parse(rendered.stdout)
        assert [s.get("file") or s.get("dev") for s in root.iterfind("devices/disk/source")] == [
            d.source for d in spec.disks if d.source]


@needs_validator
def test_shell_pipe_import_to_render(tmp_path: Path) -> None:
    out = tmp_path / "domain.xml"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f'"{CORRAL}" xml import "{KVM_XML}" | "{CORRAL}" xml render - '
                                         f'--flavor kvm > "{out}"'],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert_schema_valid(out.read_text())


def test_import_yaml_feeds_render(tmp_path: Path) -> None:
    imported = corral("xml", "import", KVM_XML, "--output", "yaml")
    assert imported.returncode == 0, imported.stderr
    data = yaml.safe_load(imported.stdout)
    assert parse_spec(data).name == "web01"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(imported.stdout)
    rendered = corral("xml", "render", spec_file, "--flavor", "kvm")
    assert rendered.returncode == 0, rendered.stderr
    assert parse(rendered.stdout).findtext("name") == "web01"


def test_import_warnings_go_to_stderr_spec_to_stdout(tmp_path: Path) -> None:
    root = parse(KVM_XML.read_text())
    devices = root.find("devices")
    rbd = parse("<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
                "<source protocol='rbd' name='pool/image'><host name='mon1'/></source>"
                "<target dev='vdc' bus='virtio'/></disk>")
    devices.insert(2, rbd)
    path = tmp_path / "rbd.xml"
    path.write_bytes(etree.tostring(root))
    proc = corral("xml", "import", path)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.splitlines()
    assert any(w.startswith("warning: devices/disk[2]:") and "network" in w for w in warnings), warnings
    spec = parse_spec(json.loads(proc.stdout))
    assert "pool/image" not in proc.stdout and len(spec.disks) == 3


@pytest.mark.parametrize(("content", "names"), [
    ("<domain><name>x</name>", "xml"),
    ("<domain type='kvm'><name>x</name><os><type>hvm</type></os></domain>", "memory"),
    ("<network><name>x</name></network>", "<network>"),
    ("<domain type='kvm'><name>x</name><memory>lots</memory><os><type>hvm</type></os></domain>", "memory"),
])
def test_import_invalid_xml_exits_2_naming_the_element(tmp_path: Path, content: str, names: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(content)
    proc = corral("xml", "import", path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error:") and names in proc.stderr


def test_import_missing_file_exits_2(tmp_path: Path) -> None:
    proc = corral("xml", "import", tmp_path / "nope.xml")
    assert proc.returncode == 2 and "nope.xml" in proc.stderr


@pytest.mark.parametrize(("changes", "fields"), [
    ({"memory_mib": 0}, ["memory_mib"]),
    ({"nics": [{"source": "br0", "mac": "zz:16:3e:00:00:01"}], "name": "has space"}, ["nics.0.mac", "name"]),
    ({"max_vcpus": 1, "vcpus": 2}, ["max_vcpus"]),
    ({"disks": [{"source": "relative.img"}]}, ["disks.0.source"]),
])
def test_render_invalid_spec_exits_2_naming_the_fields(tmp_path: Path, changes: dict[str, object],
                                                      fields: list[str]) -> None:
    spec = write_spec(tmp_path, **changes)
    proc = corral("xml", "render", spec, "--flavor", "xen")
    assert proc.returncode == 2, proc.stdout
    assert proc.stdout == ""
    for field in fields:
        assert f"{field}: " in proc.stderr


def test_plan_invalid_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    proc = corral("xml", "plan", write_spec(tmp_path, on_poweroff="coredump-restart"), "--flavor", "kvm")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "on_poweroff: " in proc.stderr


def test_render_refused_settings_exit_2_naming_each_field(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, disks=[{"source": "/srv/fd.img", "device": "floppy"}],
                      nics=[{"source": "br0", "filter": "clean-traffic"}], on_crash="preserve")
    proc = corral("xml", "render", spec, "--flavor", "xen", "--guest-type", "pv")
    assert proc.returncode == 2
    assert proc.stdout == "", "nothing is rendered when anything is refused"
    for field in ("disks.0.device", "nics.0.filter", "on_crash"):
        assert f"{field}: " in proc.stderr
    assert corral("xml", "render", spec, "--flavor", "kvm").returncode == 0


def test_bad_options_exit_2(tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    unknown = corral("xml", "render", spec, "--flavor", "vmware")
    assert unknown.returncode == 2 and "--flavor" in unknown.stderr
    bad_guest = corral("xml", "render", spec, "--flavor", "xen", "--guest-type", "paravirt")
    assert bad_guest.returncode == 2 and "guest-type" in bad_guest.stderr
    bad_accel = corral("xml", "render", spec, "--flavor", "kvm", "--accel", "hax")
    assert bad_accel.returncode == 2 and "--accel" in bad_accel.stderr
    not_a_spec = tmp_path / "junk.json"
    not_a_spec.write_text("[1, 2")
    junk = corral("xml", "render", not_a_spec, "--flavor", "kvm")
    assert junk.returncode == 2 and "junk.json" in junk.stderr


def test_plan_json_lists_the_decisions(tmp_path: Path) -> None:
    spec = parse_spec({"name": "cli", "memory_mib": 512, "disks": [{"source": "/srv/a.img", "bus": "virtio"}],
                       "nics": [{"source": "br0", "model": "virtio", "link": "down"}]})
    path = tmp_path / "spec.json"
    path.write_text(spec.model_dump_json())  # with its device ids: generated MACs derive from them
    proc = corral("xml", "plan", path, "--flavor", "xen", "--guest-type", "hvm", "--output", "json")
    assert proc.returncode == 0, proc.stderr
    decisions = json.loads(proc.stdout)
    assert decisions == [d.as_dict() for d in plan(spec, get_flavor("xen"), GuestType.HVM)]
    outcomes = {d["path"]: d["outcome"] for d in decisions}
    assert outcomes["disks.0.bus"] == outcomes["nics.0.model"] == outcomes["nics.0.link"] == "translated"

    table = corral("xml", "plan", path, "--flavor", "xen", "--guest-type", "hvm")
    assert table.returncode == 0 and "translated" in table.stdout and "nics.0.link" in table.stdout


def test_plan_with_refusals_prints_them_and_exits_2(tmp_path: Path) -> None:
    path = write_spec(tmp_path, graphics={"type": "spice"})
    proc = corral("xml", "plan", path, "--flavor", "xen", "--guest-type", "pv", "--output", "json")
    assert proc.returncode == 2
    refused = [d for d in json.loads(proc.stdout) if d["outcome"] == "refused"]
    assert [d["path"] for d in refused] == ["graphics.type"]
    assert "graphics.type: " in proc.stderr


def test_matrix_markdown_is_docs_capabilities_md() -> None:
    proc = subprocess.run([str(CORRAL), "xml", "matrix", "--output", "markdown"], capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == 0
    assert proc.stdout == CAPABILITIES.read_bytes(), (
        "docs/capabilities.md is stale: regenerate it with `corral xml matrix --output markdown`")
    default = subprocess.run([str(CORRAL), "xml", "matrix"], capture_output=True, timeout=60, check=False)
    assert default.stdout == proc.stdout


def test_matrix_json_holds_every_flavor_table() -> None:
    proc = corral("xml", "matrix", "--output", "json")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    flavors = all_flavors()
    assert len(data["columns"]) == sum(len(f.guest_types) for f in flavors)
    rows = {r["feature"]: r["cells"] for r in data["rows"]}
    columns = iter(data["columns"])
    for flavor in flavors:
        for gt in flavor.guest_types:
            column = next(columns)
            for feature in flavor.features():
                rule = flavor.rule(feature, gt)
                assert rows[feature][column] == {"outcome": rule.outcome.value, "value": rule.value,
                                                 "reason": rule.reason}
