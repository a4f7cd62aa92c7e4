"""corral.agent.startlog: a failed start's error quotes the host's logs (issue 20, item 5), offline.

A temporary directory stands for the host's root (``/var/log/...`` under it), as the agent's
``HostProbe.root`` does in tests; the lines are those libxl wrote on the Xen lab for a PV disk whose path
does not exist (tests/e2e/test_xenlab_errors.py makes libxl write them for real).
"""

from __future__ import annotations

from pathlib import Path

from corral.agent import startlog
from corral.agent.errors import LibvirtFailed
from corral.domain.flavors import get_flavor

DRIVER_LOG = "/var/log/libvirt/libxl/libxl-driver.log"
LIBXL_LINES = (
    "2026-12-07 14:34:50.283+0000: libxl: libxl_device.c:455:libxl__device_disk_set_backend: Disk vdev=xvda "
    "failed to stat: /dev/HostVG/XenGuest2: No such file or directory\n"
    "2026-12-07 14:34:50.285+0000: libxl: libxl_create.c:1318:initiate_domain_create: Domain 1:Unable to set "
    "disk defaults for disk 0\n"
)
LIBVIRT_ERROR = "start guest2: internal error: libxenlight failed to create new domain 'guest2'"


def host_file(root: Path, path: str, text: str = "", append: bool = False) -> Path:
    file = root / path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a" if append else "w") as f:
        f.write(text)
    return file


def test_a_failed_xen_start_names_libxls_cause(tmp_path: Path) -> None:
    xen = get_flavor("xen")
    host_file(tmp_path, DRIVER_LOG, "2026-12-07 14:00:00.000+0000: libxl: an old failure of another domain\n")
    logs = startlog.mark(xen.driver_logs, "guest2", tmp_path)
    host_file(tmp_path, DRIVER_LOG, LIBXL_LINES, append=True)  # what libxl writes during the start
    error = startlog.explain(LibvirtFailed(LIBVIRT_ERROR, libvirt_code=1), logs)
    assert error.message.startswith(LIBVIRT_ERROR)
    assert "failed to stat: /dev/HostVG/XenGuest2: No such file or directory" in error.message
    assert "Unable to set disk defaults" in error.message
    assert DRIVER_LOG in error.message
    assert "an old failure" not in error.message  # only what the start appended
    body = error.body()
    assert body["code"] == "libvirt" and body["message"] == error.message and body["libvirt_code"] == 1
    assert body["host_logs"] == [{"path": DRIVER_LOG, "lines": LIBXL_LINES.splitlines(), "omitted": 0}]
    assert str(error) == error.message


def test_a_shared_log_keeps_the_domains_lines_and_the_errors(tmp_path: Path) -> None:
    logs = startlog.mark([DRIVER_LOG], "web1", tmp_path)  # the log does not exist yet: all of it is new
    host_file(tmp_path, DRIVER_LOG, "libxl: domain web1 is being created\n"
                                    "libxl: everything fine with db7\n"
                                    "libxl: bootloader [412] exited with error status 255\n")
    [excerpt] = logs.excerpts()
    assert excerpt.lines == ("libxl: domain web1 is being created",
                             "libxl: bootloader [412] exited with error status 255")


def test_the_domains_own_log_gives_its_errors_or_else_its_last_lines(tmp_path: Path) -> None:
    own = "/var/log/xen/qemu-dm-{name}.log"
    logs = startlog.mark([own], "hvm1", tmp_path)
    host_file(tmp_path, "/var/log/xen/qemu-dm-hvm1.log",
              "char device redirected to /dev/pts/3\nqemu-system-i386: -drive file=/x.iso: Could not open '/x.iso'\n")
    host_file(tmp_path, "/var/log/xen/qemu-dm-other.log", "qemu-system-i386: error of another domain\n")
    assert [e.lines for e in logs.excerpts()] == [("qemu-system-i386: -drive file=/x.iso: Could not open '/x.iso'",)]
    logs = startlog.mark([own], "hvm2", tmp_path)
    host_file(tmp_path, "/var/log/xen/qemu-dm-hvm2.log", "".join(f"line {i}\n" for i in range(10)))
    assert [e.lines for e in logs.excerpts()] == [("line 7", "line 8", "line 9")]


def test_nothing_appended_leaves_the_error_as_it_was(tmp_path: Path) -> None:
    host_file(tmp_path, DRIVER_LOG, LIBXL_LINES)
    logs = startlog.mark(get_flavor("xen").driver_logs, "guest2", tmp_path)
    error = startlog.explain(LibvirtFailed(LIBVIRT_ERROR), logs)
    assert error.message == LIBVIRT_ERROR and "host_logs" not in error.body()
    # no logs at all (an emulated host, a flavor without driver logs)
    error = startlog.explain(LibvirtFailed(LIBVIRT_ERROR), startlog.mark((), "guest2", tmp_path))
    assert error.message == LIBVIRT_ERROR


def test_the_excerpt_is_capped(tmp_path: Path) -> None:
    logs = startlog.mark([DRIVER_LOG], "big", tmp_path)
    host_file(tmp_path, DRIVER_LOG, "".join(f"libxl: error {i} " + "x" * 1000 + "\n" for i in range(200)))
    [excerpt] = logs.excerpts()
    assert len(excerpt.lines) == startlog.LINES_PER_LOG
    assert all(len(line) <= startlog.LINE_CHARS for line in excerpt.lines)
    # of ~200 KB appended only the last 64 KiB are read, starting at a whole line
    first = int(excerpt.lines[0].split()[2])
    assert first > 100 and excerpt.lines[0].startswith("libxl: error ")
    assert excerpt.omitted == 200 - first - startlog.LINES_PER_LOG
    error = startlog.explain(LibvirtFailed(LIBVIRT_ERROR), logs)
    assert len(error.message) < 5000 and f"(and {excerpt.omitted} more lines)" in error.message


def test_a_log_rotated_during_the_start_is_read_from_its_beginning(tmp_path: Path) -> None:
    host_file(tmp_path, DRIVER_LOG, "libxl: old line\n" * 100)
    logs = startlog.mark([DRIVER_LOG], "guest2", tmp_path)
    host_file(tmp_path, DRIVER_LOG, LIBXL_LINES)  # rotated: a new, shorter file
    assert [e.lines for e in logs.excerpts()] == [tuple(LIBXL_LINES.splitlines())]


def test_kvm_quotes_the_domains_qemu_log(tmp_path: Path) -> None:
    kvm = get_flavor("kvm")
    logs = startlog.mark(kvm.driver_logs, "k1", tmp_path)
    host_file(tmp_path, "/var/log/libvirt/qemu/k1.log",
              "2026-12-07 14:00:00.000+0000: starting up libvirt version: 9.0.0\n"
              "2026-12-07T14:00:01.000000Z qemu-system-x86_64: -blockdev {...}: Could not open '/nope.qcow2': "
              "No such file or directory\n2026-12-07 14:00:01.100+0000: shutting down, reason=failed\n")
    [excerpt] = logs.excerpts()
    assert excerpt.path == "/var/log/libvirt/qemu/k1.log"
    assert any("Could not open '/nope.qcow2'" in line for line in excerpt.lines)
    assert not any("starting up" in line for line in excerpt.lines)


def test_the_agents_start_path_uses_it() -> None:
    """libvirt's test driver never fails a create, so no offline start reaches this path (the Xen lab test
    tests/e2e/test_xenlab_errors.py does): at least the agent's start must still mark and explain."""
    agent_dir = Path(startlog.__file__).parent
    sources = {p: p.read_text() for p in agent_dir.rglob("*.py") if p.name != "startlog.py"}
    users = [p for p, text in sources.items() if "startlog.mark(" in text and "startlog.explain(" in text]
    assert users, "no module of corral/agent calls startlog.mark() before a start and startlog.explain() on failure"


def test_a_libxc_panic_that_names_no_domain_is_kept(tmp_path: Path) -> None:
    """Measured on the lab: a PV guest too small for its kernel and initrd fails with a libxc panic line that
    names no domain, before the two libxl lines; the panic is the cause and must be quoted."""
    log = tmp_path / "var/log/libvirt/libxl/libxl-driver.log"
    log.parent.mkdir(parents=True)
    log.write_text("old line\n")
    logs = startlog.mark(("/var/log/libvirt/libxl/libxl-driver.log",), "small", tmp_path)
    with log.open("a") as fh:
        fh.write("2026-12-07 14:46:30.336+0000: xc: panic: xg_dom_core.c:536: xc_dom_chk_alloc_pages: segment "
                 "module0 too large (0x213 > 0x4000 - 0x4000 pages): Out of memory\n"
                 "2026-12-07 14:46:31.380+0000: libxl: libxl_create.c:1640:domcreate_rebuild_done: Domain 3:cannot "
                 "(re-)build domain: -3\n")
    [excerpt] = logs.excerpts()
    assert any("Out of memory" in line for line in excerpt.lines)
