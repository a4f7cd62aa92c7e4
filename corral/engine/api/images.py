"""``/api/v1/images``: disk images and ISOs uploaded as streams through the engine into a volume (issue 12).

``PUT /images/{name}?storage=S`` takes the file as the request body (``Content-Length`` required) and passes it
on, chunk by chunk as it arrives, to the agent of one host (``PUT /v1/storage/pools/{pool}/volumes/{name}/
content``), which writes it into libvirt's upload stream: the image is never whole in the engine's memory, nor
in the agent's. The agent answers the volume's probed format and the sha256 of the bytes it received; the
engine looks at the first 32 KiB passing through for the ISO 9660 signature (``iso`` images are offered as
CD-ROM media). Whatever ends an upload early — the client going away, the agent failing, a checksum that is not
the one announced — leaves neither a volume on the host nor a record in the engine.

On a local domain (``dir``, ``logical``) the image lands on one host (``host``, or the up host where the domain
is active with the most free space): images of local domains are per host. An ``nfs`` domain is shared, and so
are its images.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from corral.engine import storage
from corral.engine.agent_client import AgentError, AgentTarget
from corral.engine.api import storage as storage_api
from corral.engine.api.deps import After, Ctx, Limit
from corral.engine.api.schemas import ACCEPTED, ERRORS, Page, TaskOut
from corral.engine.db.models import (
    Host,
    Image,
    ImageKind,
    StorageDomain,
    Volume,
    VolumeState,
)
from corral.engine.errors import ApiError, Conflict, Invalid, NotFound
from corral.engine.events import record
from corral.engine.ids import new_id

log = logging.getLogger(__name__)

images_router = APIRouter(prefix="/images", tags=["storage"], responses=ERRORS)
router = APIRouter()

_NAME = re.compile(storage_api.NAME)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PASS_ON = 1 << 20  # bytes of the body sent on to the agent at once (held in memory: at most about this much)


class ImageOut(BaseModel):
    id: str  # the volume's id
    name: str
    kind: str
    format: str
    size_bytes: int
    capacity_bytes: int
    sha256: str
    domain_id: str
    domain: str | None = None
    host_id: str | None
    host: str | None = None
    shared: bool
    path: str | None
    state: str
    uploaded_at: Any
    cdrom: dict[str, Any] | None = None


def _outs(s: Session, rows: list[tuple[Image, Volume]]) -> list[ImageOut]:
    domains = {r[0]: (r[1], r[2]) for r in s.execute(select(StorageDomain.id, StorageDomain.name, StorageDomain.type)
                                                      .where(StorageDomain.id.in_({v.domain_id for _, v in rows})))}
    hosts = {r[0]: r[1] for r in s.execute(select(Host.id, Host.name).where(
        Host.id.in_({v.host_id for _, v in rows if v.host_id})))}
    out = []
    for img, v in rows:
        name, dtype = domains.get(v.domain_id, (None, "dir"))
        cdrom = None
        if img.kind == ImageKind.ISO.value and v.path:
            # what a VmSpec's disks take to insert it (or ``PATCH .../devices/{id}`` with {"media": path})
            cdrom = {"device": "cdrom", "source": v.path, "format": "raw", "readonly": True}
        out.append(ImageOut(id=v.id, name=v.name, kind=img.kind, format=v.format, size_bytes=img.size_bytes,
                            capacity_bytes=v.capacity_bytes, sha256=img.sha256, domain_id=v.domain_id, domain=name,
                            host_id=v.host_id, host=hosts.get(v.host_id or ""), shared=not storage.is_local(dtype),
                            path=v.path, state=v.state, uploaded_at=img.uploaded_at, cdrom=cdrom))
    return out


def find_image(s: Session, ref: str) -> tuple[Image, Volume]:
    """An image by its (volume) id, or by name when one domain only has an image of that name."""
    q = select(Image, Volume).join(Volume, Volume.id == Image.volume_id)
    row = s.execute(q.where(Volume.id == ref)).first()
    if row is None:
        rows = s.execute(q.where(Volume.name == ref).limit(2)).all()
        if not rows:
            raise NotFound(f"no image {ref!r}", field="image")
        if len(rows) > 1:
            raise Conflict(f"images of several storage domains are named {ref!r}; use its id", field="image")
        row = rows[0]
    return row[0], row[1]


@images_router.get("", response_model=Page[ImageOut])
def list_images(ctx: Ctx, limit: Limit = 100, after: After = None, kind: str | None = None,
                domain: str | None = Query(None, alias="storage"), host: str | None = None,
                name: str | None = None) -> Page[ImageOut]:
    """The image library; ``kind=iso`` is what can go into a CD-ROM."""
    def q(s: Session) -> Page[ImageOut]:
        query = select(Image, Volume).join(Volume, Volume.id == Image.volume_id)
        if kind is not None:
            if kind not in (ImageKind.IMAGE.value, ImageKind.ISO.value):
                raise Invalid("kind is image or iso", field="kind")
            query = query.where(Image.kind == kind)
        if domain is not None:
            query = query.where(Volume.domain_id == storage_api.find_domain(s, domain, "storage").id)
        if host is not None:
            h = s.scalar(select(Host.id).where(or_(Host.id == host, Host.name == host)))
            if h is None:
                raise NotFound(f"no host {host!r}", field="host")
            query = query.where(Volume.host_id == h)
        if name is not None:
            query = query.where(Volume.name == name)
        if after is not None:
            query = query.where(Volume.id > after)
        rows = [(r[0], r[1]) for r in s.execute(query.order_by(Volume.id).limit(limit + 1)).all()]
        nxt = rows[limit - 1][1].id if len(rows) > limit else None
        return Page[ImageOut](items=_outs(s, rows[:limit]), next=nxt)
    return ctx.db.read(q)


@images_router.get("/{image}", response_model=ImageOut)
def show_image(ctx: Ctx, image: str) -> ImageOut:
    return ctx.db.read(lambda s: _outs(s, [find_image(s, image)])[0])


@images_router.delete("/{image}", status_code=202, response_model=TaskOut, responses=ACCEPTED)
async def delete_image(ctx: Ctx, image: str, response: Response) -> Any:
    """Delete an image and its volume (a task, as ``DELETE /volumes/{id}``). Refused while a VM uses it (a disk
    or CD-ROM naming its path, the VM it belongs to) or a thin clone reads from it."""
    volume_id = await ctx.db.run_read(lambda s: find_image(s, image)[1].id)
    return await storage_api.delete_volume(ctx, volume_id, response)


# --- upload ------------------------------------------------------------------------------------------------

def _default_domain(s: Session) -> StorageDomain:
    domains = list(s.scalars(select(StorageDomain).order_by(StorageDomain.name).limit(11)))
    if len(domains) == 1:
        return domains[0]
    if not domains:
        raise Conflict("there is no storage domain: add one (corral storage add)", field="storage")
    raise Invalid("name the storage domain (storage=): there are " + ", ".join(d.name for d in domains[:10]),
                  field="storage")


def _reserve(s: Session, name: str, domain_ref: str | None, host_ref: str | None,
             length: int) -> tuple[str, str, str, str, AgentTarget]:
    """The volume row of an upload (``creating``) on the chosen host: (volume id, domain name, domain type,
    host name, target). The row holds the name while the bytes flow, so two uploads cannot take it."""
    d = storage_api.find_domain(s, domain_ref, "storage") if domain_ref else _default_domain(s)
    if s.scalar(select(Volume.id).where(Volume.domain_id == d.id, Volume.name == name)):
        raise Conflict(f"storage domain {d.name} has a volume {name!r}", field="name")
    hosts = storage_api._active_hosts(s, d)
    if host_ref is not None:
        h = s.scalar(select(Host).where(or_(Host.id == host_ref, Host.name == host_ref)))
        if h is None:
            raise NotFound(f"no host {host_ref!r}", field="host")
        if h.cluster_id != d.cluster_id:
            raise Invalid(f"host {h.name} is not in the cluster of storage domain {d.name}", field="host")
        hosts = [r for r in hosts if r[0] == h.id]
        if not hosts:
            raise Conflict(f"storage domain {d.name} is not active on host {h.name}: "
                           f"{storage_api._not_active_reason(s, d)}", field="host")
    if not hosts:
        raise Conflict(f"storage domain {d.name} is active on no host: {storage_api._not_active_reason(s, d)}",
                       field="storage")
    host_id, host_name, target, free = hosts[0]
    if free is not None and length > free:
        raise Conflict(f"host {host_name} has {free} bytes free in storage domain {d.name}; the image is {length}",
                       field="Content-Length")
    v = Volume(id=new_id(), name=name, domain_id=d.id, format="raw", capacity_bytes=length,
               host_id=host_id if storage.is_local(d.type) else None, state=VolumeState.CREATING.value)
    s.add(v)
    s.flush()
    return v.id, d.name, d.type, host_name, target


def _drop(s: Session, volume_id: str) -> None:
    v = s.get(Volume, volume_id)
    if v is not None:
        s.delete(v)


@images_router.put("/{name}", status_code=201, response_model=ImageOut)
async def upload_image(ctx: Ctx, request: Request, name: str, domain: str | None = Query(None, alias="storage"),
                       host: str | None = None, sha256: str | None = None) -> ImageOut:
    """Upload an image or ISO (the raw bytes as the body, ``Content-Length`` required) into a new volume.
    ``storage``: the domain (default: the only one); ``host``: on a local domain, the host to put it on;
    ``sha256``: the checksum the bytes must have (else 422 and nothing is kept). The answer has the format the
    agent probed, the kind (``iso`` for an ISO 9660 image) and the sha256 of what the agent received."""
    if not _NAME.match(name):
        raise Invalid(f"image name {name!r} must match {storage_api.NAME}", field="name")
    if sha256 is not None and not _SHA256.match(sha256.lower()):
        raise Invalid("sha256 must be 64 hexadecimal digits", field="sha256")
    length_header = request.headers.get("content-length")
    if length_header is None or not length_header.isdigit():
        raise ApiError("an upload needs a Content-Length header (the file's size in bytes)",
                       field="Content-Length", code="length_required", status=411)
    length = int(length_header)
    if not 0 < length <= storage_api.MAX_VOLUME_BYTES:
        raise Invalid(f"Content-Length must be between 1 and {storage_api.MAX_VOLUME_BYTES}", field="Content-Length")
    try:
        volume_id, pool, dtype, host_name, target = await ctx.db.run(
            lambda s: _reserve(s, name, domain, host, length))
    except IntegrityError:  # the same name at the same moment
        raise Conflict(f"an image {name!r} is being uploaded already", field="name") from None

    try:  # an upload overwrites a volume of that name: never one the engine does not know of
        await ctx.agents.get_volume(target, pool, name)
    except AgentError as exc:
        if not storage.gone(exc):
            await ctx.db.run(lambda s: _drop(s, volume_id))
            raise _passed_on(exc, host_name) from None
    else:
        await ctx.db.run(lambda s: _drop(s, volume_id))
        raise Conflict(f"host {host_name} has a volume {name!r} in pool {pool} that the engine does not know; "
                       "choose another name or remove it there", field="name")

    sniffer = storage.HeadSniffer()

    async def body() -> AsyncIterator[bytes]:
        # the server hands the body over in pieces of a few KiB: sent on in slices of about PASS_ON bytes, so
        # the cost per piece (a write to the agent's connection) is paid a few times per MiB, not hundreds
        batch: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            if chunk:
                sniffer.feed(chunk)
                batch.append(chunk)
                size += len(chunk)
                if size >= PASS_ON:
                    yield b"".join(batch)
                    batch, size = [], 0
        if batch:
            yield b"".join(batch)

    try:
        made = await ctx.agents.upload_volume(target, pool, name, body(), length)
        got = str(made.get("sha256") or "")
        if sha256 is not None and got != sha256.lower():
            await _remove_on_host(ctx, target, pool, name)
            raise Invalid(f"the bytes received have sha256 {got}, not {sha256.lower()}: nothing was kept",
                          field="sha256", received=got)
    except BaseException as exc:
        # the client went away, the agent failed or the checksum differs: no record, no volume (the agent
        # deletes a partial one itself; it is asked again in case the failure was between the two)
        try:
            await ctx.db.run(lambda s: _drop(s, volume_id))
            if not isinstance(exc, (ApiError, AgentError)):
                await _remove_on_host(ctx, target, pool, name)
        except Exception:
            log.exception("cleaning up the interrupted upload of image %s", name)
        if isinstance(exc, AgentError):
            raise _passed_on(exc, host_name) from None
        if isinstance(exc, ClientDisconnect):
            log.info("upload of image %s to host %s: the client went away after %d of %d bytes; nothing kept",
                     name, host_name, sniffer.count, length)
        raise

    kind = ImageKind.ISO.value if made.get("format") == "raw" and storage.is_iso(sniffer.head) \
        else ImageKind.IMAGE.value

    def done(s: Session) -> ImageOut:
        v = s.get(Volume, volume_id)
        if v is None:
            raise NotFound("the image's volume was removed meanwhile", field="image")
        v.state, v.path = VolumeState.READY.value, made.get("path")
        if isinstance(made.get("format"), str):
            v.format = made["format"]
        if isinstance(made.get("capacity_bytes"), int):
            v.capacity_bytes = made["capacity_bytes"]
        img = Image(volume_id=v.id, kind=kind, sha256=got, size_bytes=length)
        s.add(img)
        where = f"on host {host_name}" if storage.is_local(dtype) else "(shared)"
        record(s, "image_uploaded", f"{kind} {name} ({v.format}, {length} bytes, sha256 {got}) uploaded to "
               f"storage domain {pool} {where}", object_type="volume", object_id=v.id)
        s.flush()
        return _outs(s, [(img, v)])[0]
    return await ctx.db.run(done)


def _passed_on(exc: AgentError, host_name: str) -> ApiError:
    """The agent's refusal as the engine's, naming the host (409 ``unsupported`` where libvirt lacks the call)."""
    extra = {k: v for k, v in exc.body.items() if k not in ("code", "message", "field")}
    return ApiError(f"host {host_name}: {exc.message}", field=exc.field, code=exc.code,
                    status=exc.status or 502, **extra)


async def _remove_on_host(ctx: Ctx, target: AgentTarget, pool: str, name: str) -> None:
    try:
        await ctx.agents.delete_volume(target, pool, name)
    except AgentError as exc:
        if not storage.gone(exc):
            log.warning("could not delete volume %s/%s after a failed upload: %s", pool, name, exc)


router.include_router(images_router)
