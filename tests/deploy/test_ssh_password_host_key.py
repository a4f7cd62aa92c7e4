"""An SSH password is sent only to a host whose key is known (issue 14): with a password, the host key's
fingerprint or an explicit trust_on_first_use is required, before anything is made; against a real sshd."""

from __future__ import annotations

from corral.engine.deploy.options import SshIn
from tests.deploy.conftest import Api
from tests.deploy.sshhost import SshHost
from tests.deploy.test_deploy_ssh import body


def test_password_without_host_key_is_refused_by_name(api: Api, sshhost: SshHost) -> None:
    b = body(sshhost, "pw", sshhost.dir / "root-pw", 8475, key=False)
    b["ssh"]["password"] = "whatever"
    err = api.post("/hosts", b, status=422)
    assert err["field"] == "ssh.host_key_fingerprint" and "trust_on_first_use" in err["message"], err
    assert "trust_on_first_use" in err["message"]
    assert [h["name"] for h in api.get("/hosts")["items"]] == []  # nothing made, nothing sent


def test_password_with_explicit_trust_on_first_use_goes_to_the_host(api: Api, sshhost: SshHost) -> None:
    b = body(sshhost, "tofu", sshhost.dir / "root-tofu", 8476, key=False)
    b["ssh"].update(password="not-the-password", trust_on_first_use=True)
    task = api.wait(api.post("/hosts", b))
    # the host key was accepted (and pinned); the password was tried and refused by the real sshd
    assert task["state"] == "failed" and task["error"]["code"] == "ssh_auth_failed", task["error"]
    assert "(password)" in task["error"]["message"]


def test_a_key_alone_still_pins_on_first_use() -> None:
    ssh = SshIn(address="h", private_key="KEY")
    assert ssh.host_key_fingerprint is None and not ssh.trust_on_first_use
    assert SshIn(address="h", password="pw", host_key_fingerprint="SHA256:" + "A" * 43).password == "pw"
