"""Where Corral accepts plain HTTP: on the loopback only, unless the engine runs with ``--insecure``.

A token or a session cookie sent in clear over a network is as good as given away, and an agent's token is
root on its hypervisor. So the engine's own listen and the agents it talks to use TLS whenever the traffic
leaves the machine; plain HTTP stays allowed on 127.0.0.0/8, ``::1`` and ``localhost`` (tests, the simulator,
``corral all-in-one``'s local agents), where nobody else can read it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from corral.engine.errors import Invalid
from corral.loopback import is_loopback


def check_agent_url(url: str, insecure: bool) -> None:
    """Refuse (422, field ``url``) a plain-HTTP agent URL off the loopback unless ``insecure``."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not insecure and not is_loopback(parts.hostname or ""):
        raise Invalid(f"{url}: plain HTTP to an agent off this machine would send its token in clear; use the "
                      "agent's https:// URL (mutual TLS), or start the engine with --insecure", field="url")
