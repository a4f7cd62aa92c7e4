"""The engine's only way to a host: the agent's HTTP API (docs/agent-api.md).

One ``httpx.AsyncClient`` serves every agent so connections are pooled and reused across thousands of
hosts; each call names its target (URL + credential). Agent errors, which are always JSON
``{"code", "message", "field", ...}``, become ``AgentError``; a host that cannot be reached becomes
``AgentUnreachable`` so the monitor can tell "host down" from "host said no".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Event streams stay open; a read timeout longer than the agent's keep-alive only detects dead peers.
STREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=90.0, write=10.0, pool=10.0)


@dataclass(frozen=True)
class AgentTarget:
    """Where an agent is and how to authenticate to it (TLS client certificates come with deploy)."""

    url: str
    token: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class AgentError(Exception):
    """The agent answered with an error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body or {}


class AgentUnreachable(AgentError):
    """No answer: connection refused, timeout, TLS failure, or a reply that is not the agent API."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "unreachable", message)


def _error_from(resp: httpx.Response) -> AgentError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        return AgentError(resp.status_code, str(body["code"]), str(body.get("message", "")),
                          body.get("field"), body)
    text = resp.text[:200].strip()
    return AgentError(resp.status_code, "http_error", f"HTTP {resp.status_code}: {text}")


class AgentClient:
    """Pooled async client for every agent."""

    def __init__(self, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT, max_connections: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, verify: bool | str = True) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=2000,
                              keepalive_expiry=60)
        self._http = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport, verify=verify,
                                       headers={"User-Agent": "corral-engine"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, target: AgentTarget, method: str, path: str, *, json_body: Any = None,
                      params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        url = target.url.rstrip("/") + path
        kwargs: dict[str, Any] = {"headers": target.headers(), "params": params}
        if json_body is not None:
            kwargs["json"] = json_body
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=5.0)
        try:
            resp = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise AgentUnreachable(f"{target.url}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if resp.status_code >= 400:
            raise _error_from(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise AgentUnreachable(f"{target.url}: answer is not JSON") from exc

    # Host
    async def health(self, t: AgentTarget) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/health", timeout=5.0))

    async def host(self, t: AgentTarget) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/host"))

    async def host_stats(self, t: AgentTarget) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/host/stats"))

    # VMs
    async def list_vms(self, t: AgentTarget) -> list[dict[str, Any]]:
        body = await self.request(t, "GET", "/v1/vms")
        return list(body["items"])

    async def get_vm(self, t: AgentTarget, vm_id: str) -> dict[str, Any]:
        return dict(await self.request(t, "GET", f"/v1/vms/{vm_id}"))

    async def create_vm(self, t: AgentTarget, spec: dict[str, Any], *, start: bool = False) -> dict[str, Any]:
        return dict(await self.request(t, "POST", "/v1/vms", json_body=spec,
                                       params={"start": "true" if start else "false"}, timeout=120.0))

    async def plan(self, t: AgentTarget, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.request(t, "POST", "/v1/vms/plan", json_body=spec))

    async def action(self, t: AgentTarget, vm_id: str, action: str,
                     body: dict[str, Any] | None = None, timeout: float = 120.0) -> dict[str, Any]:
        return dict(await self.request(t, "POST", f"/v1/vms/{vm_id}/{action}", json_body=body, timeout=timeout))

    async def shutdown(self, t: AgentTarget, vm_id: str, *, timeout: int = 60, force: bool = False) -> dict[str, Any]:
        return await self.action(t, vm_id, "shutdown", {"timeout": timeout, "force": force},
                                 timeout=timeout + 30.0)

    async def delete_vm(self, t: AgentTarget, vm_id: str) -> None:
        await self.request(t, "DELETE", f"/v1/vms/{vm_id}")

    # Events
    async def events_poll(self, t: AgentTarget, after: int) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/events", params={"after": after, "wait": 0}))

    async def events_stream(self, t: AgentTarget, after: int) -> AsyncIterator[dict[str, Any]]:
        """Yield each event's data from the agent's SSE stream until it ends or fails."""
        url = target_url(t, "/v1/events")
        headers = {**t.headers(), "Accept": "text/event-stream", "Last-Event-ID": str(after)}
        try:
            async with self._http.stream("GET", url, params={"after": after}, headers=headers,
                                         timeout=STREAM_TIMEOUT) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error_from(resp)
                data: list[str] = []
                async for line in resp.aiter_lines():
                    if line == "":
                        if data:
                            payload = "\n".join(data)
                            data = []
                            try:
                                event = json.loads(payload)
                            except ValueError:
                                continue
                            if isinstance(event, dict):
                                yield event
                        continue
                    if line.startswith(":"):
                        continue  # comment / keep-alive
                    name, _, value = line.partition(":")
                    if name == "data":
                        data.append(value.removeprefix(" "))
        except httpx.HTTPError as exc:
            raise AgentUnreachable(f"{t.url}: event stream: {type(exc).__name__}: {exc}") from exc


def target_url(t: AgentTarget, path: str) -> str:
    return t.url.rstrip("/") + path
