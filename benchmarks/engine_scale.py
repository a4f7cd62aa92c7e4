#!/usr/bin/env python3
"""The engine at scale (issue 8): simulated hosts, monitoring cycle, REST latency, VM starts.

For each size (hosts x VMs per host) and each database, in separate processes so that each one's CPU and
memory are its own: a PostgreSQL server (a throwaway cluster, PostgreSQL's default settings) or a SQLite
file, ``corral simulate`` (the hosts) and ``corral engine serve`` (the engine, default monitoring settings: a
cycle every 3 s). The benchmark process itself only drives the API and reads figures. Then:

1. add every host through ``POST /api/v1/hosts`` (32 at a time) and wait until all are ``up`` and the first
   polls have imported every VM;
2. let monitoring run; after two warm-up cycles, take ``--cycles`` cycles from ``GET /api/v1/_metrics``
   (cycle = poll every agent + reconcile + write the changes, timed by the monitor) and the CPU time and
   memory of the engine, the simulator and the database over that window (/proc);
3. at the largest size only (``--rest-all``: every size): ``--clients`` concurrent keep-alive clients, each
   sending its next request as soon as the last is answered, for ``--rest-seconds`` each: ``GET
   /api/v1/vms/{id}`` of random VMs (which asks the VM's agent for its live devices), then 100-VM pages
   ``GET /api/v1/vms?limit=100&after=<random id>``; p50/p99 latency and requests per second;
4. VM starts through the engine: create ``--starts`` VMs, start them all (``--start-concurrency`` requests in
   flight), and count starts per second from the first task created to the last finished (scheduler,
   placement, agent create+start, state written).

Prints tables and writes them, with the machine's description, into docs/performance.md, section
"Engine scale" (between markers: the prose around them and the other sections are kept), unless
``--no-write``. ``--json FILE`` also saves every figure. ``--profile DIR`` records the engine with py-spy
(SVG flame graphs) during the cycles and the REST runs.

    python benchmarks/engine_scale.py [--sizes 100,1000,2500] [--db postgresql|sqlite|both] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import pwd
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

DOCS = REPO / "docs" / "performance.md"
SECTION = "## Engine scale"
BEGIN, END = "<!-- engine_scale: figures begin -->", "<!-- engine_scale: figures end -->"
CORRAL = [sys.executable, "-c", "import sys; sys.argv[0] = 'corral'; from corral.cli import main; main()"]
PG_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14, 13)]
TICK = os.sysconf("SC_CLK_TCK")
GOALS = {"cycle_s": 3.0, "detail_p99_ms": 10.0, "page_p99_ms": 50.0, "starts_per_s": 100.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


# ---- processes and their CPU / memory ---------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_cpu_seconds() -> float:
    """CPU time used by everything on the machine (all cores, /proc/stat), to tell other load apart."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / TICK


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live children (PostgreSQL's backends); exited ones are not counted."""
    total = 0.0
    for p in [pid, *children(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(p)
    return total


class Proc:
    """A child process with its output in files; stopped with SIGINT, then SIGKILL (only this pid)."""

    def __init__(self, name: str, cmd: list[str], workdir: Path, stdout: int | None = None) -> None:
        self.name = name
        self.err = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(cmd, stdout=stdout if stdout is not None else self.err, stderr=self.err,
                                      cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.pid = self.popen.pid
        self.log = workdir / f"{name}.log"

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self.err.close()


# ---- PostgreSQL ---------------------------------------------------------------------------------------------

def pg_bin() -> Path | None:
    env = os.environ.get("CORRAL_PG_BIN")
    if env:
        return Path(env)
    for d in PG_BIN_DIRS:
        if (d / "initdb").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Postgres:
    """A throwaway cluster with PostgreSQL's default settings (durable commits), max_connections 200.
    initdb refuses root, so as root the cluster belongs to ``postgres`` (runuser)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir, self.root = bindir, root
        self.data, self.sock = root / "pgdata", root / "pgsock"
        self.port = free_port()
        self.sock.mkdir(parents=True)
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            for p in (root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self.dbuser = self.user or pwd.getpwuid(os.geteuid()).pw_name
        self._n = 0

    def _run(self, *args: str, capture: bool = False) -> str:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, cwd="/", text=True)
        return done.stdout or ""

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "--auth=trust", "-U", self.dbuser, "--encoding=UTF8")
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sock} "
                "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "postgres.log"), "-w",
                  "start")

    @property
    def pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def version(self) -> str:
        return self._run("postgres", "--version", capture=True).strip()

    def new_database(self) -> str:
        import psycopg

        self._n += 1
        name = f"corral_scale_{self._n}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.dbuser, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
        return f"postgresql+psycopg://{self.dbuser}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


# ---- a lean HTTP/1.1 client for the latency runs (the load generator must cost little) ---------------------

class Conn:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.auth = f"Authorization: Bearer {token}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: engine\r\n" + self.auth + b"\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                body += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
            return status, body
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def closed_loop(port: int, token: str, clients: int, seconds: float,
                      next_path: Any) -> dict[str, Any]:
    """``clients`` connections, each sending its next request when the last is answered, for ``seconds``."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        conn = Conn(port, token)
        try:
            while time.perf_counter() < deadline:
                path = next_path()
                t0 = time.perf_counter()
                status, _ = await conn.get(path)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors[status] = errors.get(status, 0) + 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    return {"requests": len(latencies), "per_s": len(latencies) / wall, "errors": errors,
            "p50_ms": pct(latencies, 0.50) * 1000, "p99_ms": pct(latencies, 0.99) * 1000,
            "max_ms": max(latencies, default=float("nan")) * 1000}


# ---- one run: a database, a size --------------------------------------------------------------------------

@dataclass
class Options:
    vms_per_host: int = 20
    cycles: int = 10
    clients: int = 20
    rest_seconds: float = 15.0
    starts: int = 300
    start_concurrency: int = 50
    event_rate: float = 2.0
    seed: int = 8
    profile: Path | None = None
    profile_format: str = "svg"
    rest_all: bool = False
    timeout: float = 900.0


@dataclass
class Run:
    db: str
    hosts: int
    vms: int
    figures: dict[str, Any] = field(default_factory=dict)


def wait_for(what: str, check: Any, timeout: float, procs: list[Proc], interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            p.check()
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done within {timeout:.0f} s")
        time.sleep(interval)


def start_simulator(hosts: int, opts: Options, workdir: Path) -> tuple[Proc, str, list[str]]:
    port = free_port()
    cmd = [*CORRAL, "simulate", "--hosts", str(hosts), "--vms-per-host", str(opts.vms_per_host), "--listen",
           f"127.0.0.1:{port}", "--seed", str(opts.seed), "--event-rate", str(opts.event_rate), "--output", "json"]
    sim = Proc("simulator", cmd, workdir, stdout=subprocess.PIPE)
    assert sim.popen.stdout is not None
    line = sim.popen.stdout.readline()
    if not line:
        sim.check()
        raise RuntimeError("the simulator printed nothing")
    info = json.loads(line)
    return sim, str(info["token"]), list(info["hosts"])


def start_engine(db_url: str, workdir: Path) -> tuple[Proc, int, str]:
    token = subprocess.run([*CORRAL, "engine", "create-token", "--db", db_url, "--data-dir", str(workdir)],
                           check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    port = free_port()
    engine = Proc("engine", [*CORRAL, "engine", "serve", "--db", db_url, "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(workdir / "engine"), "--no-tls"], workdir)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    wait_for("engine start", up, 120, [engine], 0.2)
    return engine, port, token


def py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        log("py-spy not found: no profile")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds) + 1), "--rate", "50",
                             "--nonblocking", "--format", fmt, "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def measure(db_kind: str, db_url: str, hosts: int, opts: Options, workdir: Path, db_pid: int | None,
            largest: bool) -> Run:
    run = Run(db_kind, hosts, hosts * opts.vms_per_host)
    f = run.figures
    sim, sim_token, urls = start_simulator(hosts, opts, workdir)
    procs = [sim]
    engine: Proc | None = None
    db = create_engine(db_url)
    try:
        engine, port, token = start_engine(db_url, workdir)
        procs.append(engine)
        base = f"http://127.0.0.1:{port}/api/v1"
        headers = {"Authorization": f"Bearer {token}"}

        def count(sql: str) -> int:
            with db.connect() as c:
                return int(c.execute(text(sql)).scalar() or 0)

        # 1. add the hosts
        log(f"{db_kind} {hosts} hosts: adding")
        t0 = time.perf_counter()
        asyncio.run(add_hosts(base, headers, urls, sim_token))
        f["add_accepted_s"] = time.perf_counter() - t0
        wait_for("hosts up", lambda: count("SELECT count(*) FROM hosts WHERE state = 'up'") >= hosts,
                 opts.timeout, procs)
        f["add_s"] = time.perf_counter() - t0
        failed = count("SELECT count(*) FROM tasks WHERE kind = 'host_add' AND state = 'failed'")
        if failed:
            raise RuntimeError(f"{failed} host additions failed")
        wait_for("VMs imported", lambda: count("SELECT count(*) FROM vms") >= run.vms, opts.timeout, procs)
        f["import_s"] = time.perf_counter() - t0
        log(f"{db_kind} {hosts} hosts: added in {f['add_s']:.1f} s, VMs imported after {f['import_s']:.1f} s")

        # 2. monitoring cycles
        client = httpx.Client(base_url=base, headers=headers, timeout=30)

        def cycles_after(t: float) -> list[dict[str, Any]]:
            data = client.get("/_metrics").json()
            return [c for c in data["monitor"]["cycles"] if c["started"] >= t]

        warm = time.time()
        wait_for("warm-up", lambda: len(cycles_after(warm)) >= 2, opts.timeout, procs)
        window = time.time()
        cpu0 = {"engine": cpu_seconds(engine.pid), "simulator": cpu_seconds(sim.pid),
                "database": tree_cpu(db_pid) if db_pid else 0.0, "machine": machine_cpu_seconds()}
        w0 = time.perf_counter()
        spy = py_spy(engine.pid, opts.profile / f"engine-{db_kind}-{hosts}-cycles.{opts.profile_format}",
                     opts.cycles * 3.0) if opts.profile else None
        cycles = wait_for("cycles", lambda: (c := cycles_after(window)) and len(c) >= opts.cycles and c,
                          opts.timeout, procs, 1.0)[:opts.cycles]
        wall = time.perf_counter() - w0
        cpu1 = {"engine": cpu_seconds(engine.pid), "simulator": cpu_seconds(sim.pid),
                "database": tree_cpu(db_pid) if db_pid else 0.0, "machine": machine_cpu_seconds()}
        if spy is not None:
            spy.wait(60)
        durations = [c["duration"] for c in cycles]
        f["cycle_median_s"] = statistics.median(durations)
        f["cycle_p95_s"] = pct(durations, 0.95)
        f["cycle_poll_median_s"] = statistics.median(c["poll"] for c in cycles)
        f["cycle_write_median_s"] = statistics.median(c["write"] for c in cycles)
        f["cycle_reports_median"] = statistics.median(c["reports"] for c in cycles)
        f["cycle_vm_updates_median"] = statistics.median(c["vm_updates"] for c in cycles)
        f["cycle_failed"] = sum(c["failed"] + c["late"] for c in cycles)
        f["cycles"] = len(cycles)
        for name in cpu0:
            f[f"{name}_cpu_cores"] = (cpu1[name] - cpu0[name]) / wall
            # CPU seconds per cycle: what the work costs, whatever else competes for the cores meanwhile
            f[f"{name}_cpu_s_per_cycle"] = (cpu1[name] - cpu0[name]) / len(cycles)
        # whatever else ran meanwhile (the benchmark itself, other work on the machine)
        f["other_cpu_cores"] = max(0.0, f.pop("machine_cpu_cores") - f["engine_cpu_cores"] -
                                   f["simulator_cpu_cores"] - f["database_cpu_cores"])
        f.pop("machine_cpu_s_per_cycle")
        f["load_average"] = os.getloadavg()[0]
        f["engine_rss_mib"] = rss_mib(engine.pid)
        f["engine_peak_rss_mib"] = rss_mib(engine.pid, "VmHWM")
        f["simulator_rss_mib"] = rss_mib(sim.pid)
        log(f"{db_kind} {hosts} hosts: cycle median {f['cycle_median_s']:.2f} s, p95 {f['cycle_p95_s']:.2f} s, "
            f"engine {f['engine_cpu_cores']:.2f} cores, {f['engine_rss_mib']:.0f} MiB")

        # 3. REST latency
        if largest or opts.rest_all:
            with db.connect() as c:
                ids = sorted(str(r[0]) for r in c.execute(text("SELECT id FROM vms")))
            pages = ids[:-100] or ids
            spy = py_spy(engine.pid, opts.profile / f"engine-{db_kind}-{hosts}-rest.{opts.profile_format}",
                         2 * opts.rest_seconds) if opts.profile else None
            paths = {"detail": lambda: f"/api/v1/vms/{random.choice(ids)}",
                     "page": lambda: f"/api/v1/vms?limit=100&after={random.choice(pages)}"}
            for kind, next_path in paths.items():
                e0, s0, t0 = cpu_seconds(engine.pid), cpu_seconds(sim.pid), time.perf_counter()
                r = f[f"rest_{kind}"] = asyncio.run(closed_loop(port, token, opts.clients, opts.rest_seconds,
                                                                next_path))
                # CPU per request, less what monitoring used in the same time (its rate over the cycles):
                # contention from elsewhere does not change it
                spent = time.perf_counter() - t0
                n = max(r["requests"], 1)
                r["engine_cpu_ms_per_request"] = max(
                    0.0, cpu_seconds(engine.pid) - e0 - f["engine_cpu_cores"] * spent) * 1000 / n
                r["simulator_cpu_ms_per_request"] = max(
                    0.0, cpu_seconds(sim.pid) - s0 - f["simulator_cpu_cores"] * spent) * 1000 / n
            if spy is not None:
                spy.wait(60)
            f["rest_clients"] = opts.clients
            for kind in ("detail", "page"):
                r = f[f"rest_{kind}"]
                log(f"{db_kind} {hosts} hosts: {kind} p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms, "
                    f"{r['per_s']:.0f}/s, errors {r['errors']}")

        # 4. VM starts
        if opts.starts:
            spy = py_spy(engine.pid, opts.profile / f"engine-{db_kind}-{hosts}-starts.{opts.profile_format}",
                         30) if opts.profile else None
            ids = asyncio.run(create_vms(base, headers, opts.starts, f"bench{hosts}"))
            e0, s0, t0 = cpu_seconds(engine.pid), cpu_seconds(sim.pid), time.perf_counter()
            f["starts"] = opts.starts
            f["starts_submit_s"] = asyncio.run(start_vms(base, headers, ids, opts.start_concurrency))
            wait_for("VM starts", lambda: count("SELECT count(*) FROM tasks WHERE kind = 'vm_start' AND state IN "
                                                "('succeeded', 'failed')") >= opts.starts, opts.timeout, procs, 0.2)
            spent = time.perf_counter() - t0
            # CPU per start, less monitoring at its measured rate
            f["engine_cpu_ms_per_start"] = max(
                0.0, cpu_seconds(engine.pid) - e0 - f["engine_cpu_cores"] * spent) * 1000 / opts.starts
            f["simulator_cpu_ms_per_start"] = max(
                0.0, cpu_seconds(sim.pid) - s0 - f["simulator_cpu_cores"] * spent) * 1000 / opts.starts
            if spy is not None:
                spy.wait(60)
            with db.connect() as c:
                row = c.execute(text("SELECT count(*), min(created_at), max(finished_at) FROM tasks WHERE "
                                     "kind = 'vm_start' AND state = 'succeeded'")).one()
                bad = c.execute(text("SELECT error FROM tasks WHERE kind = 'vm_start' AND state = 'failed' "
                                     "LIMIT 1")).scalar()
            ok, first, last = int(row[0]), row[1], row[2]
            if isinstance(first, str):  # SQLite
                from datetime import datetime
                first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
            f["starts_ok"] = ok
            f["starts_failed"] = opts.starts - ok
            f["starts_per_s"] = ok / max((last - first).total_seconds(), 1e-6) if ok else 0.0
            if bad:
                f["start_error"] = str(bad)[:300]
            log(f"{db_kind} {hosts} hosts: {ok}/{opts.starts} starts, {f['starts_per_s']:.1f}/s")
        client.close()
        return run
    finally:
        for p in reversed(procs):
            p.stop()
        db.dispose()


async def add_hosts(base: str, headers: dict[str, str], urls: list[str], token: str) -> None:
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        async def add(items: Iterator[tuple[int, str]]) -> None:
            for n, url in items:
                r = await client.post("/hosts", json={"url": url, "token": token, "name": f"sim{n + 1:05d}"})
                if r.status_code != 202:
                    raise RuntimeError(f"POST /hosts {url}: {r.status_code} {r.text[:200]}")
        todo = iter(enumerate(urls))
        await add(itertools.islice(todo, 1))  # the first alone: it creates the default cluster
        await asyncio.gather(*(add(todo) for _ in range(32)))


async def create_vms(base: str, headers: dict[str, str], n: int, tag: str) -> list[str]:
    """``n`` small VMs (256 MiB, a disk, a NIC on br0, which every simulated host has), 20 requests at a time."""
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        names = iter(range(n))
        ids: list[str] = []

        async def create() -> None:
            for i in names:
                spec = {"name": f"{tag}-{i:05d}", "memory_mib": 256, "vcpus": 1,
                        "disks": [{"source": f"/var/lib/corral/images/{tag}-{i}.qcow2"}],
                        "nics": [{"source": "br0"}]}
                r = await client.post("/vms", json=spec)
                if r.status_code != 201:
                    raise RuntimeError(f"POST /vms: {r.status_code} {r.text[:200]}")
                ids.append(r.json()["id"])
        await asyncio.gather(*(create() for _ in range(20)))
        return ids


async def start_vms(base: str, headers: dict[str, str], ids: list[str], concurrency: int) -> float:
    """Ask for every start (``concurrency`` requests in flight); the seconds it took to submit them all."""
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        todo = iter(ids)
        t0 = time.perf_counter()

        async def start() -> None:
            for vm_id in todo:
                r = await client.post(f"/vms/{vm_id}/start")
                if r.status_code != 202:
                    raise RuntimeError(f"POST /vms/{vm_id}/start: {r.status_code} {r.text[:200]}")
        await asyncio.gather(*(start() for _ in range(concurrency)))
        return time.perf_counter() - t0


# ---- the whole benchmark ----------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    libs = {}
    for mod in ("uvloop", "httptools", "msgspec", "aiohttp", "httpx", "uvicorn", "fastapi", "sqlalchemy", "psycopg"):
        try:
            from importlib.metadata import version
            libs[mod] = version(mod)
        except Exception:
            libs[mod] = None
    return {"cores": os.cpu_count(), "memory_gib": round(mem / 1024, 1), "cpu": model,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "kernel": platform.release(), "sqlite": sqlite3.sqlite_version, "libs": libs}


@contextlib.contextmanager
def database(kind: str, workdir: Path) -> Iterator[tuple[Any, str]]:
    if kind == "sqlite":
        yield None, f"SQLite {sqlite3.sqlite_version}"
        return
    bindir = pg_bin()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (no initdb); use --db sqlite")
    pg = Postgres(bindir, workdir / "pg")
    pg.start()
    try:
        yield pg, pg.version()
    finally:
        pg.stop()


def run_all(sizes: list[int], dbs: list[str], opts: Options, keep: Path | None = None,
            save: Path | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "options": {k: str(v) if isinstance(v, Path) else v
                                                               for k, v in vars(opts).items()},
                              "date": time.strftime("%Y-%m-%d"), "runs": []}
    for kind in dbs:
        with contextlib.ExitStack() as stack:
            if keep is not None:
                root = keep / kind
                root.mkdir(parents=True)
            else:
                root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"corral-scale-{kind}-")))
            os.chmod(root, 0o755)
            with database(kind, root) as (pg, version):
                result["machine"][kind] = version
                for hosts in sizes:
                    workdir = root / f"run-{hosts}"
                    workdir.mkdir()
                    url = pg.new_database() if pg else f"sqlite:///{workdir / 'engine.db'}"
                    run = measure(kind, url, hosts, opts, workdir, pg.pid if pg else None, hosts == max(sizes))
                    result["runs"].append({"db": run.db, "hosts": run.hosts, "vms": run.vms, **run.figures})
                    if save is not None:  # what is measured so far survives a later failure
                        save.write_text(json.dumps(result, indent=2, default=str))
    return result


# ---- reporting ----------------------------------------------------------------------------------------------

def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def tables(result: dict[str, Any]) -> str:
    runs = result["runs"]
    out = []
    rows = [["database", "hosts", "VMs", "add hosts", "VMs imported", "cycle median", "cycle p95",
             "poll / write (median)", "engine CPU (per cycle)", "engine RSS (peak)", "simulator CPU (per cycle)",
             "database CPU (per cycle)", "other CPU, load", "VM starts/s (engine CPU per start)"]]

    def cpu(r: dict[str, Any], name: str) -> str:
        return f"{r[f'{name}_cpu_cores'] * 100:.0f}% ({r[f'{name}_cpu_s_per_cycle']:.2f} s)"
    for r in runs:
        rows.append([r["db"], f"{r['hosts']:,}", f"{r['vms']:,}",
                     f"{r['add_s']:.1f} s ({r['hosts'] / r['add_s']:.0f}/s)", f"{r['import_s']:.1f} s",
                     f"{r['cycle_median_s']:.2f} s", f"{r['cycle_p95_s']:.2f} s",
                     f"{r['cycle_poll_median_s']:.2f} / {r['cycle_write_median_s']:.2f} s",
                     cpu(r, "engine"), f"{r['engine_rss_mib']:.0f} ({r['engine_peak_rss_mib']:.0f}) MiB",
                     cpu(r, "simulator"), cpu(r, "database") if r["db"] == "postgresql" else "(in engine)",
                     f"{r['other_cpu_cores'] * 100:.0f}%, {r['load_average']:.1f}",
                     f"{r['starts_per_s']:.1f} ({r['engine_cpu_ms_per_start']:.1f} ms)" if "starts_per_s" in r
                     else "-"])
    out.append(_table(rows))
    rest = [r for r in runs if "rest_detail" in r]
    if rest:
        rows = [["database", "hosts", "request", "clients", "p50", "p99", "max", "requests/s",
                 "engine / simulator CPU per request", "errors"]]
        for r in rest:
            for kind, label in (("detail", "GET /api/v1/vms/{id}"), ("page", "GET /api/v1/vms?limit=100&after=…")):
                m = r[f"rest_{kind}"]
                rows.append([r["db"], f"{r['hosts']:,}", label, str(r["rest_clients"]), f"{m['p50_ms']:.1f} ms",
                             f"{m['p99_ms']:.1f} ms", f"{m['max_ms']:.0f} ms", f"{m['per_s']:.0f}",
                             f"{m['engine_cpu_ms_per_request']:.2f} / {m['simulator_cpu_ms_per_request']:.2f} ms",
                             str(sum(m["errors"].values()))])
        out.append(_table(rows))
    goal_runs = [r for r in runs if r["db"] == "postgresql"] or runs
    top = max(goal_runs, key=lambda r: r["hosts"])
    rows = [["goal (" + top["db"] + f", {top['hosts']:,} hosts)", "target", "measured", ""]]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"
    rows.append(["monitoring cycle (p95)", f"<= {GOALS['cycle_s']:.0f} s", f"{top['cycle_p95_s']:.2f} s",
                 verdict(top["cycle_p95_s"] <= GOALS["cycle_s"])])
    if "rest_detail" in top:
        rows.append(["VM detail p99", f"<= {GOALS['detail_p99_ms']:.0f} ms", f"{top['rest_detail']['p99_ms']:.1f} ms",
                     verdict(top["rest_detail"]["p99_ms"] <= GOALS["detail_p99_ms"])])
        rows.append(["100-VM page p99", f"<= {GOALS['page_p99_ms']:.0f} ms", f"{top['rest_page']['p99_ms']:.1f} ms",
                     verdict(top["rest_page"]["p99_ms"] <= GOALS["page_p99_ms"])])
    if "starts_per_s" in top:
        rows.append(["VM starts", f">= {GOALS['starts_per_s']:.0f}/s", f"{top['starts_per_s']:.1f}/s",
                     verdict(top["starts_per_s"] >= GOALS["starts_per_s"])])
    out.append(_table(rows))
    return "\n\n".join(out)


def figures_block(result: dict[str, Any]) -> str:
    m, o = result["machine"], result["options"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libs"].items() if v) + \
        ("" if m["libs"].get("uvloop") else " (no uvloop)")
    dbs = "; ".join(m[k] for k in ("postgresql", "sqlite") if k in m)
    sizes = ",".join(str(s) for s in sorted({r["hosts"] for r in result["runs"]}))
    kinds = sorted({r["db"] for r in result["runs"]})
    text = (
        f"Measured {result['date']} with `python benchmarks/engine_scale.py --sizes {sizes} --db "
        f"{'both' if len(kinds) > 1 else kinds[0]}` on {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB "
        f"RAM, {m['python']}, Linux {m['kernel']}; {dbs}; {libs}. Engine, simulator and database each run in "
        f"their own process on the same {m['cores']} cores; {o['vms_per_host']} VMs per host, {o['event_rate']} "
        f"random VM pauses/crashes per second in the simulator; {o['cycles']} cycles measured after two warm-up "
        "cycles; CPU is the share of one core over those cycles (100% = one core busy) and, in brackets, CPU "
        "seconds per cycle; \"other CPU\" is what the rest of the machine used meanwhile, with the 1-minute load "
        f"average; REST with {o['clients']} concurrent keep-alive clients for {o['rest_seconds']} s per request "
        f"kind; {o['starts']} VM starts, {o['start_concurrency']} start requests in flight.")
    return f"{BEGIN}\n{textwrap.fill(text, 110, break_on_hyphens=False)}\n\n{tables(result)}\n{END}"


def write_docs(block: str, path: Path) -> None:
    old = path.read_text() if path.exists() else "# Performance\n"
    start = old.find(SECTION)
    if start == -1:
        section = f"{SECTION}\n\nFigures from `benchmarks/engine_scale.py` (issue 8).\n\n{block}\n"
        new = old.rstrip("\n") + "\n\n" + section
    else:
        nxt = old.find("\n## ", start + len(SECTION))
        end_of_section = nxt + 1 if nxt != -1 else len(old)
        body = old[start:end_of_section]
        b, e = body.find(BEGIN), body.find(END)
        if b != -1 and e != -1:
            body = body[:b] + block + body[e + len(END):]
        else:
            body = body.rstrip("\n") + "\n\n" + block + "\n"
        new = old[:start] + body.rstrip("\n") + "\n" + ("\n" + old[end_of_section:] if nxt != -1 else "")
    path.write_text(new.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,2500", help="host counts, comma-separated")
    parser.add_argument("--db", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--vms-per-host", type=int, default=20)
    parser.add_argument("--cycles", type=int, default=10, help="monitoring cycles measured per size")
    parser.add_argument("--clients", type=int, default=20, help="concurrent REST clients")
    parser.add_argument("--rest-seconds", type=float, default=15.0, help="duration of each REST run")
    parser.add_argument("--rest-all", action="store_true", help="REST latency at every size, not only the largest")
    parser.add_argument("--starts", type=int, default=300, help="VMs started per size (0: skip)")
    parser.add_argument("--start-concurrency", type=int, default=50)
    parser.add_argument("--event-rate", type=float, default=2.0, help="the simulator's random events per second")
    parser.add_argument("--profile", type=Path, help="record the engine with py-spy into this directory")
    parser.add_argument("--profile-format", choices=("svg", "txt", "json"), default="svg",
                        help="flame graph, collapsed stacks (text), or speedscope")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--doc", type=Path, default=DOCS, help="the document to update")
    parser.add_argument("--no-write", action="store_true", help="do not update the document")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, databases)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children on the way out
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    dbs = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    opts = Options(vms_per_host=args.vms_per_host, cycles=args.cycles, clients=args.clients,
                   rest_seconds=args.rest_seconds, starts=args.starts, start_concurrency=args.start_concurrency,
                   event_rate=args.event_rate, profile=args.profile, rest_all=args.rest_all,
                   profile_format=args.profile_format)
    result = run_all(sizes, dbs, opts, args.keep, args.json)
    print(tables(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if not args.no_write:
        write_docs(figures_block(result), args.doc)
        print(f"\nwritten to {args.doc} ({SECTION!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
