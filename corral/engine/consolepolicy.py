"""Where a VM's console may listen (issue 14): on its host's loopback, relayed by the agent, unless an admin
allowed public consoles in the VM's cluster (``clusters.allow_public_console``).

The flavors decide what a host *can* do with a network listen address (Xen refuses it, KVM renders it only with a
password: ``graphics.listen.public``); this is the operator's policy on top, checked by the engine where a VM's
spec is stored (create, replace) and again at every start, since the cluster's setting may have changed since.
"""

from __future__ import annotations

import ipaddress

from corral.domain.spec import VmSpec
from corral.engine.db.models import Cluster
from corral.engine.errors import Invalid


def check(spec: VmSpec, cluster: Cluster) -> None:
    """``Invalid`` on ``graphics.listen`` when the spec asks for a network address its cluster does not allow."""
    if spec.graphics is None or ipaddress.ip_address(spec.graphics.listen).is_loopback:
        return
    if not cluster.allow_public_console:  # read in the caller's session
        raise Invalid(f"graphics.listen {spec.graphics.listen!r}: consoles listen on the host's loopback and are "
                      f"relayed by the agent; cluster {cluster.name} does not allow public consoles (an admin sets "
                      f"allow_public_console on the cluster)", field="graphics.listen")
