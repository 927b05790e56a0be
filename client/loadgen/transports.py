"""The bench's HTTP transport, either client behind the one common.http Transport interface."""

from __future__ import annotations

import aiohttp

from client.loadgen.config import BenchConfig
from client.loadgen.rawhttp import RawHttpTransport
from common.http import AiohttpTransport, Transport


def make_transport(cfg: BenchConfig, connections: int) -> Transport:
    """`cfg.client`'s transport with room for `connections` requests in flight."""
    if cfg.client == "aiohttp":
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
        return AiohttpTransport(session, owns_session=True)
    return RawHttpTransport(connect_timeout_s=cfg.http_timeout_s)
