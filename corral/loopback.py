"""Whether an address is this machine's loopback: where Corral allows plain HTTP (engine listen, agent URLs,
``corral login``), since nobody else can read it. Used by the engine and the CLI alike, so it lives here."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ``::1`` or ``localhost`` (other names are not resolved: a name is not the loopback)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
