"""The bodies of the agent's storage API and the rules of its names: pydantic models whose errors name the field,
and the checks of names given in URLs. Split from ``corral.agent.storage`` (the pools and volumes themselves)."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from corral.agent.errors import Invalid

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
MAX_BYTES = 1 << 60  # 1 EiB: far above any disk, far below what libvirt's unsigned long long holds

def _absolute_path(value: str) -> str:
    if "\0" in value or not value.startswith("/") or value == "/" or os.path.normpath(value) != value:
        raise ValueError("must be an absolute, normalised path other than / (no '..', '//' or trailing '/')")
    return value


Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
AbsPath = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_absolute_path)]
HostName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252}[A-Za-z0-9])?$")]
Bytes = Annotated[int, Field(gt=0, le=MAX_BYTES, strict=True)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DirPool(_Body):
    type: Literal["dir"]
    path: AbsPath


# One mount option as mount(8) takes it (``name`` or ``name=value``): no comma, space or quote can smuggle in another
MountOption = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}(=[A-Za-z0-9._:@/+-]{1,255})?$")]


class NetfsSource(_Body):
    """``port``, ``protocol_version`` and ``mount_options`` are what an NFS server not on 2049, or one that speaks
    NFSv4 only (nfs-ganesha, the labs' server), needs: libvirt 9.0 passes ``<protocol ver>`` to mount as
    ``nfsvers=N`` but not ``<host port>``, so the port also goes to mount as ``port=N`` (``<fs:mount_opts>``)."""

    host: HostName
    dir: AbsPath
    format: Literal["nfs", "auto", "glusterfs", "cifs"] = "nfs"
    port: Annotated[int, Field(ge=1, le=65535, strict=True)] | None = None
    protocol_version: Literal[3, 4] | None = None
    mount_options: Annotated[list[MountOption], Field(max_length=16)] = []


class NetfsPool(_Body):
    type: Literal["netfs"]
    path: AbsPath
    source: NetfsSource


class LogicalSource(_Body):
    vg: Name


class LogicalPool(_Body):
    type: Literal["logical"]
    source: LogicalSource


PoolBody = DirPool | NetfsPool | LogicalPool
_POOL_BODIES: dict[str, type[DirPool] | type[NetfsPool] | type[LogicalPool]] = {
    "dir": DirPool, "netfs": NetfsPool, "logical": LogicalPool}


class VolumeRef(_Body):
    pool: Name
    volume: Name


class VolumeBody(_Body):
    """``format`` defaults to qcow2 for a thin clone, to the source's format for a full copy, else raw;
    ``capacity_bytes`` to the backing's or the source's (it may be larger, never smaller)."""

    name: Name
    format: Literal["raw", "qcow2"] | None = None
    capacity_bytes: Bytes | None = None
    backing: VolumeRef | None = None
    clone_of: VolumeRef | None = None


class ResizeBody(_Body):
    capacity_bytes: Bytes


def invalid(exc: ValidationError, prefix: str = "") -> Invalid:
    """A pydantic error as the agent's 422, naming the first field (and listing every one)."""
    errors = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        errors.append({"field": path or None, "message": str(err["msg"]).removeprefix("Value error, ")})
    first = errors[0]
    return Invalid(f"{first['field']}: {first['message']}" if first["field"] else str(first["message"]),
                   field=first["field"], errors=errors)


def parse_pool(data: Any) -> PoolBody:
    if not isinstance(data, dict):
        raise Invalid("the body must be an object", field="body")
    kind = _POOL_BODIES.get(data.get("type"))  # type: ignore[arg-type]
    if kind is None:
        raise Invalid(f"type must be one of {', '.join(_POOL_BODIES)}", field="type")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def parse(model: type[VolumeBody] | type[ResizeBody], data: Any) -> Any:
    if not isinstance(data, dict):
        raise Invalid("the body must be an object", field="body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def check_name(value: str, field: str) -> str:
    """A pool or volume name from the URL, by the same rule as in bodies."""
    if not _NAME.fullmatch(value):
        raise Invalid(f"{field} must match {NAME_PATTERN}", field=field)
    return value
