"""``--cloud-init user=NAME,ssh-key=FILE,hostname=H[,network=dhcp|static:ADDR/PREFIX][,gw=IP][,dns=IP]`` as a
VmSpec's ``cloud_init`` object.

``ssh-key`` names a public key file (``~`` expanded), read here: every key line of it is taken (an
``authorized_keys`` file works), comments and blank lines skipped; ``ssh-key`` and ``dns`` may repeat. The
values are checked by the engine (the VmSpec), which names the field at fault; this parser only refuses what
it cannot read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.cli.common import fail

HELP = ("user=NAME,ssh-key=FILE,hostname=H[,network=dhcp|static:ADDR/PREFIX][,gw=IP][,dns=IP]: first-boot data "
        "for a cloud image (a NoCloud seed); ssh-key and dns may repeat")
_KEYS = ("user", "ssh-key", "hostname", "network", "gw", "dns")


def _keys_of(path_text: str, option: str) -> list[str]:
    path = Path(path_text).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{option}: cannot read the public key file {path}: {exc}")
    if "PRIVATE KEY" in text:
        fail(f"{option}: {path} is a private key; give the public one ({path}.pub)")
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        fail(f"{option}: {path} holds no key")
    return keys


def parse_cloud_init(value: str) -> dict[str, Any]:
    """The ``cloud_init`` object of a VmSpec from the option's value."""
    option = f"--cloud-init {value}"
    data: dict[str, Any] = {}
    network: dict[str, Any] = {}
    keys: list[str] = []
    dns: list[str] = []
    for item in value.split(","):
        if not item:
            continue
        key, eq, val = item.partition("=")
        if key not in _KEYS or not eq:
            fail(f"{option}: unknown option {item!r} (give {', '.join(k + '=' for k in _KEYS)})")
        if key == "ssh-key":
            keys += _keys_of(val, option)
        elif key == "dns":
            dns.append(val)
        elif key == "gw":
            network["gateway"] = val
        elif key == "network":
            mode, colon, address = val.partition(":")
            if mode not in ("dhcp", "static") or (mode == "static") != bool(colon):
                fail(f"{option}: network=dhcp or network=static:ADDRESS/PREFIX, not {val!r}")
            network["mode"] = mode
            if address:
                network["address"] = address
        elif key in data:
            fail(f"{option}: {key}= given twice")
        else:
            data[key] = val
    if keys:
        data["ssh_authorized_keys"] = keys
    if dns:
        network["dns"] = dns
    if network:
        data["network"] = network
    return data
