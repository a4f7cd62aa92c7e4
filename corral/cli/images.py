"""``corral image upload|list|delete``: disk images and ISOs in storage domains, over the engine's REST API.

An upload streams the file (``PUT /api/v1/images/{name}``, the body read from disk in slices, never whole in
memory) with a progress bar on stderr, computes its sha256 on the way and compares it with the one the agent
computed over the bytes it received: a difference deletes the image again and exits 1.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from corral.cli.client import ApiClient
from corral.cli.common import fail
from corral.cli.output import Output, Rows, Text, output_option, show
from corral.cli.storage import human
from corral.cli.tasks import finish_task

OutputOpt = output_option()
CHUNK = 1 << 20  # read and sent 1 MiB at a time
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# writing may wait for the agent's disk; the answer comes after libvirt's stream is finished
UPLOAD_TIMEOUT = httpx.Timeout(connect=10.0, read=900.0, write=300.0, pool=10.0)

image_app = typer.Typer(no_args_is_help=True, help="Images and ISOs: files uploaded into a storage domain.")

COLUMNS = ["name", "kind", "format", "size", "storage", "host", "state", "sha256", "id"]


def _rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**i, "size": human(i.get("size_bytes")), "storage": i.get("domain"),
             "host": i.get("host") or ("(shared)" if i.get("shared") else "")} for i in items]


def _chunks(path: Path, digest: Any, progress: Progress, task: Any) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while data := fh.read(CHUNK):
            digest.update(data)
            progress.update(task, advance=len(data))
            yield data


@image_app.command("upload")
def image_upload(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="the image or ISO file"),
    name: str = typer.Option(None, "--name", help="default: the file's name"),
    storage: str = typer.Option(None, "--storage", help="storage domain (default: the only one)"),
    host: str = typer.Option(None, "--host", help="local domains: the host to put it on (default: the active "
                             "host with the most free space)"),
    progress_bar: bool = typer.Option(None, "--progress/--no-progress",
                                      help="a progress bar on stderr (default: when stderr is a terminal)"),
    output: Output = OutputOpt,
) -> None:
    """Upload a disk image or an ISO (streamed through the engine to a host): its format is probed from the
    bytes, an ISO 9660 image becomes CD-ROM media (kind iso), and the sha256 is checked end to end."""
    name = name or file.name
    if not NAME.match(name):
        fail(f"image name {name!r}: letters, digits, '.', '_' and '-', starting with a letter or digit "
             "(give one with --name)")
    size = file.stat().st_size
    if size == 0:
        fail(f"{file} is empty")
    api = ApiClient()
    params = {k: v for k, v in (("storage", storage), ("host", host)) if v}
    digest = hashlib.sha256()
    err = Console(stderr=True)
    show_bar = err.is_terminal if progress_bar is None else progress_bar
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=not show_bar, transient=False) as progress:
        task = progress.add_task(f"uploading {name}", total=size)
        image = api.request("PUT", f"/images/{quote(name, safe='')}", params=params,
                            content=_chunks(file, digest, progress, task),
                            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                            timeout=UPLOAD_TIMEOUT)
    local = digest.hexdigest()
    if image.get("sha256") != local:
        api.request("DELETE", f"/images/{image['id']}")
        fail(f"image {name}: the host received bytes with sha256 {image.get('sha256')}, the file has {local}: "
             "the image was deleted", code=1)
    where = f"on host {image['host']}" if image.get("host") else "(shared)"
    show(image, output, Rows(COLUMNS, _rows([image]), "image"),
         Text(f"{image['kind']} {name} uploaded to {image.get('domain')} {where}: {image['format']}, "
              f"{human(image['size_bytes'])}, sha256 {local} (checked)"))


@image_app.command("list")
def image_list(kind: str = typer.Option(None, "--kind", help="image or iso (CD-ROM media)"),
               storage: str = typer.Option(None, "--storage", help="storage domain"),
               host: str = typer.Option(None, "--host"), name: str = typer.Option(None, "--name"),
               limit: int = typer.Option(100), after: str = typer.Option(None),
               output: Output = OutputOpt) -> None:
    data = ApiClient().get("/images", kind=kind, storage=storage, host=host, name=name, limit=limit, after=after)
    show(data, output, Rows(COLUMNS, _rows(data["items"]), "images"))


@image_app.command("delete")
def image_delete(image: str, storage: str = typer.Option(None, "--storage", help="its storage domain, where "
                 "several domains have an image of that name"), output: Output = OutputOpt) -> None:
    """Delete an image and its volume; refused while a VM uses it."""
    api = ApiClient()
    ref = image
    if storage:
        found = api.get("/images", storage=storage, name=image, limit=2)["items"]
        if not found:
            fail(f"storage domain {storage} has no image {image!r}")
        ref = found[0]["id"]
    task = api.request("DELETE", f"/images/{quote(ref, safe='')}")
    result = finish_task(api, task, True, output, f"deleting image {image}", progress=sys.stderr.isatty()) or {}
    show(result, output, Text(f"image {result.get('name', image)} deleted"))


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")
