"""Wheels of the running Corral and of what it depends on, for deploying the agent.

The engine ships the Corral it runs, not whatever an index has: ``corral_wheel`` builds a wheel from the
installed package. An editable install (a development checkout) is packed from its source tree and its
dist-info metadata; a regular install is packed back from the files its ``RECORD`` lists. The same
re-packing gives wheels of every installed dependency (``dependency_wheels``), so a host of the same
Python version and architecture installs with ``pip --no-index`` and needs no package index; the
wheel tags are the ones the engine's own install recorded, so pip refuses them on a host that cannot
run them. Wheels are cached under the engine's data dir by content hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import corral

# libvirt's binding is best taken from the host's distribution (it matches the host's libvirt); the
# agent's virtualenv sees it through --system-site-packages. The re-packed one is only a fallback.
PREFER_SYSTEM = {"libvirt-python"}
_SKIP_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


class WheelError(Exception):
    pass


@dataclass(frozen=True)
class Wheel:
    path: Path
    project: str
    sha256: str


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def engine_platform() -> dict[str, str]:
    """What a host must match to use the engine's binary wheels."""
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "platform": sysconfig.get_platform()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _write_wheel(target: Path, files: list[tuple[str, bytes]], dist_info: str) -> None:
    """Write a wheel deterministically (sorted, fixed timestamps) with a fresh RECORD."""
    tmp = target.with_name(target.name + ".tmp")
    records = []
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for arcname, data in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=1)  # fast; built once per engine version
            records.append(_record_line(arcname, data))
        records.append(f"{dist_info}/RECORD,,")
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, "\n".join(records) + "\n")
    tmp.replace(target)


def _wheel_tag(dist: metadata.Distribution) -> str:
    text = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
    if not tags:
        raise WheelError(f"{dist.metadata['Name']}: installed without a wheel tag (no WHEEL file)")
    # compressed tag set, as in py2.py3-none-any
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def _editable_source(dist: metadata.Distribution) -> Path | None:
    raw = dist.read_text("direct_url.json")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    if not info.get("dir_info", {}).get("editable"):
        return None
    url = str(info.get("url", ""))
    return Path(url.removeprefix("file://")) if url.startswith("file://") else None


def _dist_info_name(dist: metadata.Distribution) -> str:
    return f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}.dist-info"


def _repack(dist: metadata.Distribution, out_dir: Path) -> Wheel:
    """A wheel of an installed (non-editable) distribution, from the files of its RECORD."""
    files: list[tuple[str, bytes]] = []
    info_dir = _dist_info_name(dist)
    for f in dist.files or []:
        name = str(f)
        if name.startswith("..") or "__pycache__" in name or name.endswith(".pyc"):
            continue
        if name.split("/", 1)[0].endswith(".dist-info"):
            if name.rsplit("/", 1)[-1] in _SKIP_DIST_INFO:
                continue
            name = f"{info_dir}/{name.split('/', 1)[1]}"
        try:
            data = Path(str(f.locate())).read_bytes()
        except OSError as exc:
            raise WheelError(f"{dist.metadata['Name']}: cannot read {f}: {exc.strerror}") from None
        files.append((name, data))
    return _finish(dist, files, info_dir, out_dir)


def _finish(dist: metadata.Distribution, files: list[tuple[str, bytes]], info_dir: str, out_dir: Path) -> Wheel:
    digest = hashlib.sha256()
    for name, data in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    tag = _wheel_tag(dist) if dist.read_text("WHEEL") else "py3-none-any"
    project = normalize(dist.metadata["Name"])
    dest = out_dir / digest.hexdigest()[:16]
    target = dest / f"{project.replace('-', '_')}-{dist.version}-{tag}.whl"
    if not target.exists():
        dest.mkdir(parents=True, exist_ok=True)
        _write_wheel(target, files, info_dir)
    return Wheel(target, project, _sha256(target))


def _installed(name: str) -> metadata.Distribution:
    """The installed distribution, preferring a ``.dist-info`` (a source checkout on ``sys.path`` may hold a
    stale ``.egg-info`` of the same name that ``metadata.distribution`` would find first)."""
    dists = list(metadata.distributions(name=name))
    if not dists:
        raise WheelError(f"{name} is required by the agent but not installed on the engine")
    return next((d for d in dists if d.read_text("METADATA")), dists[0])


def corral_wheel(out_dir: Path) -> Wheel:
    """A wheel of the Corral this process runs: from its source tree when it runs from a checkout (an editable
    install), else packed back from its installed files."""
    dist = _installed("corral")
    pkg = Path(corral.__file__).resolve().parent
    src = _editable_source(dist)
    if src is None and not (pkg.parent / "pyproject.toml").exists():
        return _repack(dist, out_dir)
    info_dir = _dist_info_name(dist)
    files: list[tuple[str, bytes]] = []
    for path in sorted(pkg.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
            continue
        files.append((path.relative_to(pkg.parent).as_posix(), path.read_bytes()))
    for meta in ("METADATA", "entry_points.txt", "top_level.txt"):
        text = dist.read_text(meta)
        if text is not None:
            files.append((f"{info_dir}/{meta}", text.encode()))
    wheel_meta = "Wheel-Version: 1.0\nGenerator: corral-deploy\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files.append((f"{info_dir}/WHEEL", wheel_meta.encode()))
    return _finish(dist, files, info_dir, out_dir)


def _requirements(dist: metadata.Distribution, extras: set[str]) -> list[Requirement]:
    out = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            out.append(req)
    return out


def dependency_wheels(out_dir: Path, root: str = "corral") -> list[Wheel]:
    """Wheels of every installed distribution ``root`` needs (not its extras), re-packed."""
    seen: dict[str, metadata.Distribution] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    queue: list[tuple[str, set[str]]] = [(root, set())]
    while queue:
        name, extras = queue.pop()
        if (normalize(name), frozenset(extras)) in visited:
            continue
        visited.add((normalize(name), frozenset(extras)))
        dist = _installed(name)
        key = normalize(dist.metadata["Name"])
        seen[key] = dist
        for req in _requirements(dist, extras):
            queue.append((req.name, set(req.extras)))
    seen.pop(normalize(root), None)
    return [_repack(dist, out_dir) for _key, dist in sorted(seen.items())]
