"""The engine's MAC pool: every NIC of a managed VM has a MAC the engine chose or accepted, and no two VMs share one.

Why the engine and not the host: a flavor's generated MAC is in its hypervisor's vendor prefix (``52:54:00`` on
KVM, ``00:16:3e`` on Xen), so a VM that moves between a KVM and a Xen host would change MAC, and the guest would
see a new network card. As in oVirt, whose engine hands MACs out of pools, the engine gives a NIC without a MAC
one from its own range when the NIC enters the engine (VM created, spec replaced, NIC hot-plugged, or — for a VM
stored before the engine did this — when it is next started, keeping the MAC its last host generated), stores it
in the spec, and every host then renders that same MAC.

The range is ``CORRAL_MAC_PREFIX`` (one to five octets; default ``56:6f:c0``, a locally administered range, as
oVirt's default ``56:6f``): the rest of each MAC is random and checked against the MACs in use. Uniqueness is the
database's: table ``vm_macs`` has the MAC as primary key, so two transactions that both checked a MAC free cannot
both commit it; the loser's unit of work is run once more (``call``/``run``) and its check then names the winner.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy import delete, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from corral.domain.flavors import UnknownFlavor, get_flavor
from corral.domain.resolve import mac_for
from corral.domain.spec import MAC_RE, NicSpec, VmSpec, parse_spec
from corral.engine.db.models import Host, Severity, Vm, VmMac
from corral.engine.db.session import Database
from corral.engine.errors import Conflict
from corral.engine.events import record

T = TypeVar("T")

PREFIX_ENV = "CORRAL_MAC_PREFIX"
DEFAULT_PREFIX = "56:6f:c0"
_TRIES = 64  # random picks before giving up: only a nearly full range needs more than one


class MacPoolError(ValueError):
    """The configured range is not usable."""


def check_prefix(prefix: str) -> str:
    """A prefix of one to five octets whose first octet is unicast (the multicast bit makes a group address)."""
    prefix = prefix.strip().lower()
    octets = prefix.split(":")
    if not 1 <= len(octets) <= 5 or not MAC_RE.match(":".join(octets + ["00"] * (6 - len(octets)))):
        raise MacPoolError(f"{PREFIX_ENV}: {prefix!r} is not one to five octets like 56:6f:c0")
    if int(octets[0], 16) & 1:
        raise MacPoolError(f"{PREFIX_ENV}: {prefix!r} is a multicast prefix; NIC MACs must be unicast")
    return prefix


def pool_prefix() -> str:
    return check_prefix(os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX)


def _random_mac(prefix: str) -> str:
    n = len(prefix.split(":"))
    return prefix + ":" + secrets.token_bytes(6 - n).hex(":")


def owners(s: Session, macs: Iterable[str], but: str) -> dict[str, tuple[str, str, str | None]]:
    """MAC -> (VM id, VM name, NIC id) of the VMs other than ``but`` that hold these MACs."""
    wanted = sorted(set(macs))
    if not wanted:
        return {}
    q = (select(VmMac.mac, Vm.id, Vm.name, VmMac.device_id).join(Vm, Vm.id == VmMac.vm_id)
         .where(VmMac.mac.in_(wanted), VmMac.vm_id != but))
    return {r[0]: (r[1], r[2], r[3]) for r in s.execute(q)}


def taken_error(mac: str, field: str, owner: tuple[str, str, str | None]) -> Conflict:
    vm_id, name, device_id = owner
    nic = f" (NIC {device_id})" if device_id else ""
    return Conflict(f"MAC {mac} is already used by VM {name}{nic}; give this NIC another MAC or leave it out "
                    "for one from the engine's pool", field=field, code="mac_in_use", mac=mac,
                    used_by={"vm_id": vm_id, "vm": name, "device_id": device_id})


def _pick(s: Session, prefix: str, avoid: set[str]) -> str:
    for _ in range(_TRIES):
        mac = _random_mac(prefix)
        if mac not in avoid and s.get(VmMac, mac) is None:
            return mac
    raise Conflict(f"no free MAC in the engine's range {prefix}: set {PREFIX_ENV} to a wider one",
                   code="mac_pool_full")


def choose(s: Session, vm_id: str, spec: VmSpec, *, field: Callable[[int], str] = lambda i: f"nics.{i}.mac",
           prefer: Mapping[str, str] | None = None) -> VmSpec:
    """``spec`` with every NIC given a MAC, checked free for VM ``vm_id``; nothing written (``take`` does).

    A NIC without a MAC gets ``prefer[nic id]`` when that MAC is free (the one it had), else one from the pool.
    A MAC another VM holds is refused with 409 naming the field and that VM."""
    given = {nic.mac.lower(): i for i, nic in enumerate(spec.nics) if nic.mac}
    taken = owners(s, given, but=vm_id)
    for mac, i in sorted(given.items(), key=lambda kv: kv[1]):
        if mac in taken:
            raise taken_error(mac, field(i), taken[mac])
    if len(given) == len(spec.nics):
        return spec
    prefix = pool_prefix()
    nics: list[NicSpec] = []
    avoid = set(given)
    for nic in spec.nics:
        if not nic.mac:
            mac = (prefer or {}).get(nic.id, "").lower()
            if not mac or mac in avoid or owners(s, [mac], but=vm_id):
                mac = _pick(s, prefix, avoid)
            avoid.add(mac)
            nic = nic.model_copy(update={"mac": mac})
        nics.append(nic)
    return spec.model_copy(update={"nics": nics})


def take(s: Session, vm_id: str, spec: VmSpec) -> None:
    """VM ``vm_id`` (its row written) holds exactly the MACs of ``spec`` (as ``choose`` answered it). Raises
    ``IntegrityError`` when another transaction took one of them since the check: run the unit of work with
    ``call``/``run``, whose second run's check names that VM."""
    _set_rows(s, vm_id, {n.mac.lower(): n.id for n in spec.nics if n.mac})


def hold(s: Session, vm_id: str, spec: VmSpec, *, field: Callable[[int], str] = lambda i: f"nics.{i}.mac",
         prefer: Mapping[str, str] | None = None) -> VmSpec:
    """``choose`` then ``take``: for a VM whose row exists."""
    chosen = choose(s, vm_id, spec, field=field, prefer=prefer)
    take(s, vm_id, chosen)
    return chosen


def hold_one(s: Session, vm_id: str, nic: NicSpec, *, field: str = "nic.mac") -> NicSpec:
    """Add one NIC's MAC (given, else from the pool) to what VM ``vm_id`` holds: before a hot-plug."""
    if nic.mac:
        mac = nic.mac.lower()
        taken = owners(s, [mac], but=vm_id)
        if mac in taken:
            raise taken_error(mac, field, taken[mac])
        held = s.get(VmMac, mac)
        if held is not None and held.device_id not in (None, nic.id):
            raise Conflict(f"MAC {mac} is already used by NIC {held.device_id} of this VM", field=field,
                           code="mac_in_use", mac=mac)
    else:
        mac = _pick(s, pool_prefix(), set())
        nic = nic.model_copy(update={"mac": mac})
    if s.get(VmMac, mac) is None:
        s.execute(insert(VmMac).values(mac=mac, vm_id=vm_id, device_id=nic.id))
    return nic


def sync(s: Session, vm_id: str, spec: dict[str, Any] | None) -> None:
    """After a host changed the VM's spec (a NIC plugged or unplugged): hold exactly its NICs' MACs. The host
    already runs them, so a MAC another VM holds is not refused here but warned about as an event."""
    nics = [n for n in (spec or {}).get("nics") or [] if isinstance(n, dict) and n.get("mac")]
    wanted = {str(n["mac"]).lower(): n.get("id") for n in nics}
    taken = owners(s, wanted, but=vm_id)
    for mac, (_, name, _) in sorted(taken.items()):
        del wanted[mac]
        vm_name = s.scalar(select(Vm.name).where(Vm.id == vm_id))
        record(s, "vm_mac_duplicate", f"VM {vm_name} uses MAC {mac}, which VM {name} holds",
               severity=Severity.WARNING, object_type="vm", object_id=vm_id, detail={"mac": mac, "vm": name})
    _set_rows(s, vm_id, wanted)


def hold_found(s: Session, rows: Iterable[Mapping[str, Any]]) -> None:
    """VMs monitoring found on hosts with a Corral spec (recovered) hold their NICs' MACs, so a new VM cannot take
    them; a MAC already held stays with its holder (the VM runs anyway). Inserted with ``ON CONFLICT DO NOTHING``,
    so a concurrent create never fails monitoring's batch."""
    new = [{"mac": str(n["mac"]).lower(), "vm_id": r["id"], "device_id": n.get("id")}
           for r in rows if not r.get("external") and isinstance(r.get("spec"), dict)
           for n in r["spec"].get("nics") or [] if isinstance(n, dict) and n.get("mac")]
    if not new:
        return
    dialect = s.get_bind().dialect.name
    stmt = (pg_insert(VmMac) if dialect == "postgresql" else sqlite_insert(VmMac)).on_conflict_do_nothing()
    s.execute(stmt, new)


def _set_rows(s: Session, vm_id: str, wanted: Mapping[str, str | None]) -> None:
    held = {r[0]: r[1] for r in s.execute(select(VmMac.mac, VmMac.device_id).where(VmMac.vm_id == vm_id))}
    gone = sorted(set(held) - set(wanted))
    if gone:
        s.execute(delete(VmMac).where(VmMac.vm_id == vm_id, VmMac.mac.in_(gone)))
    for mac, device_id in wanted.items():
        if mac in held and held[mac] != device_id:
            s.execute(update(VmMac).where(VmMac.mac == mac).values(device_id=device_id))
    new = [{"mac": m, "vm_id": vm_id, "device_id": d} for m, d in wanted.items() if m not in held]
    if new:
        s.execute(insert(VmMac), new)


def fill_before_start(s: Session, vm_id: str) -> dict[str, Any]:
    """The stored spec of a VM some NIC of which has no MAC yet (stored before the engine chose MACs), with
    every NIC given one and stored: the MAC its last host generated when that is free, so the guest keeps
    its network card, else one from the pool."""
    vm = s.get(Vm, vm_id)
    assert vm is not None and vm.spec is not None
    spec = parse_spec(vm.spec)
    prefer: dict[str, str] = {}
    host = s.get(Host, vm.last_host_id) if vm.last_host_id else None
    if host is not None and host.flavor:
        try:
            prefix = get_flavor(host.flavor, accel=host.accel or "kvm").mac_prefix
        except UnknownFlavor:
            prefix = ""
        prefer = {n.id: mac_for(n.id, prefix) for n in spec.nics if prefix and not n.mac}
    vm.spec = hold(s, vm_id, spec, prefer=prefer).model_dump(mode="json")
    return vm.spec


def call(db: Database, fn: Callable[[Session], T]) -> T:
    """``db.call``, once more if a unique constraint failed: a concurrent transaction committed the same MAC
    (or VM name or id) between this one's check and its insert; the second run's checks see it and say so."""
    try:
        return db.call(fn)
    except IntegrityError:
        return db.call(fn)


async def run(db: Database, fn: Callable[[Session], T]) -> T:
    """``call`` for async handlers (``db.run``)."""
    try:
        return await db.run(fn)
    except IntegrityError:
        return await db.run(fn)


__all__ = ["DEFAULT_PREFIX", "PREFIX_ENV", "MacPoolError", "call", "check_prefix", "choose", "fill_before_start",
           "hold", "hold_found", "hold_one", "owners", "pool_prefix", "run", "sync", "take", "taken_error"]
