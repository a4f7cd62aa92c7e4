"""Deploy over SSH to a stand-in KVM host (sshd in a network namespace of this machine, /dev/kvm hidden):
detect, check, install, mutual TLS, activate; reinstall and certificate renewal through the same SSH path; a
failed check naming each item, then a rerun that resumes; a wrong password, an unreachable address and a host
key that is not the expected one, each with a clear reason."""

from __future__ import annotations

import re
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from corral.engine.db.models import Host
from corral.engine.pki import EnginePki
from tests.deploy.conftest import Api, libvirt_uri_for_tests
from tests.deploy.sshhost import SshHost
from tests.deploy.tls import check_agent_mtls

STEP_NAMES = ("connect", "detect", "packages", "check", "install", "configure", "certificate", "start", "activate")


def body(host: SshHost, name: str, root: Path, port: int, *, key: bool = True, **options: Any) -> dict[str, Any]:
    ssh: dict[str, Any] = {"address": host.address, "connect_timeout": 10}
    if key:
        ssh["private_key"] = host.client_key.read_text()
    opts = {"install_root": str(root), "agent_port": port, "health_timeout": 90, **options}
    return {"name": name, "ssh": ssh, "options": opts}


def _served_cert_serial(host: SshHost, port: int, pki: EnginePki) -> int:
    import socket

    ctx = ssl.create_default_context(cafile=str(pki.ca_cert_path))
    with socket.create_connection((host.address, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host.address) as tls:
        der = tls.getpeercert(binary_form=True)
    from cryptography import x509

    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_deploy_kvm_host_end_to_end(api: Api, sshhost: SshHost, engine_dir: Path, tmp_path: Path) -> None:
    root = sshhost.root  # sshd also reads <root>/root/.ssh/authorized_keys: the engine's key works after deploy
    sshhost.roots.append(root)  # type: ignore[attr-defined]
    uri = libvirt_uri_for_tests()
    task = api.wait(api.post("/hosts", body(sshhost, "kvm-1", root, 8470, allow_tcg=True, libvirt_uri=uri)))
    assert task["state"] == "succeeded", (task["error"], task["message"])
    result = task["result"]
    assert result["state"] == "up", result
    assert result["hypervisor"] == "qemu"  # no /dev/kvm: QEMU under TCG, allowed by the deploy option
    assert result["host_key_fingerprint"] == sshhost.host_key_fingerprint()
    assert set(STEP_NAMES) <= set(result["timings"]), result["timings"]
    print("deploy timings", result["timings"])
    h = api.host("kvm-1")
    assert h["state"] == "up" and h["agent_url"] == f"https://{sshhost.address}:8470"
    assert h["ssh_address"] == sshhost.address
    expires = datetime.fromisoformat(h["cert_expires_at"])
    assert timedelta(days=364) < expires - datetime.now(UTC) < timedelta(days=366)
    assert h["deploy"]["check"]["ok"] is True
    kinds = [e["type"] for e in api.events(h["id"])]
    for kind in ("host_key_pinned", "host_detected", "host_checked", "host_cert_issued", "host_activated"):
        assert kind in kinds, kinds
    steps = {e["detail"]["step"] for e in api.events(h["id"]) if e["type"] == "host_deploy_step"}
    assert steps == set(STEP_NAMES)

    # what landed on the host
    assert "allow_tcg = true" in (root / "etc/corral/agent.toml").read_text()
    assert stat.S_IMODE((root / "etc/corral/pki/agent.key").stat().st_mode) == 0o600
    assert (root / "etc/init.d/corral-agent").stat().st_mode & 0o111
    assert (root / "opt/corral/venv/bin/corral").exists()
    assert "corral-engine" in (root / "root/.ssh/authorized_keys").read_text()
    # and on the engine: the CA key readable by the engine only
    assert stat.S_IMODE((engine_dir / "pki/ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((engine_dir / "pki").stat().st_mode) == 0o700

    # the deployed agent speaks mutual TLS only
    pki = EnginePki(engine_dir / "pki")
    check_agent_mtls(h["agent_url"], pki, tmp_path,
                     (root / "etc/corral/pki/agent.crt").read_bytes(), (root / "etc/corral/pki/agent.key").read_bytes())

    # host add again on a host that is up: refused (reinstall is the way)
    assert api.call("POST", "/hosts", 409, json=body(sshhost, "kvm-1", root, 8470))["code"] == "conflict"

    # reinstall: the engine's own key and the pinned host key, no operator credential; unchanged wheels not resent
    task = api.wait(api.post(f"/hosts/{h['id']}/reinstall", {}))
    assert task["state"] == "succeeded", (task["error"], task["message"])
    assert task["result"]["state"] == "up"
    install = [e["message"] for e in api.events(h["id"])
               if e["type"] == "host_deploy_step" and e["detail"]["step"] == "install"]
    sent = re.search(r"(\d+) of (\d+) wheel\(s\) sent", install[-1])
    assert sent is not None and int(sent.group(2)) > 1, install
    assert int(sent.group(1)) <= 1, install  # only the corral wheel, if the checkout changed meanwhile

    # renewal: a certificate with less than 30 days left is renewed by the periodic check
    serial = _served_cert_serial(sshhost, 8470, pki)
    soon = datetime.now(UTC) + timedelta(days=10)

    def expire_soon(s: Any) -> None:
        s.get(Host, h["id"]).cert_expires_at = soon
    api.client.app.state.db.call(expire_soon)  # type: ignore[attr-defined]
    renewer = api.client.app.state.cert_renewer  # type: ignore[attr-defined]
    tasks = api.client.portal.call(renewer.check)  # type: ignore[union-attr]
    assert [t["kind"] for t in tasks] == ["host_renew_cert"]
    task = api.wait(tasks[0])
    assert task["state"] == "succeeded", (task["error"], task["message"])
    after = api.host("kvm-1")
    assert datetime.fromisoformat(after["cert_expires_at"]) > soon + timedelta(days=300)
    assert _served_cert_serial(sshhost, 8470, pki) != serial
    assert after["state"] == "up"
    assert api.client.portal.call(renewer.check) == []  # nothing left to renew


def test_failed_check_names_each_item_then_rerun_resumes(api: Api, sshhost: SshHost) -> None:
    root = sshhost.dir / "root-resume"
    sshhost.roots.append(root)  # type: ignore[attr-defined]
    task = api.wait(api.post("/hosts", body(sshhost, "kvm-2", root, 8471, libvirt_uri="test:///default")))
    assert task["state"] == "failed", task
    err = task["error"]
    assert err["code"] == "hardware_check_failed" and err["step"] == "check", err
    failed = {i["name"]: i["detail"] for i in err["failed_items"]}
    assert set(failed) == {"hypervisor", "/dev/kvm", "cpu virtualization"}, failed
    assert "absent" in failed["/dev/kvm"]
    h = api.host("kvm-2")
    assert h["state"] == "non_operational"
    for name in failed:
        assert name in h["state_reason"], h["state_reason"]
    assert h["hypervisor"] is None
    assert not (root / "opt/corral/venv").exists()  # nothing installed on a host that fails its check
    kinds = [e["type"] for e in api.events(h["id"])]
    assert "host_deploy_failed" in kinds

    # the same command with TCG allowed resumes the same host
    task = api.wait(api.post("/hosts", body(sshhost, "kvm-2", root, 8471, libvirt_uri="test:///default",
                                            allow_tcg=True)))
    assert task["state"] == "succeeded", (task["error"], task["message"])
    assert task["result"]["host_id"] == h["id"]
    assert api.host("kvm-2")["state"] == "up"
    assert "host_deploy_resumed" in [e["type"] for e in api.events(h["id"])]


def test_wrong_password(api: Api, sshhost: SshHost) -> None:
    b = body(sshhost, "badpw", sshhost.dir / "root-badpw", 8472, key=False)
    b["ssh"].update(password="not-the-password", host_key_fingerprint=sshhost.host_key_fingerprint())
    task = api.wait(api.post("/hosts", b))
    assert task["state"] == "failed"
    assert task["error"]["code"] == "ssh_auth_failed", task["error"]
    assert "authentication as root@" in task["error"]["message"] and "(password)" in task["error"]["message"]
    h = api.host("badpw")
    assert h["state"] == "non_operational" and "connect" in h["state_reason"]


def test_unreachable_address(api: Api, sshhost: SshHost) -> None:
    b = body(sshhost, "gone", sshhost.dir / "root-gone", 8473)
    b["ssh"].update(address=sshhost.unused_address, connect_timeout=3)
    task = api.wait(api.post("/hosts", b))
    assert task["state"] == "failed"
    assert task["error"]["code"] == "unreachable", task["error"]
    assert f"cannot reach {sshhost.unused_address}:22" in task["error"]["message"]
    assert api.host("gone")["state"] == "unreachable"


def test_unexpected_host_key(api: Api, sshhost: SshHost) -> None:
    b = body(sshhost, "mitm", sshhost.dir / "root-mitm", 8474)
    b["ssh"]["host_key_fingerprint"] = "SHA256:" + "A" * 43
    task = api.wait(api.post("/hosts", b))
    assert task["state"] == "failed"
    assert task["error"]["code"] == "host_key_mismatch", task["error"]
    assert sshhost.host_key_fingerprint() in task["error"]["message"]
