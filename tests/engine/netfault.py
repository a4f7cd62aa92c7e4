"""A TCP relay in front of a real agent that stands for the network between engine and host failing.

It passes bytes both ways unchanged until a request whose first line starts with ``cut_after`` goes through:
that request reaches the agent (which acts on it), and as the agent's answer comes back the relay drops the
engine's connection and partitions: every open connection is closed, every new one is closed as it is
accepted, until ``heal()``. Nothing of the agent or libvirt is imitated: the agent behind it is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.engine.agents import free_port


class CuttingRelay:
    def __init__(self, upstream_port: int, cut_after: bytes) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.port = free_port()
        self.partitioned = threading.Event()
        self.cut = threading.Event()  # the request went through and its answer was dropped
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CuttingRelay:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def heal(self) -> None:
        self.partitioned.clear()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            for w in list(self._writers):
                w.transport.abort()
            tasks = asyncio.all_tasks(self._loop)
            for t in tasks:
                t.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    def _partition(self) -> None:
        self.partitioned.set()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.partitioned.is_set():
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.update((writer, up_writer))
        cutting = asyncio.Event()

        async def to_agent() -> None:
            while data := await reader.read(65536):
                if data.startswith(self.cut_after):
                    cutting.set()
                up_writer.write(data)
                await up_writer.drain()

        async def to_engine() -> None:
            while data := await up_reader.read(65536):
                if cutting.is_set():  # the agent has acted and is answering: the answer is lost
                    self.cut.set()
                    self._partition()
                    return
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(ConnectionError, OSError):
            await asyncio.gather(to_agent(), to_engine())
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.transport.abort()
