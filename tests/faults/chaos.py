"""Two real servers, each seeing its peer through a FaultProxy, and the faults done to them.

`ProxiedCluster` starts server A with `--peer` at the proxy in front of B and B with `--peer` at
the proxy in front of A; with the local launcher their workers reach the second server through
the same proxies. It can kill -9 a server (and restart it on the same port and state dir),
SIGSTOP and SIGCONT one, and kill -9 the workers a server launched. close() ends every process
it started, whatever state it is in: by pid, then anything whose command line names its base
directory (workers orphaned by a killed server).

`FaultSchedule` draws the faults from one seeded random source and prints each one with its time,
so a failing run can be read and replayed (`DYNWORK_SOAK_SEED`); the timing of the processes
themselves is not reproducible, the sequence of faults is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from client.localcluster import free_port, kill_processes_using, make_token_file
from tests.cluster import Server
from tests.faults.proxy import FaultProxy, Mode

START_TIMEOUT_S = 60.0


class ProxiedCluster:
    def __init__(self, base: Path, **settings: object) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.token_file = make_token_file(base)
        self.token = self.token_file.read_text().strip()
        ports = [free_port(), free_port()]
        while ports[1] == ports[0]:
            ports[1] = free_port()
        self.ports = ports
        self.settings = settings
        self.proxies: list[FaultProxy] = []  # proxies[i] stands in front of servers[i]
        self.servers: list[Server] = []
        self.stopped: set[int] = set()  # servers under SIGSTOP
        self.down: set[int] = set()  # servers killed on purpose, until restarted
        self.crashes: list[str] = []  # servers found exited that nobody killed

    async def start(self) -> ProxiedCluster:
        self.proxies = [await FaultProxy(f"proxy->s{p}", p).start() for p in self.ports]
        self.servers = [
            Server(
                self.ports[i],
                self.base / f"s{self.ports[i]}",
                self.token_file,
                peer=self.proxies[1 - i].url,
                log_level="INFO",
                **self.settings,
            )
            for i in range(2)
        ]
        for server in self.servers:
            server.start(wait=False)
        await asyncio.gather(*(self.wait_healthy(i) for i in range(2)))
        return self

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    # -- processes ---------------------------------------------------------------------------
    async def wait_healthy(self, i: int, timeout_s: float = START_TIMEOUT_S) -> None:
        server = self.servers[i]
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                assert server.proc is not None
                if server.proc.poll() is not None:
                    raise AssertionError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(server.url + "/healthz") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise AssertionError(f"{server.name} not healthy after {timeout_s:.0f}s:\n{server.log_tail()}")
                await asyncio.sleep(0.1)

    def kill_server(self, i: int) -> None:
        self.stopped.discard(i)
        self.down.add(i)
        self.servers[i].kill()

    async def restart_server(self, i: int) -> None:
        self.servers[i].start(wait=False)
        await self.wait_healthy(i)
        self.down.discard(i)

    def check_alive(self) -> None:
        """Note (in `crashes`) a server that exited although nobody killed it."""
        for i, server in enumerate(self.servers):
            if i not in self.down and server.proc is not None and server.proc.poll() is not None:
                self.crashes.append(f"{server.name} (exit {server.proc.returncode})")
                self.down.add(i)  # noted once; heal() restarts it

    def sigstop(self, i: int) -> None:
        proc = self.servers[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            self.stopped.add(i)

    def sigcont(self, i: int) -> None:
        proc = self.servers[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        self.stopped.discard(i)

    def workers(self, i: int) -> list[int]:
        """Pids of live workers server i launched (its launcher's pid files)."""
        found = []
        for pid_file in (self.servers[i].state_dir / "workers").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if f"--worker-id\0{pid_file.stem}\0".encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
        return found

    async def heal(self) -> None:
        """Every link passes, every server runs (restarted if it is down)."""
        for proxy in self.proxies:
            proxy.heal()
        self.check_alive()
        for i in range(2):
            self.sigcont(i)
            proc = self.servers[i].proc
            if proc is None or proc.poll() is not None:
                await self.restart_server(i)

    async def close(self) -> None:
        for proxy in self.proxies:
            proxy.heal()
        for i in range(2):
            self.sigcont(i)
        for server in self.servers:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(server.terminate, 30)
        for server in self.servers:
            server.kill()
        kill_processes_using(self.base)  # workers a killed server left behind
        for proxy in self.proxies:
            await proxy.close()

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} ---\n{s.log_tail(60)}" for s in self.servers)

    def log_lines(self, *markers: str) -> collections.Counter[str]:
        """Lines of the servers' and workers' logs holding any marker, with numbers and ids
        blanked out so repeats count as one kind; a traceback counts as its exception line."""
        found: collections.Counter[str] = collections.Counter()
        for path in [s.log_path for s in self.servers] + sorted(self.base.glob("s*/workers/*.log")):
            who = "worker" if path.parent.name == "workers" else "server"
            with contextlib.suppress(OSError):
                lines = path.read_text(errors="replace").splitlines()
                for n, line in enumerate(lines):
                    if line.startswith("Traceback"):
                        end = next((m for m in range(n + 1, len(lines)) if not lines[m].startswith(" ")), n)
                        kind = f"{who} traceback: {lines[end]}"
                    elif any(marker in line for marker in markers):
                        kind = line.split(" ", 2)[-1]
                    else:
                        continue
                    found[re.sub(r"\b[0-9a-f]{6,}\b|[0-9]+(\.[0-9]+)?", "#", kind)[:200]] += 1
        return found


class FaultSchedule:
    """Random faults from one seed: a process fault every few seconds (kill -9 a worker or a server,
    SIGSTOP a server past the peer timeout) and, independently, network faults between the servers
    (refuse or hold connections, delay answers), each printed as it happens."""

    def __init__(
        self, cluster: ProxiedCluster, seed: int, *, peer_timeout_s: float, log: Callable[[str], None] = print
    ) -> None:
        self.cluster = cluster
        self.seed = seed
        self.peer_timeout_s = peer_timeout_s
        self.log = log
        self.counts: dict[str, int] = {}
        self._t0 = time.monotonic()

    def _note(self, kind: str, what: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.log(f"[soak seed={self.seed} +{time.monotonic() - self._t0:6.1f}s] {what}")

    async def run(self, duration_s: float) -> None:
        self._t0 = time.monotonic()
        rng = random.Random(self.seed)
        process_rng, network_rng = random.Random(rng.random()), random.Random(rng.random())
        deadline = self._t0 + duration_s
        await asyncio.gather(
            self._process_faults(process_rng, deadline),
            self._network_faults(network_rng, deadline),
            self._watch(deadline),
        )

    async def _watch(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.cluster.check_alive()
            await asyncio.sleep(0.5)

    async def _process_faults(self, rng: random.Random, deadline: float) -> None:
        c = self.cluster
        while True:
            await asyncio.sleep(rng.uniform(3.0, 9.0))
            if time.monotonic() >= deadline:
                return
            i = rng.randrange(2)
            name = c.servers[i].name
            kind = rng.choices(["worker", "server", "stop"], weights=[5, 3, 2])[0]
            if kind == "worker":
                pids = c.workers(i) or c.workers(1 - i)
                if pids:
                    pid = rng.choice(sorted(pids))
                    self._note("kill -9 worker", f"kill -9 worker pid {pid}")
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            elif kind == "server":
                down_s = rng.uniform(0.0, 2.0)
                self._note("kill -9 server", f"kill -9 {name}; restart in {down_s:.1f}s")
                c.kill_server(i)
                await asyncio.sleep(down_s)
                await c.restart_server(i)
                self.log(f"    {name} is back")
            else:
                stop_s = self.peer_timeout_s + rng.uniform(1.0, 4.0)
                self._note("SIGSTOP server", f"SIGSTOP {name} for {stop_s:.1f}s")
                c.sigstop(i)
                await asyncio.sleep(stop_s)
                c.sigcont(i)

    async def _network_faults(self, rng: random.Random, deadline: float) -> None:
        proxies = self.cluster.proxies
        while True:
            await asyncio.sleep(rng.uniform(2.0, 7.0))
            if time.monotonic() >= deadline:
                return
            chosen = rng.choice([[proxies[0]], [proxies[1]], proxies])
            lasts_s = rng.uniform(1.0, 5.0)
            kind = rng.choices(["refuse", "hold", "delay"], weights=[2, 2, 3])[0]
            names = " and ".join(p.name for p in chosen)
            if kind == "delay":
                path = rng.choice(["/", "/internal/peer/pull", "/internal/peer/confirm", "/internal/peer/work/"])
                delay_s = rng.uniform(0.5, 2.0) * self.peer_timeout_s
                self._note("delay answers", f"delay {path} answers by {delay_s:.1f}s on {names} for {lasts_s:.1f}s")
                for proxy in chosen:
                    proxy.delay(path, delay_s)
            else:
                mode = Mode.REFUSE if kind == "refuse" else Mode.HOLD
                self._note(f"{mode.value} peer links", f"{mode.value} connections on {names} for {lasts_s:.1f}s")
                for proxy in chosen:
                    proxy.set_mode(mode)
            await asyncio.sleep(lasts_s)
            for proxy in chosen:
                proxy.heal()
