"""The engine's CA and keys, the wheel of the running Corral, and the hypervisor detection from probe output."""

from __future__ import annotations

import base64
import hashlib
import stat
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from corral.engine.deploy.probe import detect, parse_probe
from corral.engine.pki import ENGINE_CN, EnginePki
from corral.engine.wheels import corral_wheel


def test_ca_created_once_with_private_keys_readable_by_the_engine_only(tmp_path: Path) -> None:
    pki = EnginePki(tmp_path / "pki")
    assert pki.ensure() == ["ca", "client certificate", "ssh key"]
    assert pki.ensure() == []
    assert stat.S_IMODE(pki.dir.stat().st_mode) == 0o700
    for key in (pki.ca_key_path, pki.client_key_path, pki.ssh_key_path):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    client = x509.load_pem_x509_certificate(pki.client_cert_path.read_bytes())
    assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == ENGINE_CN
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.ssh_public_line.startswith("ssh-ed25519 ")


def test_server_certificate_names_and_purpose(tmp_path: Path) -> None:
    pki = EnginePki(tmp_path / "pki")
    pki.ensure()
    issued = pki.issue_server("dom0", ["10.0.0.5", "dom0.example", "10.0.0.5", ""], days=30)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v) for v in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert san.get_values_for_type(x509.DNSName) == ["dom0.example"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert timedelta(days=29) < issued.not_after - datetime.now(UTC) <= timedelta(days=30)


def test_client_certificate_renewed_before_expiry(tmp_path: Path) -> None:
    pki = EnginePki(tmp_path / "pki")
    pki.ensure()
    ctx = pki.client_ssl_context()
    first = pki.client_cert_path.read_bytes()
    assert not pki.renew_client_if_needed()
    assert pki.renew_client_if_needed(timedelta(days=400))  # "expires within 400 days": renewed
    assert pki.client_cert_path.read_bytes() != first
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_corral_wheel_is_a_valid_wheel(tmp_path: Path) -> None:
    wheel = corral_wheel(tmp_path)
    assert wheel.path.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel.path) as zf:
        names = set(zf.namelist())
        assert "corral/engine/deploy/deployer.py" in names
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        assert "Requires-Dist: asyncssh" in zf.read(f"{info}/METADATA").decode()
        assert "corral = corral.cli:main" in zf.read(f"{info}/entry_points.txt").decode()
        for line in zf.read(f"{info}/RECORD").decode().splitlines():
            name, digest, _size = line.split(",")
            if digest:
                data = zf.read(name)
                expect = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert digest == f"sha256={expect}", name
    assert corral_wheel(tmp_path).path == wheel.path  # cached by content


XEN_DOM0 = """uid=0
file.xen_caps=control_d
file.hv_type=xen
python=3.11 linux-x86_64
bridge=xenbr0
"""


def test_detection_from_probe() -> None:
    assert detect(parse_probe(XEN_DOM0), False).kind == "xen"  # no /dev/kvm and that is fine
    assert detect(parse_probe(XEN_DOM0), False).flavor.default_uri == "xen:///system"  # type: ignore[union-attr]
    assert detect(parse_probe("kvm=usable\ncpu_flag=vmx\n"), False).kind == "kvm"
    assert detect(parse_probe("cpu_flag=svm\n"), False).kind == "kvm"  # kvm module not loaded: the check says so
    assert detect(parse_probe("uid=0\n"), False).kind == "none"
    assert detect(parse_probe("uid=0\n"), True).kind == "qemu"
    domu = detect(parse_probe("file.xen_caps=\nfile.hv_type=xen\n"), False)
    assert domu.kind == "none"  # a Xen domU is not a host
