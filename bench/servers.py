"""The benchmark's servers: what to run, starting, checking and stopping them, their memory.

A server counts only once it answers a real echo call correctly (check_server); the call it
settles on is the one h2load then sends it. The gRPC servers are checked by a real gRPC
client, sending the same bytes on the same path as h2load does.
"""

import contextlib
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

# First of the project's modules: it puts the repository's root and tests/ on sys.path.
from bench.settings import (BENCH, CONTENT_TYPE, LISTENING, QUERY, ROOT, START_TIMEOUT_SECONDS,
                            STOP_TIMEOUT_SECONDS, BenchError, Unavailable)

import wire
from protocol import PROTOCOL_JSON


@dataclass
class ServerSpec:
    name: str  # key in results.json
    label: str  # in the table and the plot
    command: Callable[[], list]  # called at start-up: a free port is picked then
    stdin: Optional[str] = None
    note: str = ""
    kind: str = "avro"  # or "grpc": an echo of bench/echo.proto over HTTP/2


@dataclass
class Running:
    spec: ServerSpec
    process: subprocess.Popen
    host: str
    port: int
    log_path: Path
    body: bytes = b""  # the call that h2load sends: the one a client sends once handshaken
    answer: bytes = b""
    body_file: Optional[Path] = None  # the body, for h2load to read
    points: list = field(default_factory=list)


def free_port() -> int:
    """A local port that nothing listens on (for now), for servers that cannot take port 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_specs(workers: int, with_stdlib: bool) -> list:
    """The servers to measure: the two whose better figure is the limit first, then ours on
    eventlet, then ours on asyncio and its limit, then the gRPC and avsc peers."""
    python = sys.executable

    def program(path: Path, *arguments: str) -> Callable[[], list]:
        return lambda: [python, str(path), *arguments]

    def on_a_free_port(path: Path, *arguments: str) -> Callable[[], list]:
        # Worker processes cannot share a port picked by port 0 after the fact: pass one.
        return lambda: [python, str(path), "--port", str(free_port()), *arguments]

    server, bare, protections = ROOT / "server.py", BENCH / "bare_server.py", \
        BENCH / "protections_server.py"
    uvicorn = BENCH / "uvicorn_server.py"
    specs = [
        ServerSpec("bare", "bare eventlet.wsgi", program(bare, "--port", "0")),
        ServerSpec("bare_yield", "bare eventlet.wsgi + yield",
                   program(bare, "--port", "0", "--yield")),
        ServerSpec("protections", "our protections, no Avro work",
                   program(protections, "--port", "0")),
        ServerSpec("server", "server.py", program(server, "--port", "0")),
        # What the metrics cost (bench/metrics_cost.py): the same server with them.
        ServerSpec("server-metrics", "server.py --metrics",
                   program(server, "--port", "0", "--metrics")),
        ServerSpec("workers", f"server.py --workers {workers}",
                   on_a_free_port(server, "--workers", str(workers))),
        # The asyncio host, and its limit: bare uvicorn, with no protections and no Avro work.
        ServerSpec("uvicorn", "bare uvicorn", program(uvicorn, "--port", "0")),
        ServerSpec("protections_asyncio", "our protections on asyncio, no Avro work",
                   program(protections, "--port", "0", "--loop", "asyncio")),
        ServerSpec("server_asyncio", "server.py --loop asyncio",
                   program(server, "--port", "0", "--loop", "asyncio")),
        ServerSpec("uvicorn_workers", f"bare uvicorn --workers {workers}",
                   on_a_free_port(uvicorn, "--workers", str(workers))),
        ServerSpec("workers_asyncio", f"server.py --loop asyncio --workers {workers}",
                   on_a_free_port(server, "--loop", "asyncio", "--workers", str(workers))),
        # What a user would pick instead: gRPC Python, serving the same echo.
        ServerSpec("grpc", "gRPC Python, sync", program(BENCH / "grpc_server.py", "--port", "0"),
                   kind="grpc"),
        ServerSpec("grpc_aio", "gRPC Python, grpc.aio",
                   program(BENCH / "grpc_aio_server.py", "--port", "0"), kind="grpc"),
    ]
    node = shutil.which("node")
    specs.append(ServerSpec(
        "avsc", "avsc (Node)", lambda: [node, str(BENCH / "avsc_server.js"), "0"],
        stdin=PROTOCOL_JSON))
    specs.append(ServerSpec(
        "avsc_workers", f"avsc, {workers} processes",
        lambda: [node, str(BENCH / "avsc_server.js"), str(free_port()), str(workers)],
        stdin=PROTOCOL_JSON))
    if with_stdlib:
        specs.append(ServerSpec(
            "stdlib", "http.server (Avro's sample)",
            program(BENCH / "stdlib_server.py", "--port", "0"),
            note="closes the connection after each answer (HTTP/1.0, as in Avro's sample), "
                 "and h2load does not open another: its figures are not this server's speed"))
    return specs


def missing(spec: ServerSpec) -> Optional[str]:
    """Why a server cannot run here, or None."""
    if spec.name.startswith("avsc"):
        return avsc_missing()
    if spec.kind == "grpc":
        return grpc_missing()
    if spec.name.startswith("uvicorn") and importlib.util.find_spec("uvicorn") is None:
        return ("uvicorn is not installed (pip install -r requirements-bench.txt, which make "
                "bench runs)")
    return None


def grpc_missing() -> Optional[str]:
    """Why the gRPC servers cannot run here, or None."""
    for module, package in (("grpc", "grpcio"), ("grpc_tools", "grpcio-tools")):
        if importlib.util.find_spec(module) is None:
            return (f"{package} is not installed (pip install -r requirements-bench.txt, "
                    "which make bench runs)")
    return None


def avsc_missing() -> Optional[str]:
    """Why the avsc server cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (ROOT / "tests" / "interop" / "node_modules" / "avsc").is_dir():
        return "avsc is not installed (npm ci in tests/interop, which make bench runs)"
    return None


# --- Servers: start, check, stop -------------------------------------------------------------

def start_server(spec: ServerSpec, log_dir: Path,
                 timeout: float = START_TIMEOUT_SECONDS) -> Running:
    """Start a server and wait for its "listening on" line. Raises Unavailable."""
    log_path = log_dir / f"{spec.name}.log"
    # The log goes to a file, not a pipe: a pipe that nobody reads would fill up and block
    # a server that logs under load.
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            spec.command(), cwd=ROOT, stdout=log, stderr=log, text=True,
            stdin=subprocess.PIPE if spec.stdin is not None else subprocess.DEVNULL,
            start_new_session=True)  # its own process group: stop_server reaches its workers
    if spec.stdin is not None:
        with process.stdin:
            process.stdin.write(spec.stdin)
    deadline = time.monotonic() + timeout
    while True:
        match = LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            host, port = match.group(1), int(match.group(2))
            # A supervisor may say where it listens before its workers have started.
            wait_connectable(host, port, deadline)
            return Running(spec, process, host, port, log_path)
        if process.poll() is not None:
            last = (log_path.read_text(errors="replace").strip().splitlines() or ["no output"])
            # argparse exits 2 on an unknown flag: a server.py without --workers, say.
            raise Unavailable(f"exited with status {process.returncode}: {last[-1]}")
        if time.monotonic() > deadline:
            stop_server(process)
            raise Unavailable(f"printed no 'listening on' line in {timeout:g} s")
        time.sleep(0.05)


def wait_connectable(host: str, port: int, deadline: float) -> None:
    """Return once a connection to host:port succeeds; raise Unavailable at the deadline."""
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise Unavailable(f"said it listens on {host}:{port}, but: {e}") from e
            time.sleep(0.05)


def log_tail(log_dir: Path, spec: ServerSpec, lines: int = 20) -> str:
    """The end of a server's log, to show with an error."""
    path = log_dir / f"{spec.name}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    tail = text.strip().splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in tail) or "  (its log is empty)"


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL whatever is left of it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            pass
    # Workers may outlive their supervisor: the group is killed either way.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def post(host: str, port: int, body: bytes, timeout: float = 10.0) -> bytes:
    """One POST on a fresh connection; the body of a 200 avro/binary answer."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", "/", body=body, headers={"Content-Type": CONTENT_TYPE})
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"no answer from {host}:{port}: {e}") from e
    finally:
        connection.close()
    content_type = (response.getheader("Content-Type") or "").split(";")[0]
    if response.status != 200 or content_type != CONTENT_TYPE:
        raise BenchError(f"answered {response.status} {content_type}: {payload[:200]!r}")
    return payload


def decode(payload: bytes) -> wire.Answer:
    try:
        return wire.read_answer(payload)
    except Exception as e:  # anything avro.io can raise on bytes that are not Avro
        raise BenchError(f"the answer is not an Avro call response: {payload[:200]!r}") from e


def handshake_call(host: str, port: int, teach: int = 4) -> tuple:
    """Call echo(QUERY) the way a client does, until the handshake is BOTH.

    Returns (request body, answer body): the call a client sends from then on, which is the
    one to load the server with. server.py answers BOTH at once; avsc hashes the protocol's
    JSON text its own way, so it first says NONE (send your protocol) and then CLIENT (here
    is mine), as it would to any client. A server of several processes learns a client's
    protocol in each process apart (avsc's cluster does, taking connections in turns): the
    call that carries it is sent `teach` more times, so that each of them has it.
    """
    handshake = {}
    for _ in range(4):
        body = wire.call_body("echo", QUERY, **handshake)
        payload = post(host, port, body)
        answer = decode(payload)
        match = answer.handshake["match"]
        if match == "NONE":
            handshake["send_protocol"] = True
            continue
        if answer.is_error or answer.datum != QUERY:
            raise BenchError(f"echo({QUERY!r}) answered {answer.datum!r} "
                             f"(error: {answer.is_error}, handshake {match})")
        if match == "CLIENT":
            handshake["server_hash"] = answer.handshake["serverHash"]
            continue
        if not handshake.pop("send_protocol", False):
            return body, payload
        for _ in range(teach):
            post(host, port, body)
    raise BenchError("the handshake never settled on BOTH")


def check_server(running: Running, calls: int = 4) -> None:
    """The server answers a real echo call correctly, on several connections.

    Several, so that each worker of `--workers N` is likely to answer at least one.
    """
    if running.spec.kind == "grpc":
        return check_grpc_server(running, calls)
    running.body, running.answer = handshake_call(running.host, running.port)
    for _ in range(calls - 1):
        answer = decode(post(running.host, running.port, running.body))
        if answer.handshake["match"] != "BOTH" or answer.is_error or answer.datum != QUERY:
            raise BenchError(f"a later call was answered {answer}")


def check_grpc_server(running: Running, calls: int = 4) -> None:
    """A gRPC server answers echo(QUERY) correctly, to a real gRPC client sending exactly the
    message bytes, on exactly the path, that h2load then sends (each call on a channel of
    its own, so on a connection of its own)."""
    import grpc

    from bench.grpc_echo import ECHO_PATH, echo_modules, grpc_frame

    echo_pb2, _ = echo_modules()
    request = echo_pb2.EchoRequest(query=QUERY).SerializeToString()
    for _ in range(calls):
        try:
            with grpc.insecure_channel(f"{running.host}:{running.port}") as channel:
                # No serializers: the bytes go as they are, and come back as they are.
                answer = channel.unary_unary(ECHO_PATH)(request, timeout=10)
        except grpc.RpcError as e:
            raise BenchError(f"no answer from {running.host}:{running.port}: {e.code()} "
                             f"{e.details()}") from e
        reply = echo_pb2.EchoReply.FromString(answer)
        if reply.answer != QUERY:
            raise BenchError(f"echo({QUERY!r}) answered {reply.answer!r}")
    running.body, running.answer = grpc_frame(request), answer


# --- Memory ----------------------------------------------------------------------------------

def descendants(pid: int) -> list:
    """The pids of a process's children, their children, and so on (from /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                found.append(int(child))
                found.extend(descendants(int(child)))
    return found


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of a process and all its descendants (workers), or None if gone."""
    total = 0
    for each in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total or None
