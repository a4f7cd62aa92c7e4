"""``corral host add --ssh``: the SSH target and credential become the API's ``ssh`` object."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from corral.cli.resources import _deploy_options, _ssh_body


def test_ssh_target_parsing(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("KEY")
    assert _ssh_body("root@10.0.0.5", key, False, None) == {"address": "10.0.0.5", "port": 22, "user": "root",
                                                           "private_key": "KEY"}
    assert _ssh_body("10.0.0.5:2222", None, False, "SHA256:x") == {
        "address": "10.0.0.5", "port": 2222, "user": "root", "host_key_fingerprint": "SHA256:x"}
    assert _ssh_body("admin@[fe80::1]:2200", None, False, None)["address"] == "fe80::1"
    assert _ssh_body("root@fe80::1", None, False, None)["port"] == 22
    assert _ssh_body(None, None, False, None) is None
    with pytest.raises(typer.Exit):
        _ssh_body("root@h", key, True, None)  # key and password prompt together
    assert _deploy_options(True, None, 8471, None) == {"allow_tcg": True, "agent_port": 8471}
