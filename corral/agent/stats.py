"""Domain stats for a whole host in as few libvirt calls as the driver allows.

The QEMU and test drivers answer ``getAllDomainStats``: one call per cycle for every domain. libvirt's libxl
driver does not implement it ("this function is not supported by the connection driver:
virConnectGetAllDomainStats", measured on the Xen lab), so there the agent falls back to
``listAllDomains`` plus one ``info()`` per domain, producing the same keys. The first refusal is remembered:
later cycles go straight to the fallback.
"""

from __future__ import annotations

from typing import Any

import libvirt

STATS_FLAGS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
               | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU)
_UNSUPPORTED = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED)

Records = list[tuple[libvirt.virDomain, dict[str, Any]]]


def _from_info(dom: libvirt.virDomain) -> dict[str, Any]:
    state, reason = dom.state()
    _s, max_kib, cur_kib, vcpus, cpu_ns = dom.info()
    stats: dict[str, Any] = {"state.state": state, "state.reason": reason, "balloon.maximum": max_kib}
    if state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE):
        stats.update({"balloon.current": cur_kib, "vcpu.current": vcpus, "cpu.time": cpu_ns})
    return stats


class StatsReader:
    def __init__(self) -> None:
        self.bulk = True  # until the driver says otherwise

    def all(self, conn: libvirt.virConnect) -> Records:
        if self.bulk:
            try:
                records: Records = conn.getAllDomainStats(STATS_FLAGS, 0)
                return records
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _UNSUPPORTED:
                    raise
                self.bulk = False
        out: Records = []
        for dom in conn.listAllDomains(0):
            try:
                out.append((dom, _from_info(dom)))
            except libvirt.libvirtError:
                continue  # gone between the listing and the question
        return out

    def one(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> dict[str, Any]:
        if self.bulk:
            try:
                return dict(conn.domainListGetStats([dom], STATS_FLAGS)[0][1])
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in _UNSUPPORTED:
                    return {}
                self.bulk = False
            except IndexError:
                return {}
        try:
            return _from_info(dom)
        except libvirt.libvirtError:
            return {}
