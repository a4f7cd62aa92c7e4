"""Bounded input (issue 14): every integer a request carries has a maximum, every list a length cap, and no
request body above 1 MiB is read (image uploads, which stream, excepted). On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from corral.domain.spec import MAX_DEVICES, VmSpec
from corral.engine.app import create_app
from corral.engine.limits import MAX_BODY
from tests.engine.conftest import Api


def _unbounded(doc: dict[str, Any]) -> list[str]:
    """Integers without a maximum and arrays without maxItems in every request parameter and body of ``doc``."""
    comps = doc.get("components", {}).get("schemas", {}) | doc.get("$defs", {})
    found: list[str] = []

    def walk(schema: Any, where: str, seen: frozenset[str]) -> None:
        if not isinstance(schema, dict):
            return
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            if name not in seen:
                walk(comps[name], f"{where}<{name}>", seen | {name})
            return
        bounded = "enum" in schema or "const" in schema
        if schema.get("type") == "integer" and not bounded and "maximum" not in schema:
            found.append(where)
        if schema.get("type") == "array" and "maxItems" not in schema:
            found.append(where + "[]")
        for key in ("anyOf", "oneOf", "allOf"):
            for sub in schema.get(key, []):
                walk(sub, where, seen)
        for name, sub in (schema.get("properties") or {}).items():
            walk(sub, f"{where}.{name}", seen)
        walk(schema.get("items"), where + "[]", seen)
        walk(schema.get("additionalProperties"), where + "{}", seen)

    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                walk(param.get("schema"), f"{method.upper()} {path} ?{param['name']}", frozenset())
            for content in op.get("requestBody", {}).get("content", {}).values():
                walk(content.get("schema"), f"{method.upper()} {path} body", frozenset())
    if "properties" in doc:
        walk(doc, doc.get("title", "schema"), frozenset())
    return found


def test_every_request_integer_and_list_is_bounded(tmp_path: Any) -> None:
    """A new route or field with an unbounded integer or list fails here, naming it."""
    app = create_app(f"sqlite:///{tmp_path / 'e.db'}", start_monitor=False)
    assert _unbounded(app.openapi()) == []
    assert _unbounded(VmSpec.model_json_schema()) == []  # POST/PUT /vms take a VmSpec


def test_events_after_beyond_bigint_is_refused_by_name(api: Api) -> None:
    body = api.get("/events", status=422, after=2**63)
    assert body["field"] == "after"
    assert api.get("/events", after=2**63 - 1)["items"] == []


def test_vm_lists_are_capped(api: Api) -> None:
    disks = [{"source": f"/srv/d{i}.img"} for i in range(MAX_DEVICES + 1)]
    body = api.post("/vms", {"name": "many", "memory_mib": 64, "disks": disks}, status=422)
    assert body["field"] == "disks" and str(MAX_DEVICES) in body["message"]
    nics = [{"source": "br0"}] * (MAX_DEVICES + 1)
    assert api.post("/vms", {"name": "many", "memory_mib": 64, "nics": nics}, status=422)["field"] == "nics"
    api.post("/vms", {"name": "many", "memory_mib": 64, "disks": disks[:MAX_DEVICES]}, status=201)


def test_request_body_over_the_limit_is_413_json(api: Api) -> None:
    big = b'{"name": "' + b"x" * MAX_BODY + b'"}'
    headers = {**api.headers, "Content-Type": "application/json"}
    resp = api.client.post("/api/v1/clusters", content=big, headers=headers)
    assert resp.status_code == 413 and resp.json()["code"] == "too_large", resp.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it is read
        yield b'{"name": "'
        for _ in range(MAX_BODY // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    resp = api.client.post("/api/v1/clusters", content=chunks(), headers=headers)
    assert resp.status_code == 413 and resp.json()["code"] == "too_large", resp.text
    # the limit is the body's, not the route's: a small body still works
    assert api.post("/clusters", {"name": "small"}, status=201)["name"] == "small"


def test_image_upload_is_not_held_to_the_limit(api: Api) -> None:
    """An upload streams to a host: past 1 MiB it gets as far as the route (here: no storage domain yet)."""
    resp = api.client.put("/api/v1/images/big.img", content=b"\0" * (2 * MAX_BODY),
                          headers={**api.headers, "Content-Type": "application/octet-stream"})
    assert resp.status_code not in (413, 500), resp.text
    assert resp.json()["code"] != "too_large"
