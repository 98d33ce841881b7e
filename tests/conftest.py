"""Shared fixtures: the WSGI app in-process, a real server of either host on a free port (in a
thread of its own), and server.py run as a program.

The test process is not monkey-patched: as a user's program, it runs each host's Server, and
talks to it with plain sockets and threads.
"""

import asyncio
import contextlib
import io
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple, Tuple, Union

import avro.errors
import avro.ipc
import pytest

import avrohttp
import avrohttp.asgi
import avrohttp.hosting
import server
from hypothesis import settings

# This machine is shared and noisy: judge generated examples by their results, not their time.
settings.register_profile("no-deadline", deadline=None)
settings.load_profile("no-deadline")

ROOT = Path(__file__).resolve().parent.parent


class Response(NamedTuple):
    status: int
    headers: dict
    body: bytes


def call_app(app, body: bytes = b"", method: str = "POST", content_type="avro/binary",
             chunked: bool = False, content_length=None, stream=None) -> Response:
    """Call a WSGI app in-process, as eventlet.wsgi would, with no socket.

    `stream`, if given, is the request body's file instead of one holding `body`.
    """
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": "/", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": stream or io.BytesIO(body), "wsgi.url_scheme": "http",
        "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
    }
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if not chunked:
        environ["CONTENT_LENGTH"] = str(len(body) if content_length is None else content_length)
    started = {}

    def start_response(status, headers):
        started["status"] = int(status.split()[0])
        started["headers"] = {name.lower(): value for name, value in headers}

    payload = b"".join(app(environ, start_response))
    return Response(started["status"], started["headers"], payload)


class LocalTransceiver:
    """What a Requestor needs of a transceiver: each request handed to a responder
    in-process, with no HTTP, and kept in `sent`."""

    remote_name = ("local", 0)

    def __init__(self, responder) -> None:
        self.responder = responder
        self.sent = []

    def transceive(self, request: bytes) -> bytes:
        self.sent.append(request)
        return self.responder.respond(request)


class AnyResponder(avrohttp.Responder):
    """An avrohttp Responder for any protocol, without handlers: every message it knows is
    answered "Not implemented: <name>", as avro.ipc's Responder would. (A Responder with
    handle_ methods must have one for each message; overriding invoke lifts the check.)"""

    def invoke(self, message, request):
        raise avro.errors.AvroRemoteException(f"Not implemented: {message.name}")


class PlainRequestor(avro.ipc.Requestor):
    """avro.ipc's Requestor, with its module-level caches cleared first (and afterwards:
    see fresh_avro_ipc_caches)."""

    def __init__(self, *args) -> None:
        avro.ipc.REMOTE_HASHES.clear()
        avro.ipc.REMOTE_PROTOCOLS.clear()
        super().__init__(*args)


@pytest.fixture
def fresh_avro_ipc_caches(monkeypatch):
    """avro.ipc's module-level caches, for one test only: test_client.py checks that our
    client leaves them empty."""
    monkeypatch.setattr(avro.ipc, "REMOTE_HASHES", {})
    monkeypatch.setattr(avro.ipc, "REMOTE_PROTOCOLS", {})


def free_port() -> int:
    """A local port that nothing listens on (for now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_http_response(sock) -> tuple:
    """Read one HTTP/1.1 response with a Content-Length: (status line, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += receive(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    status, *header_lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, value in
               (line.split(": ", 1) for line in header_lines)}
    while len(body) < int(headers["content-length"]):
        body += receive(sock)
    return status, headers, body


def receive(sock) -> bytes:
    data = sock.recv(65536)
    assert data, "the connection closed before the whole response came"
    return data


def echo_app(**options):
    """A fresh AvroEcho application, so that no test sees another's protocol cache."""
    return avrohttp.make_application(server.EchoResponder(), **options)


def call_asgi(app, body: bytes = b"", method: str = "POST", content_type="avro/binary",
              chunked: bool = False, content_length=None, path: str = "/") -> Response:
    """Call an ASGI app in-process, as uvicorn would, with no socket: the twin of call_app.

    A chunked body comes to the application in pieces of up to 1000 bytes.
    """
    headers = []
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    else:
        length = len(body) if content_length is None else content_length
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8130)}
    pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)] if chunked else [body]
    messages = [{"type": "http.request", "body": piece, "more_body": n < len(pieces) - 1}
                for n, piece in enumerate(pieces or [b""])]
    sent = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, *bodies = sent
    assert start["type"] == "http.response.start"
    return Response(start["status"],
                    {name.decode().lower(): value.decode() for name, value in start["headers"]},
                    b"".join(message.get("body", b"") for message in bodies))


def echo_asgi_app(**options):
    """A fresh AvroEcho ASGI application, the asyncio host's twin of echo_app()."""
    return avrohttp.asgi.make_asgi_application(server.EchoResponder(), **options)


@pytest.fixture
def app():
    """A fresh application, so that no test sees another's protocol cache."""
    return echo_app()


# The hosts: every test that takes the `host` fixture runs against each of them.
HOSTS = ("eventlet", "asyncio")


@pytest.fixture(params=HOSTS)
def host(request) -> str:
    return request.param


def server_class(host: str) -> type:
    if host == "eventlet":
        import avrohttp.serve
        return avrohttp.serve.Server
    import avrohttp.serve_asyncio
    return avrohttp.serve_asyncio.Server


@contextlib.contextmanager
def running(server: avrohttp.hosting.Server):
    """Run a Server in a thread of its own until the end of the block: yields it, listening.

    At the end it is stopped as on SIGTERM (the calls in flight are answered); if it has not
    stopped 5 s later, at once.
    """
    status = []
    thread = threading.Thread(target=lambda: status.append(server.run()), daemon=True)
    thread.start()
    starting = time.monotonic()
    while not server.listening.wait(0.01):
        assert thread.is_alive(), "the server did not start (see its log)"
        assert time.monotonic() - starting < 30, "the server is still not listening after 30 s"
    try:
        yield server
    finally:
        server.stop()
        thread.join(5)
        if thread.is_alive():
            server.stop(now=True)
            thread.join(10)
        assert not thread.is_alive(), "the server did not stop"


@contextlib.contextmanager
def serving(responder: avro.ipc.Responder, host: str = "eventlet", **options):
    """The real server of `host` for the responder, in a thread of its own, on a free port,
    with these ServerOptions: yields its (host, port)."""
    options = avrohttp.ServerOptions(port=0, **options)
    with running(server_class(host)(options, responder)) as started:
        yield started.address


@pytest.fixture
def live_server(host):
    """A real server of each host: its (host, port)."""
    with serving(server.EchoResponder(), host) as address:
        yield address


class LargeEcho(server.EchoResponder):
    """Echo, whose every answer is `size` characters long."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.answer = "x" * size

    def handle_echo(self, query: str) -> str:
        return self.answer


# The server's log lines start with logging's default time stamp.
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def log_messages(log: str) -> list:
    """The server's log lines without their time stamps; each line must have one."""
    lines = log.splitlines()
    assert all(TIMESTAMP.match(line) for line in lines), log
    return [TIMESTAMP.sub("", line, count=1) for line in lines]


class ServerProcess(NamedTuple):
    process: subprocess.Popen
    port: int
    startup_line: str


@contextlib.contextmanager
def server_program(*args: str, program: Union[Path, Tuple[str, ...]] = ROOT / "server.py"):
    """Run server.py (or another program of avrohttp.cli: a path, or ("-m", "a.module")) on
    a free port, in its own session (so SIGINT reaches it).

    Yields a ServerProcess; the test may stop it. Whatever is still running at the end is
    killed, so a failing test leaves no server behind.
    """
    process = subprocess.Popen(
        [sys.executable, *(program if isinstance(program, tuple) else [str(program)]),
         "--port", "0", *args],
        cwd=ROOT, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # Workers (--workers) may log their own start before the supervisor's line.
        for line in iter(process.stderr.readline, ""):
            match = re.search(r"listening on https?://127\.0\.0\.1:(\d+)/", line)
            if match:
                break
        assert match, f"no startup line from server.py: {line!r}"
        yield ServerProcess(process, int(match.group(1)), line)
    finally:
        if process.poll() is None:
            process.kill()
        try:
            process.communicate()
        except RuntimeError:  # a failed test's own reader of stderr is still at it
            process.wait()


@pytest.fixture(scope="module")
def server_process():
    """server.py running as a program for the whole module: yields its port."""
    with server_program() as running:
        yield running.port
        running.process.send_signal(signal.SIGTERM)
