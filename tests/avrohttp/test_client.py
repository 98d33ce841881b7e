"""End-to-end tests: EchoClient against the real server of each host (eventlet and asyncio)
on a free port, and against servers on raw sockets for what neither host would do: its calls
and their failures. scripted_server, a raw-socket server that closes or hangs where it is
told, serves test_client_retry.py (the retry of a call on a kept-alive connection, and the
words of one cut off) and the endpoints' tests. What goes over the socket, and what each
host makes of it, is test_client_http.py's."""

import contextlib
import json
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
# Not `import http.server`: once eventlet.wsgi is imported, the `http` package's attribute
# `server` is eventlet's green copy (left there by eventlet.patcher.import_patched), whose
# threads would be green threads in this unpatched process.
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import avro.errors
import avro.ipc
import avro.protocol
import pytest

import client
import avrohttp
import avrohttp.client
import avrohttp.client_rules
import avrohttp.hosting
import avrohttp.requestor
import avrohttp.responder
import server
from conftest import call_app, echo_app, free_port, serving
from protocol import PROTOCOL_JSON


@pytest.fixture
def echo(live_server):
    with client.EchoClient(*live_server, timeout=5) as echo_client:
        yield echo_client


@pytest.mark.parametrize("query", ["Hello World", "héllo wörld! ✓ 𝄞", "", "x" * 100_000])
def test_echo_and_split_round_trip(echo, query):
    assert echo.echo(query) == query
    assert echo.split(query) == query[: len(query) // 2]


def test_calls_reuse_one_keep_alive_connection(echo):
    echo.echo("first")
    sock = echo.transceiver.conn.sock
    for n in range(5):
        assert echo.split(f"call {n}") == f"call {n}"[: len(f"call {n}") // 2]
    assert echo.transceiver.conn.sock is sock


def test_avro_error_is_raised_as_avro_remote_exception(host):
    class Failing(server.EchoResponder):
        def handle_echo(self, query):
            raise ValueError("details stay in the server log")

    with serving(Failing(), host) as address, \
            client.EchoClient(*address) as echo_client:
        with pytest.raises(avro.errors.AvroRemoteException) as raised:
            echo_client.echo("hi")
        assert raised.value.args == ("Internal error in echo",)
        assert echo_client.split("hi") == "h"  # the connection is still good


def test_many_clients_calling_at_once(live_server):
    def worker(n):
        with client.EchoClient(*live_server, timeout=10) as echo_client:
            return [(echo_client.echo(f"{n}-{i}"), echo_client.split("ab" * n))
                    for i in range(10)]

    with ThreadPoolExecutor(50) as pool:  # 50 connections open at once, 100 clients in all
        results = list(pool.map(worker, range(100)))
    for n, calls in enumerate(results):
        assert calls == [(f"{n}-{i}", "ab" * (n // 2) + "a" * (n % 2)) for i in range(10)]


def test_two_clients_of_two_servers_keep_their_protocols_apart(host):
    data = json.loads(PROTOCOL_JSON)
    data["namespace"] = "rpc.sample.shouting"
    other = avro.protocol.parse(json.dumps(data))

    class Shouting(avrohttp.responder.Responder):
        def invoke(self, message, request):
            return request["query"].upper()

    with serving(server.EchoResponder(), host) as plain_address, \
            serving(Shouting(other), host) as shouting_address:
        for _ in range(3):  # fresh clients each round, as a long-running program would make
            with client.EchoClient(*plain_address) as plain, \
                    client.EchoClient(*shouting_address) as shouting:
                assert shouting.echo("hi") == "HI"
                assert plain.echo("hi") == "hi"
                assert shouting.echo("hey") == "HEY"
    assert avro.ipc.REMOTE_HASHES == {} and avro.ipc.REMOTE_PROTOCOLS == {}


def fails_with(message: str):
    """pytest.raises for a CallFailed whose message is exactly `message`."""
    return pytest.raises(avrohttp.CallFailed, match=f"^{re.escape(message)}$")


def test_unreachable_server_is_a_call_failed():
    port = free_port()
    with client.EchoClient("127.0.0.1", port) as echo_client:
        with fails_with(f"cannot reach the server at 127.0.0.1:{port}: "
                        "[Errno 111] Connection refused"):
            echo_client.echo("hi")


def test_server_that_never_answers_times_out():
    # Accepts (via the backlog) but never answers.
    with avrohttp.hosting.listen("127.0.0.1", 0) as listener:
        host, port = listener.getsockname()
        with client.EchoClient(host, port, timeout=0.3) as echo_client:
            started = time.monotonic()
            with fails_with(f"the server at {host}:{port} sent no answer within 0.3 s"):
                echo_client.echo("hi")
        assert time.monotonic() - started < 5


@contextlib.contextmanager
def http_server(handler: type):
    """A ThreadingHTTPServer with this request handler class, in a thread: yields its address."""
    handler.protocol_version = "HTTP/1.1"
    handler.log_message = lambda self, *args: None  # pytest shows stderr of failed tests
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield httpd.server_address[:2]
        finally:
            httpd.shutdown()
            thread.join(5)


class NotAvro(BaseHTTPRequestHandler):
    """What a proxy or another web server might answer: a 404 in plain text."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "13")
        self.end_headers()
        self.wfile.write(b"no such thing")


def test_non_avro_answer_is_a_call_failed_with_the_status():
    with http_server(NotAvro) as address, client.EchoClient(*address) as echo_client:
        with fails_with("server answered 404 Not Found: no such thing"):
            echo_client.echo("hi")


def test_client_recovers_after_a_failed_call(live_server):
    with client.EchoClient(*live_server, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        echo_client.transceiver.conn.sock.close()  # as if the connection broke
        with pytest.raises(avrohttp.CallFailed):
            echo_client.echo("two")
        assert echo_client.echo("three") == "three"


def test_connecting_has_its_own_timeout():
    # A listener whose queue is full: the kernel drops further connection attempts, as a
    # firewall would, so connecting hangs until the connect timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        waiting = []
        try:
            while True:  # fill the queue
                sock = socket.socket()
                waiting.append(sock)
                sock.settimeout(0.3)
                sock.connect(listener.getsockname())
        except TimeoutError:
            pass
        with client.EchoClient(*listener.getsockname(), timeout=60,
                               connect_timeout=0.3) as echo_client:
            host, port = listener.getsockname()
            with fails_with(f"cannot reach the server at {host}:{port}: "
                            "timed out connecting (after 0.3 s)"):
                echo_client.echo("hi")
        for sock in waiting:
            sock.close()


class Counts:
    connections = 0
    requests = 0


@contextlib.contextmanager
def scripted_server(*plans):
    """An HTTP server on raw sockets, a thread per connection, for what neither host would do
    on its own.

    Connection n follows plans[n] (the last plan for any after those): (answers, then) is
    to answer that many calls with the real application, then to read one more request
    and "close" the connection or "hang" (never answer, until the end). Yields
    (address, counts).
    """
    app = echo_app()
    counts = Counts()
    listener = avrohttp.hosting.listen("127.0.0.1", 0)
    done = threading.Event()

    def handle(connection, answers, then):
        with connection:
            for n in range(answers + 1):
                head = b""
                while b"\r\n\r\n" not in head:
                    data = connection.recv(65536)
                    if not data:
                        return
                    head += data
                head, _, body = head.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += connection.recv(65536)
                counts.requests += 1
                if n == answers:
                    if then == "hang":
                        done.wait(60)
                    return
                answer = call_app(app, body).body
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(answer) + answer)

    def accept():
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener was closed: the end
                return
            plan = plans[min(counts.connections, len(plans) - 1)]
            counts.connections += 1
            threading.Thread(target=handle, args=(connection, *plan), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname(), counts
    finally:
        done.set()
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        acceptor.join(5)


def test_an_idle_connection_closed_by_the_real_server_is_retried(host):
    with serving(server.EchoResponder(), host, idle_timeout=0.2) as address, \
            client.EchoClient(*address, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        first = echo_client.transceiver.conn.sock
        time.sleep(0.6)  # the server closes the idle connection after 0.2 s
        assert echo_client.echo("two") == "two"
        assert echo_client.transceiver.conn.sock is not first


def test_an_answer_over_the_limit_is_a_call_failed(live_server, monkeypatch):
    monkeypatch.setattr(avrohttp.client_rules, "MAX_ANSWER_BYTES", 1000)
    with client.EchoClient(*live_server, timeout=5) as echo_client:
        assert echo_client.echo("x" * 900) == "x" * 900
        with fails_with("server answered with more than 1000 bytes"):
            echo_client.echo("x" * 1000)
        assert echo_client.echo("still fine") == "still fine"  # on a new connection


class LongChunkedAnswer(BaseHTTPRequestHandler):
    """A megabyte of zeros, chunked, in answer to any POST."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "avro/binary")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"3e8\r\n" + b"\x00" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading at its limit, and hung up
            self.close_connection = True


def test_a_chunked_answer_is_read_up_to_the_limit_only(monkeypatch):
    monkeypatch.setattr(avrohttp.client_rules, "MAX_ANSWER_BYTES", 1000)
    with http_server(LongChunkedAnswer) as address, \
            client.EchoClient(*address, timeout=5) as echo_client:
        with fails_with("server answered with more than 1000 bytes"):
            echo_client.echo("hi")
