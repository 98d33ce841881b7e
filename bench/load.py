"""The load: wrk against a server, and the clients' calls per second.

wrk runs post.lua, which prints its results as one JSON line; the clients are timed in
alternating rounds against bare eventlet.wsgi.
"""

import http.client
import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import avro.errors
import avro.ipc

# First of the project's modules: it puts the repository's root and tests/ on sys.path.
import avrohttp
from bench.settings import (BENCH, CONTENT_TYPE, QUERY, WRK_RESULT, WRK_THREADS,
                            WRK_TIMEOUT_SECONDS, BenchError, progress)

import client
from bench.servers import Running
from protocol import EchoProtocol


# --- wrk -------------------------------------------------------------------------------------

def wrk_command(url: str, body_file: Path, connections: int, seconds: int,
                threads: int = WRK_THREADS) -> list:
    return ["wrk", f"--threads={min(threads, connections)}", f"--connections={connections}",
            f"--duration={seconds}s", f"--timeout={WRK_TIMEOUT_SECONDS}s", "--latency",
            f"--script={BENCH / 'post.lua'}", url, "--", str(body_file)]


def parse_wrk_output(output: str) -> dict:
    """The JSON that post.lua's done() prints, found among wrk's own text."""
    match = WRK_RESULT.search(output)
    if not match:
        raise BenchError(f"wrk printed no result:\n{output.strip()[-1000:]}")
    return json.loads(match.group(1))


def run_wrk(running: Running, body_file: Path, connections: int, seconds: int,
            threads: int) -> dict:
    """Load the server with wrk: post.lua's results. A run that prints none is tried again
    once, so that one crash of wrk does not throw away the whole benchmark."""
    url = f"http://{running.host}:{running.port}/"
    command = wrk_command(url, body_file, connections, seconds, threads)
    for attempt in (1, 2):
        try:
            result = subprocess.run(command, capture_output=True, text=True,
                                    timeout=seconds + 60)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"wrk did not finish within {seconds + 60} s") from e
        try:
            return parse_wrk_output(result.stdout + result.stderr)
        except BenchError as e:
            if attempt == 2 or running.process.poll() is not None:
                raise BenchError(f"{e}\n(wrk exited with status {result.returncode})") from e
            progress(f"  wrk printed no result (status {result.returncode}): trying again")


def make_point(connections: int, wrk: dict, rss: Optional[int]) -> dict:
    """One row of results.json from one wrk run."""
    seconds = wrk["duration_us"] / 1e6
    return {
        "connections": connections,
        "requests": wrk["requests"],
        "seconds": round(seconds, 3),
        "requests_per_s": round(wrk["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": wrk["latency_us"]["p50"] / 1000,
        "p99_ms": wrk["latency_us"]["p99"] / 1000,
        "max_ms": wrk["latency_us"]["max"] / 1000,
        "errors": dict(wrk["errors"]),
        "error_total": sum(wrk["errors"].values()),
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


def calls_per_second(make_call: Callable, host: str, port: int, body: bytes,
                     seconds: float) -> float:
    try:
        return _calls_per_second(make_call, host, port, body, seconds)
    except (OSError, http.client.HTTPException, avrohttp.CallFailed,
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


def measure_clients(host: str, port: int, body: bytes, rounds: int, seconds: float,
                    progress: Callable[[str], None]) -> dict:
    """Calls per second of each client, in short alternating rounds.

    The clients take turns, in a rotating order, so that each round measures them all under
    much the same load; see client_results for how the rounds are summed up.
    """
    rates = {name: [] for name in CLIENTS}
    names = list(CLIENTS)
    for round_number in range(rounds):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in order:
            rates[name].append(calls_per_second(CLIENTS[name], host, port, body, seconds))
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
    return {
        "rounds": {name: [round(rate, 1) for rate in values] for name, values in rates.items()},
        "median_calls_per_s": {name: round(statistics.median(values), 1)
                               for name, values in rates.items()},
        "best_calls_per_s": {name: round(max(values), 1) for name, values in rates.items()},
        "ratio_to_http_client": {
            name: round(statistics.median(rate / base for rate, base in zip(values, bare)), 3)
            for name, values in rates.items()},
    }

