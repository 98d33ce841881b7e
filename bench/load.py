"""The load: h2load against a server, and the clients' calls per second.

h2load, nghttp2's load generator, speaks HTTP/1.1 (to the Avro servers and bare uvicorn)
and HTTP/2 (to the gRPC servers), so that every row of the table comes from the same
generator in the same run. It prints its counts as text, and writes each request's
latency to a log file, from which the percentiles are read. The clients are timed in
alternating rounds against bare eventlet.wsgi.
"""

import asyncio
import http.client
import math
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import avro.errors
import avro.ipc

# First of the project's modules: it puts the repository's root and tests/ on sys.path.
import avrohttp
from bench.settings import (CONTENT_TYPE, LOAD_THREADS, LOAD_TIMEOUT_SECONDS, QUERY,
                            BenchError, progress)

import client
from bench.grpc_echo import ECHO_PATH
from bench.servers import Running
from protocol import EchoProtocol


# --- h2load ----------------------------------------------------------------------------------

# What h2load prints at the end of a run (nghttp2 1.52's wording).
H2LOAD_RATE = re.compile(r"^finished in ([0-9.]+)s, ([0-9.]+) req/s", re.MULTILINE)
H2LOAD_REQUESTS = re.compile(
    r"^requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout$", re.MULTILINE)
H2LOAD_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx$",
                           re.MULTILINE)


def h2load_command(url: str, body_file: Path, connections: int, seconds: int,
                   log_file: Path, threads: int = LOAD_THREADS, grpc: bool = False) -> list:
    """h2load for one point: HTTP/1.1 POSTs of the Avro call, or, for a gRPC server, HTTP/2
    with one stream per connection (as a gRPC client calls), `seconds` long."""
    command = ["h2load", f"--threads={min(threads, connections)}", f"--clients={connections}",
               "--max-concurrent-streams=1", f"--duration={seconds}",
               f"--connection-inactivity-timeout={LOAD_TIMEOUT_SECONDS}",
               f"--data={body_file}", f"--log-file={log_file}"]
    if grpc:
        # A unary call: POST to /package.Service/Method; `te: trailers` is required, since
        # gRPC's status comes in trailers (which h2load does not read: check_server has
        # checked the answer with a real gRPC client).
        return [*command, "--header=content-type: application/grpc", "--header=te: trailers",
                url.rstrip("/") + ECHO_PATH]
    return [*command, "--h1", f"--header=content-type: {CONTENT_TYPE}", url]


def percentile(ordered: list, fraction: float) -> float:
    """The nearest-rank percentile of a sorted list (as wrk's and HdrHistogram's are)."""
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def parse_h2load(output: str, log_text: str) -> dict:
    """One run's figures: h2load's counts from its output, latencies from its log file (one
    line per request answered: start time in µs, status, latency in µs)."""
    rate, counts = H2LOAD_RATE.search(output), H2LOAD_REQUESTS.search(output)
    statuses = H2LOAD_STATUS.search(output)
    if not (rate and counts and statuses):
        raise BenchError(f"h2load printed no result:\n{output.strip()[-1000:]}")
    latencies = sorted(int(line.split("\t")[2]) for line in log_text.splitlines() if line)
    counts = {key: int(value) for key, value in counts.groupdict().items()}
    _, _, client_errors, server_errors = (int(n) for n in statuses.groups())
    return {
        "requests": counts["succeeded"],
        "seconds": float(rate.group(1)),
        "requests_per_s": float(rate.group(2)),
        "latency_ms": {
            "p50": percentile(latencies, 0.50) / 1000 if latencies else None,
            "p90": percentile(latencies, 0.90) / 1000 if latencies else None,
            "p99": percentile(latencies, 0.99) / 1000 if latencies else None,
            "max": latencies[-1] / 1000 if latencies else None,
        },
        # h2load's `failed` counts every request that did not succeed: those answered 4xx or
        # 5xx, those `errored` (the connection broke, or the stream was reset), timed out.
        "errors": {"errored": counts["errored"], "timeout": counts["timeout"],
                   "4xx": client_errors, "5xx": server_errors},
        "error_total": counts["failed"],
    }


def run_load(running: Running, connections: int, seconds: int,
             threads: int = LOAD_THREADS) -> dict:
    """Load the server with h2load: parse_h2load's figures. A run that prints none is tried
    again once, so that one crash of h2load does not throw away the whole benchmark."""
    url = f"http://{running.host}:{running.port}/"
    log_file = running.body_file.with_suffix(".h2load.log")
    command = h2load_command(url, running.body_file, connections, seconds, log_file, threads,
                             grpc=running.spec.kind == "grpc")
    for attempt in (1, 2):
        log_file.unlink(missing_ok=True)  # h2load appends to it
        try:
            result = subprocess.run(command, capture_output=True, text=True,
                                    timeout=seconds + 60)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"h2load did not finish within {seconds + 60} s") from e
        try:
            log_text = log_file.read_text() if log_file.exists() else ""
            return parse_h2load(result.stdout + result.stderr, log_text)
        except BenchError as e:
            if attempt == 2 or running.process.poll() is not None:
                raise BenchError(f"{e}\n(h2load exited with status {result.returncode})") from e
            progress(f"  h2load printed no result (status {result.returncode}): trying again")
        finally:
            log_file.unlink(missing_ok=True)


def make_point(connections: int, load: dict, rss: Optional[int]) -> dict:
    """One row of results.json from one h2load run."""
    return {
        "connections": connections,
        "requests": load["requests"],
        "seconds": load["seconds"],
        "requests_per_s": load["requests_per_s"],
        "p50_ms": load["latency_ms"]["p50"],
        "p99_ms": load["latency_ms"]["p99"],
        "max_ms": load["latency_ms"]["max"],
        "errors": dict(load["errors"]),
        "error_total": load["error_total"],
        "rss_bytes": rss,
    }


def median_points(points: list) -> list:
    """One point per number of connections: of repeated runs, the one with the median req/s.

    A whole run is kept, rather than a median of each figure, so that its req/s, latencies,
    errors and memory still belong together. The others' req/s are listed beside it.
    """
    chosen = []
    for connections in sorted({point["connections"] for point in points}):
        runs = sorted((p for p in points if p["connections"] == connections),
                      key=lambda p: p["requests_per_s"])
        median = dict(runs[(len(runs) - 1) // 2])  # of an even number, the lower
        if len(runs) > 1:
            median["requests_per_s_of_runs"] = [p["requests_per_s"] for p in runs]
        chosen.append(median)
    return chosen


# --- The client ------------------------------------------------------------------------------

def http_client_loop(host: str, port: int, body: bytes) -> Callable[[], None]:
    """The least a Python client can do: post the bytes, read the answer, keep the connection."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    headers = {"Content-Type": CONTENT_TYPE}

    def call() -> None:
        connection.request("POST", "/", body=body, headers=headers)
        connection.getresponse().read()

    call.close = connection.close
    return call


def echo_client_loop(host: str, port: int, body: bytes) -> Callable[[], None]:
    echo = client.EchoClient(host, port, timeout=10)

    def call() -> None:
        echo.echo(QUERY)

    call.close = echo.close
    return call


def requestor_loop(host: str, port: int, body: bytes) -> Callable[[], None]:
    """avro.ipc as it comes, for reference: its Requestor on its HTTPTransceiver."""
    transceiver = avro.ipc.HTTPTransceiver(host, port)
    requestor = avro.ipc.Requestor(EchoProtocol, transceiver)

    def call() -> None:
        requestor.request("echo", {"query": QUERY})

    call.close = transceiver.close
    return call


CLIENTS = {
    "http.client loop": http_client_loop,
    "EchoClient": echo_client_loop,
    "avro.ipc.Requestor": requestor_loop,
}


# --- The async client ------------------------------------------------------------------------
# avrohttp.AsyncClient, against a bare loop of its HTTP library posting the same bytes
# (TARGET_ASYNC_CLIENT_RATIO). Its HTTP library is asyncio's own streams: AsyncClient speaks
# HTTP/1.1 on them itself (avrohttp/async_client.py says why). Should it move to another
# library, BARE_ASYNC_LOOP becomes a loop of that one: the target is against its library.

def asyncio_streams_loop(host: str, port: int, body: bytes) -> Callable:
    """The least an asyncio client can do: post the bytes on one connection, read the status
    line and headers, then Content-Length bytes."""
    request = (f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {CONTENT_TYPE}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    streams = []

    async def call() -> None:
        if not streams:
            streams.extend(await asyncio.open_connection(host, port))
        reader, writer = streams
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(CONTENT_LENGTH.search(head).group(1)))

    async def close() -> None:
        if streams:
            streams[1].close()
            await streams[1].wait_closed()

    call.close = close
    return call


def async_client_loop(host: str, port: int, body: bytes) -> Callable:
    echo = avrohttp.AsyncClient(EchoProtocol, host, port, timeout=10, retry=True)

    async def call() -> None:
        await echo.call("echo", query=QUERY)

    call.close = echo.close
    return call


ASYNC_LOOPS = (asyncio_streams_loop, async_client_loop)  # timed in an event loop
BARE_ASYNC_LOOP = "asyncio streams loop"
# Empty where avrohttp has no AsyncClient (it came after the rest of this benchmark).
ASYNC_CLIENTS = ({BARE_ASYNC_LOOP: asyncio_streams_loop, "AsyncClient": async_client_loop}
                 if hasattr(avrohttp, "AsyncClient") else {})
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


def calls_per_second(make_call: Callable, host: str, port: int, body: bytes,
                     seconds: float) -> float:
    """Calls per second of one client (of CLIENTS, or of ASYNC_CLIENTS: in a loop of its own)."""
    timed = _async_calls_per_second if make_call in ASYNC_LOOPS else _calls_per_second
    try:
        return timed(make_call, host, port, body, seconds)
    except (OSError, EOFError, ValueError, http.client.HTTPException, avrohttp.CallFailed,
            avro.errors.AvroException) as e:
        raise BenchError(f"{make_call.__name__} failed: {e}") from e


def _calls_per_second(make_call: Callable, host: str, port: int, body: bytes,
                      seconds: float) -> float:
    call = make_call(host, port, body)
    try:
        call()  # connect and handshake outside the timing
        count = 0
        started = time.perf_counter()
        while True:
            call()
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                return count / elapsed
    finally:
        call.close()


def _async_calls_per_second(make_call: Callable, host: str, port: int, body: bytes,
                            seconds: float) -> float:
    async def measure() -> float:
        call = make_call(host, port, body)
        try:
            await call()  # connect and handshake outside the timing
            count = 0
            started = time.perf_counter()
            while True:
                await call()
                count += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds:
                    return count / elapsed
        finally:
            await call.close()

    return asyncio.run(measure())


def measure_clients(host: str, port: int, body: bytes, rounds: int, seconds: float,
                    progress: Callable[[str], None]) -> dict:
    """Calls per second of each client, in short alternating rounds.

    The clients take turns, in a rotating order, so that each round measures them all under
    much the same load; see client_results for how the rounds are summed up.
    """
    clients = {**CLIENTS, **ASYNC_CLIENTS}
    rates = {name: [] for name in clients}
    names = list(clients)
    for round_number in range(rounds):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in order:
            rates[name].append(calls_per_second(clients[name], host, port, body, seconds))
        progress(f"client round {round_number + 1}/{rounds}: " + ", ".join(
            f"{name} {rates[name][-1]:,.0f}/s" for name in names))
    return client_results(rates)


def client_results(rates: dict) -> dict:
    """Medians: of each client's rates, and of its ratio to the bare loop in the same round.

    The machine is shared, and other work comes and goes in bursts. The best round of each
    client would compare one client's luckiest moment with another's; a ratio taken within
    one round compares runs made a second apart, and the median of those ratios shrugs off
    the rounds that a burst hit.
    """
    bare = rates["http.client loop"]
    bare_async = rates.get(BARE_ASYNC_LOOP)
    return {
        "rounds": {name: [round(rate, 1) for rate in values] for name, values in rates.items()},
        "median_calls_per_s": {name: round(statistics.median(values), 1)
                               for name, values in rates.items()},
        "best_calls_per_s": {name: round(max(values), 1) for name, values in rates.items()},
        "ratio_to_http_client": {
            name: round(statistics.median(rate / base for rate, base in zip(values, bare)), 3)
            for name, values in rates.items()},
        # AsyncClient's target: against the bare loop of its own HTTP library, the same way.
        "ratio_to_bare_async_loop": round(statistics.median(
            rate / base for rate, base in zip(rates["AsyncClient"], bare_async)), 3)
        if bare_async and rates.get("AsyncClient") else None,
    }

