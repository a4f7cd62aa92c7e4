"""Events: sequence numbers, polling with ``after``, and the SSE stream resumed with ``Last-Event-ID``.

libvirt's lifecycle events arrive on the agent's libvirt event thread, so tests wait for them. The SSE
tests run the app under a real uvicorn (in a thread of this process): an in-process ASGI transport would
buffer the endless stream.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from corral.agent.events import EventBus
from corral.agent.service import Agent

from .conftest import AUTH, Api, Served, spec, wait_for


def poll(api: Api, after: int, **params: Any) -> dict[str, Any]:
    return api.get("/v1/events", params={"after": after, "wait": 0, **params}, expect=200).json()  # type: ignore[no-any-return]


def lifecycle(api: Api, vm_id: str, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in poll(api, after)["items"] if e["type"] == "lifecycle" and e["vm_id"] == vm_id]


def test_recovery_is_the_first_event(api: Api) -> None:
    body = poll(api, 0)
    first = body["items"][0]
    assert first["seq"] == 1 and first["type"] == "agent" and first["state"] == "recovered"
    assert first["detail"] == {"managed": 0, "external": 0, "running": 0}
    assert body["last"] == body["items"][-1]["seq"]


def test_lifecycle_events_follow_the_vm(api: Api) -> None:
    data = spec()
    vm_id = api.create(data)["id"]
    api.post(f"/v1/vms/{vm_id}/start", expect=200)
    api.post(f"/v1/vms/{vm_id}/pause", expect=200)
    api.post(f"/v1/vms/{vm_id}/resume", expect=200)
    api.post(f"/v1/vms/{vm_id}/destroy", expect=200)
    api.delete(f"/v1/vms/{vm_id}", expect=204)
    events = wait_for(lambda: (ev := lifecycle(api, vm_id)) and ev[-1]["detail"]["event"] == "undefined" and ev,
                      10, "the undefined event")
    assert [e["detail"]["event"] for e in events] == ["defined", "started", "suspended", "resumed", "stopped",
                                                      "undefined"]
    assert [e["state"] for e in events] == ["down", "up", "paused", "up", "down", "deleted"]
    assert all(e["vm_name"] == data["name"] and e["detail"]["external"] in (False, None) for e in events)
    seqs = [e["seq"] for e in poll(api, 0)["items"]]
    assert seqs == list(range(1, len(seqs) + 1))  # gapless and growing


def test_device_changes_are_events(api: Api) -> None:
    data = spec(max_memory_mib=512)
    vm_id = api.create(data)["id"]
    last = poll(api, 0)["last"]
    api.put(f"/v1/vms/{vm_id}/memory", json={"memory_mib": 300}, expect=200)
    api.patch(f"/v1/vms/{vm_id}/devices/{data['nics'][0]['id']}", json={"link": "down"}, expect=200)
    device = [e for e in poll(api, last)["items"] if e["type"] == "device"]
    assert [e["detail"]["change"] for e in device] == ["memory", "link"]
    assert device[0]["detail"]["memory_mib"] == 300 and device[1]["detail"]["device_id"] == data["nics"][0]["id"]


def test_polling_with_after_returns_only_later_events(api: Api) -> None:
    vm_id = api.create(spec())["id"]
    wait_for(lambda: lifecycle(api, vm_id), 10, "the defined event")
    mark = poll(api, 0)["last"]
    assert poll(api, mark) == {"items": [], "last": mark}
    api.post(f"/v1/vms/{vm_id}/start", expect=200)
    later = wait_for(lambda: lifecycle(api, vm_id, mark), 10, "the started event")
    assert later[0]["detail"]["event"] == "started"
    body = poll(api, mark)
    assert body["items"] and all(e["seq"] > mark for e in body["items"])
    assert body["last"] == body["items"][-1]["seq"]
    # Last-Event-ID works for polling too; after= wins over it
    by_header = api.get("/v1/events?wait=0", headers={"Last-Event-ID": str(mark)}, expect=200).json()
    assert by_header == body
    assert api.get(f"/v1/events?wait=0&after={body['last']}", headers={"Last-Event-ID": "0"},
                   expect=200).json()["items"] == []
    api.get("/v1/events?after=-1&wait=0", expect=422)


def test_long_poll_wakes_up_on_an_event(agent_factory: Callable[..., Agent]) -> None:
    """The event is published only once the server's long poll is waiting (it registered a waiter on the bus),
    so an answer holding it proves the poll waited and was woken by it: a poll that timed out answers []."""
    agent = agent_factory()
    api = Api(agent)
    last = agent.bus.last_seq
    waited = threading.Event()

    def publish_once_the_poll_waits() -> None:
        deadline = time.monotonic() + 60
        while not agent.bus._waiters:  # registered by the server's long poll when it has nothing to answer
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        waited.set()
        agent.bus.publish("agent", state="ping")

    publisher = threading.Thread(target=publish_once_the_poll_waits)
    publisher.start()
    body = api.get("/v1/events", params={"after": last, "wait": 60}, expect=200).json()
    publisher.join()
    assert waited.is_set(), "the long poll answered without waiting"
    assert [e["state"] for e in body["items"]] == ["ping"]
    assert body["last"] == agent.bus.last_seq
    # a long poll that nothing wakes up answers an empty list and the same position
    assert api.get("/v1/events", params={"after": body["last"], "wait": 0.3}, expect=200).json() == {
        "items": [], "last": body["last"]}
    assert not agent.bus._waiters  # the waiters are gone with their requests


def test_the_bus_keeps_the_last_events_only() -> None:
    bus = EventBus(keep=5)
    for i in range(12):
        bus.publish("agent", state=str(i))
    assert [e.seq for e in bus.since(0)] == [8, 9, 10, 11, 12]
    assert [e.seq for e in bus.since(10)] == [11, 12]
    assert bus.since(12) == [] and bus.since(99) == []


# ---- server-sent events ---------------------------------------------------------------------------------


class SseReader:
    """Reads one SSE connection in a thread, collecting (id, event, data) tuples."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.comments: list[str] = []
        self._stop = threading.Event()
        self._url, self._headers = url, headers
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.status: int | None = None
        self.content_type = ""
        self._resp: httpx.Response | None = None

    def _run(self) -> None:
        try:
            self._read()
        except (httpx.HTTPError, RuntimeError):  # closed under our feet by __exit__ or the server's shutdown
            pass
        finally:
            self.status = self.status or -1

    def _read(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client, \
                client.stream("GET", self._url, headers=self._headers) as resp:
            self._resp = resp
            self.status = resp.status_code
            self.content_type = resp.headers.get("content-type", "")
            fields: dict[str, str] = {}
            for line in resp.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith(":"):
                    self.comments.append(line)
                elif line == "":
                    if "id" in fields:
                        self.events.append((int(fields["id"]), fields.get("event", ""), json.loads(fields["data"])))
                    fields = {}
                else:
                    key, _, value = line.partition(":")
                    fields[key] = value.removeprefix(" ")

    def __enter__(self) -> SseReader:
        self._thread.start()
        wait_for(lambda: self.status is not None, 10, "the stream to open")
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._resp is not None:
            self._resp.close()  # the client goes away; the blocked reader ends by itself when the server stops

    def ids(self) -> list[int]:
        return [e[0] for e in self.events]


@pytest.fixture
def served(agent_factory: Callable[..., Agent]) -> Iterator[tuple[Api, Served]]:
    agent = agent_factory("xen")
    with Served(agent) as server:
        yield Api(agent), server


def test_sse_stream_has_ids_and_resumes_after_a_reconnect(served: tuple[Api, Served]) -> None:
    api, server = served
    url = f"{server.url}/v1/events"
    vms = [api.create(spec())["id"] for _ in range(2)]
    with SseReader(url, AUTH) as first:
        assert first.status == 200 and first.content_type.startswith("text/event-stream")
        wait_for(lambda: len(first.events) >= 3, 10, "the recovered and defined events")
        assert first.comments and first.comments[0].startswith(": corral agent events after 0")
        api.post(f"/v1/vms/{vms[0]}/start", expect=200)
        wait_for(lambda: any(e[2]["detail"].get("event") == "started" for e in first.events), 10, "started")
        seen = list(first.events)
    last_id = seen[-1][0]
    assert [e[0] for e in seen] == list(range(1, last_id + 1))
    for seq, kind, data in seen:
        assert data["seq"] == seq and data["type"] == kind
    # while nobody listens, more happens
    api.post(f"/v1/vms/{vms[1]}/start", expect=200)
    api.post(f"/v1/vms/{vms[0]}/pause", expect=200)

    def both_seen() -> list[dict[str, Any]]:
        items = poll(api, last_id)["items"]
        return items if len([e for e in items if e["type"] == "lifecycle"]) >= 2 else []

    missed = wait_for(both_seen, 10, "the events made while disconnected")
    # the reconnect says where it stopped; the stream picks up right after, nothing lost, nothing twice
    with SseReader(url, {**AUTH, "Last-Event-ID": str(last_id)}) as second:
        wait_for(lambda: len(second.events) >= len(missed), 10, "the missed events")
        api.post(f"/v1/vms/{vms[0]}/resume", expect=200)
        wait_for(lambda: any(e[2]["detail"].get("event") == "resumed" for e in second.events), 10, "resumed")
        resumed = list(second.events)
    assert resumed[0][0] == last_id + 1
    assert [e[0] for e in resumed] == list(range(last_id + 1, last_id + 1 + len(resumed)))
    assert [e[0] for e in resumed[:len(missed)]] == [e["seq"] for e in missed]
    # ?after= works for the stream too
    with SseReader(f"{url}?after={resumed[-2][0]}", AUTH) as third:
        wait_for(lambda: third.events, 10, "the last event")
        assert third.ids()[0] == resumed[-1][0]


def test_sse_needs_the_token(served: tuple[Api, Served]) -> None:
    _api, server = served
    resp = httpx.get(f"{server.url}/v1/events", timeout=5)
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"
    assert httpx.get(f"{server.url}/v1/health", timeout=5).json()["status"] == "ok"
