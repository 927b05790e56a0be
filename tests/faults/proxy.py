"""A TCP proxy on a loopback port in front of one server, with faults the test switches on and off.

Each server's `--peer` points at the proxy in front of the other one, so every call between the
servers (and every call a worker makes to its second server) crosses a proxy. Modes:

- PASS     bytes flow both ways;
- REFUSE   new connections are closed at once and open ones are cut (a crashed or firewalled peer);
- HOLD     connections are accepted but nothing is forwarded either way until the mode changes;
           then what was held is delivered, late (a partition that heals: a request may reach the
           server after its caller gave up).

and, in any mode, `delay(path_prefix, seconds)`: the answer to each request whose path starts with
the prefix reaches the caller `seconds` after the server sent it (the server has done its part).

The proxy knows where a request starts by its request line (`METHOD /path HTTP/1.x`) at the start
of a chunk from the caller; HTTP/1.1 clients here send one request at a time on a connection (no
pipelining), so that is where each request begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import re

CHUNK = 1 << 16
REQUEST_LINE = re.compile(rb"^[A-Z]{3,7} (/\S*) HTTP/1\.[01]\r\n")


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    HOLD = "hold"


@dataclasses.dataclass(eq=False)
class Link:
    """One proxied connection."""

    caller: asyncio.StreamWriter
    server: asyncio.StreamWriter
    answer_delay_s: float = 0.0  # the delay owed to the answer of the request in flight
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)

    def cut(self) -> None:
        for writer in (self.caller, self.server):
            with contextlib.suppress(OSError, RuntimeError):
                writer.transport.abort()


@dataclasses.dataclass
class ProxyStats:
    connections: int = 0
    refused: int = 0
    cut: int = 0
    delayed: int = 0
    held_s: float = 0.0


class FaultProxy:
    """Listens on 127.0.0.1:`port` (0: any free port) and forwards to 127.0.0.1:`upstream_port`."""

    def __init__(self, name: str, upstream_port: int, port: int = 0) -> None:
        self.name = name
        self.upstream_port = upstream_port
        self.port = port
        self.mode = Mode.PASS
        self.stats = ProxyStats()
        self._delays: dict[str, float] = {}
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[Link] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        links = list(self._links)
        for link in links:
            link.cut()
        tasks = [task for link in links for task in link.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- faults ------------------------------------------------------------------------------
    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        if mode is Mode.HOLD:
            self._flowing.clear()
            return
        self._flowing.set()
        if mode is Mode.REFUSE:
            for link in list(self._links):
                link.cut()
                self.stats.cut += 1

    def delay(self, path_prefix: str, seconds: float) -> None:
        """Delay the answers to requests whose path starts with path_prefix ('/' for all)."""
        self._delays[path_prefix] = seconds

    def heal(self) -> None:
        """Back to PASS without delays."""
        self._delays.clear()
        self.set_mode(Mode.PASS)

    # -- forwarding ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode is Mode.REFUSE:
            self.stats.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the server is down: so is the link
            self.stats.refused += 1
            writer.transport.abort()
            return
        self.stats.connections += 1
        link = Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, requests=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, requests=False)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            for side in (writer, up_writer):
                side.close()
            self._links.discard(link)

    async def _pump(
        self, link: Link, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, requests: bool
    ) -> None:
        """Copy one direction, then pass the end on (half-close), as the network would: what was
        sent arrives, then EOF. A request line arms the delay of its answer."""
        try:
            while chunk := await source.read(CHUNK):
                if requests:
                    self._note_request(link, chunk)
                elif link.answer_delay_s > 0:
                    delay, link.answer_delay_s = link.answer_delay_s, 0.0
                    self.stats.delayed += 1
                    await asyncio.sleep(delay)
                if not self._flowing.is_set():
                    started = asyncio.get_running_loop().time()
                    await self._flowing.wait()
                    self.stats.held_s += asyncio.get_running_loop().time() - started
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (OSError, RuntimeError):
            link.cut()  # one side reset: so is the other

    def _note_request(self, link: Link, chunk: bytes) -> None:
        match = REQUEST_LINE.match(chunk)
        if match is None:
            return  # the rest of a request (its body)
        path = match.group(1).decode("latin-1")
        link.answer_delay_s = max((s for p, s in self._delays.items() if path.startswith(p)), default=0.0)
