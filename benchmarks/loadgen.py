"""A small closed-loop HTTP/1.1 load generator (asyncio, keep-alive, raw sockets).

Each of ``concurrency`` connections sends a request, waits for the whole response, and
sends the next (no pipelining), until ``max_requests`` are done or ``duration_s`` has
passed. Requests are pre-encoded bytes, so the client spends its CPU on sockets, not on
building JSON: on a 2-core machine the client and the server share the CPU, and a heavy
client (e.g. httpx, ~200 µs per request) would measure itself.

Usable as a library (:func:`run_load`) or from the command line:
``python benchmarks/loadgen.py --port 8000 --path /v1/decide --body '{...}' -c 16 -n 20000``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np


def http_request(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> bytes:
    """One pre-encoded HTTP/1.1 keep-alive request."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    if body or method in ("POST", "PUT"):
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class LoadResult:
    """Latencies (seconds, one per completed request), wall time, status counts."""

    latencies: np.ndarray
    elapsed_s: float
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.count else float("nan")

    def summary(self) -> dict:
        return {
            "requests": self.count,
            "seconds": round(self.elapsed_s, 3),
            "req_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile_ms(50), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
        }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _worker(
    host: str,
    port: int,
    next_request: Callable[[], bytes | None],
    deadline: float,
    latencies: list[float],
    statuses: dict[int, int],
    check: Callable[[int, bytes], bool] | None,
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            request = next_request()
            if request is None:
                return
            start = time.perf_counter()
            writer.write(request)
            status, body = await _read_response(reader)
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
            if check is not None and not check(status, body):
                errors[0] += 1
    finally:
        writer.close()


async def run_load_async(
    host: str,
    port: int,
    requests: Sequence[bytes] | Callable[[int], bytes],
    *,
    concurrency: int = 16,
    max_requests: int = 10_000,
    duration_s: float = 10.0,
    check: Callable[[int, bytes], bool] | None = None,
) -> LoadResult:
    """Send up to ``max_requests`` (cycling through ``requests``, or ``requests(i)``) for at
    most ``duration_s`` seconds over ``concurrency`` keep-alive connections."""
    counter = itertools.count()

    def next_request() -> bytes | None:
        i = next(counter)
        if i >= max_requests:
            return None
        return requests(i) if callable(requests) else requests[i % len(requests)]

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = [0]
    start = time.perf_counter()
    deadline = start + duration_s
    await asyncio.gather(
        *(_worker(host, port, next_request, deadline, latencies, statuses, check, errors) for _ in range(concurrency))
    )
    return LoadResult(np.asarray(latencies), time.perf_counter() - start, statuses, errors[0])


def run_load(host: str, port: int, requests: Sequence[bytes] | Callable[[int], bytes], **kwargs) -> LoadResult:
    """Synchronous wrapper of :func:`run_load_async` (uses uvloop when installed)."""
    try:
        import uvloop

        return uvloop.run(run_load_async(host, port, requests, **kwargs))
    except ImportError:
        return asyncio.run(run_load_async(host, port, requests, **kwargs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--path", default="/v1/decide")
    parser.add_argument("--body", default="", help="request body (JSON text)")
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-n", "--requests", type=int, default=10_000)
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    request = http_request(args.host, args.port, args.method, args.path, args.body.encode())
    result = run_load(
        args.host,
        args.port,
        [request],
        concurrency=args.concurrency,
        max_requests=args.requests,
        duration_s=args.duration,
    )
    print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
