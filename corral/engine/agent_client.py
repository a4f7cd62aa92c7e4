"""The engine's only way to a host: the agent's HTTP API (docs/agent-api.md).

One pooled client (``AgentClient``) serves every agent so connections are reused across thousands of
hosts; each call names its target (URL + credential). Agent errors, which are always JSON
``{"code", "message", "field", ...}``, become ``AgentError``; a host that cannot be reached becomes
``AgentUnreachable`` so the monitor can tell "host down" from "host said no".
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import msgspec

DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
# Event streams stay open; a read timeout longer than the agent's keep-alive only detects dead peers.
STREAM_TIMEOUT = httpx.Timeout(connect=5.0, read=90.0, write=10.0, pool=10.0)


@dataclass(frozen=True)
class AgentTarget:
    """Where an agent is and how to authenticate to it: a bearer token (development), or none for an
    ``https://`` agent deployed over SSH, which the pooled client's engine certificate authenticates to."""

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

    @property
    def maybe_delivered(self) -> bool:
        """False only when no connection was made (refused, no route, TLS handshake failed): the agent cannot
        have acted on the request. A drop or timeout after sending leaves it unknown whether it did."""
        return not isinstance(self.__cause__, aiohttp.ClientConnectorError)


class VmBrief(msgspec.Struct):
    """What monitoring reads of one ``VmInfo`` in ``GET /v1/vms``: stats and devices are skipped while decoding,
    and the spec stays raw JSON bytes (decoded only for a VM new to the database)."""

    id: Any = None
    name: Any = None
    state: Any = None
    reason: Any = None
    external: Any = None
    memory_mib: Any = None
    vcpus: Any = None
    spec: msgspec.Raw = msgspec.Raw(b"null")

    def as_dict(self) -> dict[str, Any]:
        spec = bytes(self.spec)
        return {"id": self.id, "name": self.name, "state": self.state, "reason": self.reason,
                "external": self.external, "memory_mib": self.memory_mib, "vcpus": self.vcpus,
                "spec": None if spec == b"null" else spec}


class _VmBriefList(msgspec.Struct):
    items: list[VmBrief]


_BRIEF = msgspec.json.Decoder(_VmBriefList)


HEADERS = {"User-Agent": "corral-engine"}
EVENT_PAGE = 1000  # the most events the agent answers to one ``GET /v1/events?wait=0``
UPLOAD_READ = 600.0  # an upload's longest silence: the agent finishing libvirt's stream after the last byte
KEEPALIVE_SECONDS = 60.0  # shorter than the agents' own keep-alive, so a reused connection is rarely closed
# The largest answer read from an agent (a host's VM list with thousands of VMs is a few MiB): a host that
# answers more is treated as not speaking the agent API, rather than filling the engine's memory.
MAX_ANSWER = 64 * 1024 * 1024


def _ssl_context(verify: bool | str) -> ssl.SSLContext:
    """What httpx would build from ``verify`` (certifi's CA bundle, a CA file, or no verification), once."""
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if isinstance(verify, str):
        path = Path(verify)
        return ssl.create_default_context(capath=verify) if path.is_dir() else ssl.create_default_context(
            cafile=verify)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


_JSON = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder().encode


def _error_from(status: int, content: bytes) -> AgentError:
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict) and "code" in body:
        return AgentError(status, str(body["code"]), str(body.get("message", "")), body.get("field"), body)
    # not the agent's error shape: its text is not passed on (it could be anything a host or proxy chose to send)
    return AgentError(status, "http_error", f"HTTP {status} without the agent's JSON error ({len(content)} bytes)")


async def _read(aresp: aiohttp.ClientResponse, url: str) -> tuple[int, bytes]:
    """Status and body, at most ``MAX_ANSWER`` bytes; a redirect is an error, never followed (a host could send
    the engine's credentials elsewhere)."""
    if 300 <= aresp.status < 400:
        raise AgentUnreachable(f"{url}: answered a redirect (HTTP {aresp.status}), which is not followed")
    if (aresp.content_length or 0) > MAX_ANSWER:
        raise AgentUnreachable(f"{url}: answer larger than {MAX_ANSWER} bytes")
    content = await aresp.content.read(MAX_ANSWER + 1)
    while len(content) <= MAX_ANSWER and (more := await aresp.content.read(MAX_ANSWER + 1 - len(content))):
        content += more
    if len(content) > MAX_ANSWER:
        raise AgentUnreachable(f"{url}: answer larger than {MAX_ANSWER} bytes")
    return aresp.status, content


def _seg(name: str) -> str:
    """A name as one path segment."""
    return quote(name, safe="")


def _aio_timeout(t: httpx.Timeout, total: float | None = None) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=t.connect, sock_read=None if total else t.read)


class AgentClient:
    """Pooled async client for every agent. ``verify`` may be an ``ssl.SSLContext`` that trusts the engine's CA
    and carries the engine's client certificate (``EnginePki.client_ssl_context``): mutual TLS to every agent.

    The connections are aiohttp's: one pool, reused across polls (no cap on idle ones), HTTP parsed in C, a
    connection found by a dict lookup; about 0.25 ms of CPU per poll where httpx takes 1.2 ms and, holding
    one connection per agent and per event stream in one pool, looks at every connection on each request
    (O(hosts^2) per monitoring cycle). Tests talk to it over real loopback servers: it has no other path."""

    def __init__(self, *, timeout: httpx.Timeout = DEFAULT_TIMEOUT, max_connections: int | None = None,
                 verify: bool | str | ssl.SSLContext = True) -> None:
        self._timeout = timeout
        self._max_connections = max_connections or 0
        self._session: aiohttp.ClientSession | None = None
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else _ssl_context(verify)

    def _aio(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running event loop
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0, ssl=self._ssl or True,
                                             keepalive_timeout=KEEPALIVE_SECONDS)
            self._session = aiohttp.ClientSession(connector=connector, headers=HEADERS,
                                                  timeout=_aio_timeout(self._timeout))
        return self._session

    async def release(self, t: AgentTarget) -> None:
        """An agent that is no longer watched: its idle connections expire by themselves."""

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, target: AgentTarget, method: str, path: str, *, json_body: Any = None,
                      params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        content = await self._send(target, method, path, json_body=json_body, params=params, timeout=timeout)
        if not content:
            return None
        try:
            return _JSON.decode(content)  # msgspec: a third of json.loads on an agent's answers
        except msgspec.DecodeError as exc:
            raise AgentUnreachable(f"{target.url}: answer is not JSON") from exc

    async def _send(self, target: AgentTarget, method: str, path: str, *, json_body: Any = None,
                    params: dict[str, Any] | None = None, timeout: float | None = None) -> bytes:
        """The answer's body; ``AgentError`` for an error status, ``AgentUnreachable`` for no answer."""
        url = target.url.rstrip("/") + path
        try:
            try:
                status, content = await self._exchange(target, method, url, json_body, params, timeout)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if method != "GET" or isinstance(exc, aiohttp.ClientConnectorError):
                    raise  # a host that refuses or cannot be reached is not retried at once (one timeout)
                # the agent closed a kept-alive connection as it was reused: a GET is safe to send again
                status, content = await self._exchange(target, method, url, json_body, params, timeout)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise AgentUnreachable(f"{target.url}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if status >= 400:
            raise _error_from(status, content)
        return b"" if status == 204 else content

    async def _exchange(self, target: AgentTarget, method: str, url: str, json_body: Any,
                        params: dict[str, Any] | None, timeout: float | None) -> tuple[int, bytes]:
        query = {k: str(v) for k, v in params.items()} if params else None
        headers = target.headers()
        data = None
        if json_body is not None:
            data = _ENCODE(json_body)
            headers["Content-Type"] = "application/json"
        async with self._aio().request(method, url, headers=headers, params=query, data=data, allow_redirects=False,
                                       timeout=_aio_timeout(self._timeout, timeout)) as aresp:
            return await _read(aresp, url)

    # Host
    async def health(self, t: AgentTarget) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/health", timeout=5.0))

    async def host(self, t: AgentTarget, *, timeout: float | None = None) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/host", timeout=timeout))

    async def host_stats(self, t: AgentTarget) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/host/stats"))

    # VMs
    async def list_vms(self, t: AgentTarget) -> list[dict[str, Any]]:
        body = await self.request(t, "GET", "/v1/vms")
        return list(body["items"])

    async def list_vm_states(self, t: AgentTarget, *, timeout: float | None = None) -> list[VmBrief]:
        """``GET /v1/vms`` as monitoring needs it (``VmBrief``): decoded several times faster than the whole
        document, which matters when thousands of hosts answer every few seconds."""
        content = await self._send(t, "GET", "/v1/vms", timeout=timeout)
        try:
            return _BRIEF.decode(content).items
        except msgspec.DecodeError as exc:  # ValidationError too: an answer that is not a VM list
            raise AgentUnreachable(f"{t.url}: answer is not a VM list: {exc}") from exc

    async def websocket(self, t: AgentTarget, path: str) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket to the agent (the console relay, corral.engine.consoles), on the pooled session: the same
        TLS client certificate or token as every call. ``AgentUnreachable`` when the handshake fails."""
        url = t.url.rstrip("/") + path
        try:
            return await self._aio().ws_connect(url, headers=t.headers(), protocols=("binary",), heartbeat=30.0,
                                                timeout=aiohttp.ClientWSTimeout(ws_close=5.0), max_msg_size=0)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise AgentUnreachable(f"{t.url}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc

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

    # Storage (docs/agent-api.md, storage pools and volumes): a storage domain is a pool of the same name
    async def storage_pools(self, t: AgentTarget, *, timeout: float | None = None) -> list[dict[str, Any]]:
        body = await self.request(t, "GET", "/v1/storage/pools", timeout=timeout)
        return [dict(p) for p in body["items"]]

    async def put_pool(self, t: AgentTarget, name: str, body: dict[str, Any], *,
                       timeout: float = 120.0) -> dict[str, Any]:
        """Define (or keep), build, start and autostart the pool: idempotent. 409: another definition has
        that name; 502: it is defined but cannot start (a mount that fails), with libvirt's reason."""
        return dict(await self.request(t, "PUT", f"/v1/storage/pools/{_seg(name)}", json_body=body,
                                       timeout=timeout))

    async def delete_pool(self, t: AgentTarget, name: str) -> None:
        await self.request(t, "DELETE", f"/v1/storage/pools/{_seg(name)}", timeout=60.0)

    async def pool_volumes(self, t: AgentTarget, pool: str) -> list[dict[str, Any]]:
        body = await self.request(t, "GET", f"/v1/storage/pools/{_seg(pool)}/volumes")
        return [dict(v) for v in body["items"]]

    async def create_volume(self, t: AgentTarget, pool: str, body: dict[str, Any], *,
                            timeout: float = 600.0) -> dict[str, Any]:
        return dict(await self.request(t, "POST", f"/v1/storage/pools/{_seg(pool)}/volumes", json_body=body,
                                       timeout=timeout))

    async def delete_volume(self, t: AgentTarget, pool: str, volume: str) -> None:
        """409 when a domain defined on the host uses it (the agent names it)."""
        await self.request(t, "DELETE", f"/v1/storage/pools/{_seg(pool)}/volumes/{_seg(volume)}",
                           timeout=120.0)

    async def resize_volume(self, t: AgentTarget, pool: str, volume: str, capacity_bytes: int) -> dict[str, Any]:
        """Grow a volume; a running domain of the host that uses it grows it online (``online`` in the answer)."""
        return dict(await self.request(t, "POST", f"/v1/storage/pools/{_seg(pool)}/volumes/{_seg(volume)}/resize",
                                       json_body={"capacity_bytes": capacity_bytes}, timeout=300.0))

    async def get_volume(self, t: AgentTarget, pool: str, volume: str) -> dict[str, Any]:
        return dict(await self.request(t, "GET", f"/v1/storage/pools/{_seg(pool)}/volumes/{_seg(volume)}"))

    async def upload_volume(self, t: AgentTarget, pool: str, volume: str, body: AsyncIterator[bytes], length: int,
                            *, fmt: str | None = None) -> dict[str, Any]:
        """Stream ``length`` bytes from ``body`` into a volume (created raw when missing): the agent's ``Volume``
        with ``sha256`` of what it received. Nothing is held whole: each chunk goes on as it comes. Whatever
        ends it early (``body`` raising, a short body, the agent failing) leaves no volume on the host (the
        agent deletes it); ``body``'s own exception is raised again as it was."""
        url = target_url(t, f"/v1/storage/pools/{_seg(pool)}/volumes/{_seg(volume)}/content")
        headers = {**t.headers(), "Content-Length": str(length), "Content-Type": "application/octet-stream"}
        failed: list[BaseException] = []

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in body:
                    yield chunk
            except BaseException as exc:  # kept: aiohttp reports it as a broken request
                failed.append(exc)
                raise

        # no total timeout (a large image takes as long as it takes); a silent agent is still noticed
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout.connect, sock_read=UPLOAD_READ)
        try:
            async with self._aio().put(url, data=chunks(), headers=headers, params={"format": fmt} if fmt else None,
                                       timeout=timeout, allow_redirects=False) as aresp:
                status, content = await _read(aresp, t.url)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            if failed:
                raise failed[0] from None
            raise AgentUnreachable(f"{t.url}: upload: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        except BaseException:
            if failed:
                raise failed[0] from None
            raise
        if status >= 400:
            raise _error_from(status, content)
        try:
            return dict(_JSON.decode(content))
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise AgentUnreachable(f"{t.url}: upload: answer is not JSON") from exc

    # Events
    async def events_poll(self, t: AgentTarget, after: int) -> dict[str, Any]:
        return dict(await self.request(t, "GET", "/v1/events", params={"after": after, "wait": 0}))

    async def event_position(self, t: AgentTarget) -> tuple[str | None, int]:
        """Where the agent's event log ends now: ``(epoch, seq)`` of its last event, ``(None, 0)`` for an empty
        log. A host being added is read from there, so the events it had before (its backlog) are not taken
        for new ones. The agent API has no call for the end alone: the log is paged through (it keeps at most
        10,000 events, ten pages); an agent that restarts meanwhile starts a new epoch, followed the same way."""
        position: tuple[str | None, int] = (None, 0)
        for _ in range(1000):
            items = (await self.events_poll(t, position[1])).get("items") or []
            last = items[-1] if items and isinstance(items[-1], dict) else None
            seq = last.get("seq") if last is not None else None
            if last is None or not isinstance(seq, int):
                break
            epoch = last.get("epoch")
            found = (epoch if isinstance(epoch, str) and epoch else None, seq)
            if found == position:
                break
            position = found
            if len(items) < EVENT_PAGE:
                break  # a page short of full is the end of the log
        return position

    async def events_stream(self, t: AgentTarget, after: int) -> AsyncIterator[dict[str, Any]]:
        """Yield each event's data from the agent's SSE stream until it ends or fails."""
        headers = {**t.headers(), "Accept": "text/event-stream", "Last-Event-ID": str(after)}
        try:
            data: list[str] = []
            async for line in self._stream_lines(target_url(t, "/v1/events"), {"after": str(after)}, headers):
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
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise AgentUnreachable(f"{t.url}: event stream: {type(exc).__name__}: {exc}") from exc

    async def _stream_lines(self, url: str, params: dict[str, str], headers: dict[str, str]) -> AsyncIterator[str]:
        """The lines of a streamed answer, without their line ends; ``AgentError`` for an error status."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=STREAM_TIMEOUT.connect, sock_read=STREAM_TIMEOUT.read)
        async with self._aio().get(url, params=params, headers=headers, timeout=timeout,
                                   allow_redirects=False) as aresp:
            if aresp.status >= 300:
                raise _error_from(*await _read(aresp, url))
            async for raw in aresp.content:
                yield raw.decode(errors="replace").rstrip("\r\n")


def target_url(t: AgentTarget, path: str) -> str:
    return t.url.rstrip("/") + path
