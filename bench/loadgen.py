"""The benchmarks' HTTP load generator: C concurrent clients, one JSON POST per request, keep-alive.

Why not httpx: on the 2-core benchmark machine the load generator shares the cores with the server it
measures, and httpx's AsyncClient spent ~2 ms of CPU per request (1.1 of the 10.5 core-seconds of a
512-request run), which the server then lost. This client writes the request bytes itself and reads
the response by Content-Length (or chunked), ~10x less CPU per request, so the table measures servers
rather than the client. Every server in a table gets the same client; ``--client httpx`` brings the
old one back for comparison. Benchmark code only: plain HTTP/1.1 to 127.0.0.1, no TLS, no redirects.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

CLIENTS = ("raw", "httpx")


class HTTPError(RuntimeError):
    pass


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, bytes(body)
            body += chunk[:-2]
    raise HTTPError(f"response without length: {headers}")


async def _raw_worker(
    host: str,
    port: int,
    path: str,
    bodies: list[bytes],
    queue: asyncio.Queue[int],
    record: Callable[..., None],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    try:
        while not queue.empty():
            i = queue.get_nowait()
            t0 = time.perf_counter()
            writer.write(f"{head}Content-Length: {len(bodies[i])}\r\n\r\n".encode() + bodies[i])
            status, body = await _read_response(reader)
            if status != 200:
                raise HTTPError(f"HTTP {status}: {body[:200]!r}")
            record(i, time.perf_counter() - t0, json.loads(body))
    finally:
        writer.close()


async def _httpx_worker(
    client: httpx.AsyncClient,
    path: str,
    bodies: list[bytes],
    queue: asyncio.Queue[int],
    record: Callable[..., None],
) -> None:
    while not queue.empty():
        i = queue.get_nowait()
        t0 = time.perf_counter()
        r = await client.post(path, content=bodies[i], headers={"content-type": "application/json"})
        r.raise_for_status()
        record(i, time.perf_counter() - t0, r.json())


async def post_all(
    url: str,
    path: str,
    payloads: list[dict[str, Any]],
    concurrency: int,
    read: Callable[[Any], Any],
    client: str = "raw",
) -> dict[str, Any]:
    """POST every payload once with ``concurrency`` clients; wall time, p50/p99 and ``read(response)``
    of each, in payload order (``rewards``: what the scoring tables read).

    ``cpu_s`` is this process's CPU time during the run: what the load generator itself cost.
    """
    bodies = [json.dumps(p).encode() for p in payloads]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    latencies: list[float] = []
    values: list[Any] = [None] * len(bodies)

    def record(i: int, seconds: float, response: Any) -> None:
        latencies.append(seconds)
        values[i] = read(response)

    cpu0, t0 = time.process_time(), time.perf_counter()
    if client == "raw":
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        await asyncio.gather(
            *(_raw_worker(host, port, path, bodies, queue, record) for _ in range(concurrency))
        )
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as c:
            await asyncio.gather(*(_httpx_worker(c, path, bodies, queue, record) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {**summarize(latencies, wall, values), "client_cpu_s": cpu}


def summarize(latencies: list[float], wall: float, rewards: list[Any]) -> dict[str, Any]:
    """One load run's row: wall time, p50/p99 latency in ms, and the rewards in request order."""
    latencies.sort()
    return {
        "wall_s": wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rewards": rewards,
    }
