"""Which HTTP library avrohttp.AsyncClient stands on, measured: calls per second of a bare
loop of aiohttp, of httpx, and of a minimal HTTP/1.1 client on asyncio's streams, each
posting the same bytes (the benchmark's echo call), one call at a time on one keep-alive
connection and 50 calls at once; then AsyncClient beside the bare loop of its library, and
the same Avro work on aiohttp beside aiohttp's bare loop.

The loops take turns in short rounds, in a rotating order, against one server in another
process; a library's ratio is the median of its ratios within each round (bench/load.py
times EchoClient the same way). docs/asyncio.md, "The async client", has the figures.

Try it: `python bench/async_client_libraries.py` (the bare eventlet.wsgi server by
default, `--server server.py` for the real one). aiohttp and httpx are measured if they are
installed: `pip install aiohttp==3.14.5 httpx==0.29.0`.
"""

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import avrohttp
import wire
from avrohttp import codec
from bench.settings import LISTENING, QUERY, TARGET_ASYNC_CLIENT_RATIO
from protocol import EchoProtocol

SERVERS = {"bare": ROOT / "bench" / "bare_server.py", "server.py": ROOT / "server.py"}
CONCURRENCY = (1, 50)
ROUNDS = 5
ROUND_SECONDS = 1.0
STREAMS = "asyncio streams loop"  # AsyncClient's own library, and the loop it must keep up with


class StreamsLoop:
    """The least an asyncio client can do: write the request, read the answer's head up to
    its Content-Length, read the body; a connection per call in flight, kept for the next."""

    def __init__(self, host: str, port: int, body: bytes) -> None:
        self.address = (host, port)
        self.request = (b"POST / HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: avro/binary\r\n"
                        b"Content-Length: %d\r\n\r\n" % (host.encode(), port, len(body)) + body)
        self.idle: List[tuple] = []

    async def call(self) -> bytes:
        reader, writer = self.idle.pop() if self.idle else await asyncio.open_connection(
            *self.address)
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        answer = await reader.readexactly(int(re.search(rb"(?i)content-length: *(\d+)", head)[1]))
        self.idle.append((reader, writer))
        return answer

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


class AiohttpLoop:
    def __init__(self, host: str, port: int, body: bytes) -> None:
        import aiohttp

        self.url, self.body = f"http://{host}:{port}/", body
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def call(self) -> bytes:
        async with self.session.post(self.url, data=self.body,
                                     headers={"Content-Type": "avro/binary"}) as answer:
            return await answer.read()

    async def close(self) -> None:
        await self.session.close()


class HttpxLoop:
    def __init__(self, host: str, port: int, body: bytes) -> None:
        import httpx

        self.url, self.body = f"http://{host}:{port}/", body
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))

    async def call(self) -> bytes:
        answer = await self.client.post(self.url, content=self.body,
                                        headers={"Content-Type": "avro/binary"})
        return answer.content

    async def close(self) -> None:
        await self.client.aclose()


class AsyncClientLoop:
    """AsyncClient calling echo: after the first call, the very bytes of the bare loops."""

    def __init__(self, host: str, port: int, body: bytes) -> None:
        self.client = avrohttp.AsyncClient(EchoProtocol, host, port, timeout=10)

    async def call(self) -> str:
        return await self.client.call("echo", query=QUERY)

    async def close(self) -> None:
        await self.client.close()


class AvroOnAiohttpLoop(AiohttpLoop):
    """What AsyncClient on aiohttp would be: the same Requestor (the Avro work, a third of
    AsyncClient's own), its requests posted with aiohttp."""

    def __init__(self, host: str, port: int, body: bytes) -> None:
        super().__init__(host, port, body)
        self.requestor = avrohttp.Requestor(EchoProtocol, self)

    async def call(self) -> str:
        exchange = self.requestor.exchange("echo", {"query": QUERY})
        request = next(exchange)
        while True:
            self.body = codec.frame(request)
            try:
                request = exchange.send(codec.unframe(await super().call()))
            except StopIteration as done:
                return done.value


LOOPS: Dict[str, Callable] = {STREAMS: StreamsLoop, "aiohttp loop": AiohttpLoop,
                              "httpx loop": HttpxLoop, "AsyncClient": AsyncClientLoop,
                              "Avro on aiohttp": AvroOnAiohttpLoop}


def installed(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


async def calls_per_second(make_loop: Callable, address: tuple, body: bytes, concurrency: int,
                           seconds: float) -> float:
    """`concurrency` tasks calling through one loop object for `seconds`: calls per second."""
    loop = make_loop(*address, body)
    try:
        # Connect (and handshake) outside the timing, on as many connections as will be used.
        await asyncio.gather(*(loop.call() for _ in range(concurrency)))
        count = 0
        started = time.perf_counter()
        deadline = started + seconds

        async def calls() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await loop.call()
                count += 1

        await asyncio.gather(*(calls() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)
    finally:
        await loop.close()


def measure(names: List[str], address: tuple, body: bytes, concurrency: int, rounds: int,
            seconds: float) -> Dict[str, List[float]]:
    rates = {name: [] for name in names}
    for round_number in range(rounds):
        turn = round_number % len(names)
        for name in names[turn:] + names[:turn]:
            rates[name].append(asyncio.run(
                calls_per_second(LOOPS[name], address, body, concurrency, seconds)))
        print(f"  {concurrency} at once, round {round_number + 1}/{rounds}: " + ", ".join(
            f"{name} {rates[name][-1]:,.0f}/s" for name in names), file=sys.stderr, flush=True)
    return rates


def report(rates: Dict[str, List[float]], concurrency: int) -> List[str]:
    base = rates[STREAMS]
    lines = [f"{concurrency} call{'s' if concurrency > 1 else ''} at once:",
             f"  {'':22} {'median calls/s':>15} {'best':>8} {'of the streams loop':>20}"]
    for name, values in rates.items():
        ratio = statistics.median(rate / streams for rate, streams in zip(values, base))
        lines.append(f"  {name:22} {statistics.median(values):15,.0f} {max(values):8,.0f} "
                     f"{ratio:19.2f}x")
    return lines


def start_server(program: Path) -> tuple:
    """The server, on a free port: (process, (host, port))."""
    process = subprocess.Popen([sys.executable, str(program), "--port", "0"], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        match = LISTENING.search(line)
        if match:
            return process, (match[1], int(match[2]))
    process.kill()
    raise SystemExit(f"{program.name} did not start: {line.strip()}")


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=SERVERS, default="bare",
                        help="the server to call (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="rounds per number of calls at once (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=ROUND_SECONDS,
                        help="seconds per loop per round (default: %(default)g)")
    args = parser.parse_args(argv)

    names = [name for name, library in ((STREAMS, "asyncio"), ("aiohttp loop", "aiohttp"),
                                        ("httpx loop", "httpx"), ("AsyncClient", "asyncio"),
                                        ("Avro on aiohttp", "aiohttp"))
             if installed(library)]
    process, address = start_server(SERVERS[args.server])
    try:
        results = {concurrency: measure(names, address, wire.call_body(), concurrency,
                                        args.rounds, args.seconds)
                   for concurrency in CONCURRENCY}
    finally:
        process.kill()
        process.wait()
    print(f"Against {args.server} on {address[0]}, medians of {args.rounds} rounds of "
          f"{args.seconds:g} s (Python {sys.version.split()[0]}):")
    for concurrency, rates in results.items():
        print("\n".join(report(rates, concurrency)))
    for concurrency, rates in results.items():
        for client, bare in (("AsyncClient", STREAMS), ("Avro on aiohttp", "aiohttp loop")):
            if client not in rates:
                continue
            ratio = statistics.median(a / b for a, b in zip(rates[client], rates[bare]))
            met = "met" if ratio >= TARGET_ASYNC_CLIENT_RATIO else "NOT met"
            print(f"target: {client} >= {TARGET_ASYNC_CLIENT_RATIO:.2f}x the {bare}, "
                  f"{concurrency} at once: {ratio:.2f}x, {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
