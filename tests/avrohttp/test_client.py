"""End-to-end tests: EchoClient against the real eventlet.wsgi server on a free port."""

import contextlib
import http.server
import json
import logging
import re
import socket
import time

import avro.errors
import avro.ipc
import avro.protocol
import eventlet
import pytest

import client
import avrohttp
import avrohttp.client
import avrohttp.serve
import avrohttp.requestor
import avrohttp.responder
import server
from conftest import call_app, echo_app, free_port, read_http_response, serving
from wire import call_body
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


def test_avro_error_is_raised_as_avro_remote_exception():
    class Failing(server.EchoResponder):
        def handle_echo(self, query):
            raise ValueError("details stay in the server log")

    with serving(avrohttp.make_application(Failing())) as address, \
            client.EchoClient(*address) as echo_client:
        with pytest.raises(avro.errors.AvroRemoteException) as raised:
            echo_client.echo("hi")
        assert raised.value.args == ("Internal error in echo",)
        assert echo_client.split("hi") == "h"  # the connection is still good


def test_many_green_threads_calling_at_once(live_server):
    def worker(n):
        with client.EchoClient(*live_server, timeout=10) as echo_client:
            return [(echo_client.echo(f"{n}-{i}"), echo_client.split("ab" * n))
                    for i in range(10)]

    pool = eventlet.GreenPool(100)
    results = list(pool.imap(worker, range(100)))
    for n, calls in enumerate(results):
        assert calls == [(f"{n}-{i}", "ab" * (n // 2) + "a" * (n % 2)) for i in range(10)]


def test_two_clients_of_two_servers_keep_their_protocols_apart():
    data = json.loads(PROTOCOL_JSON)
    data["namespace"] = "rpc.sample.shouting"
    other = avro.protocol.parse(json.dumps(data))

    class Shouting(avrohttp.responder.Responder):
        def invoke(self, message, request):
            return request["query"].upper()

    with serving(echo_app()) as plain_address, \
            serving(avrohttp.make_application(Shouting(other))) as shouting_address:
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
        # (In this monkey-patched process, eventlet words the error: ECONNREFUSED.)
        with fails_with(f"cannot reach the server at 127.0.0.1:{port}: "
                        "[Errno 111] ECONNREFUSED"):
            echo_client.echo("hi")


def test_server_that_never_answers_times_out():
    listener = avrohttp.serve.listen("127.0.0.1", 0)  # accepts (via the backlog) but never answers
    host, port = listener.getsockname()
    with client.EchoClient(host, port, timeout=0.3) as echo_client:
        started = time.monotonic()
        with fails_with(f"the server at {host}:{port} sent no answer within 0.3 s"):
            echo_client.echo("hi")
    assert time.monotonic() - started < 5
    listener.close()


def test_non_avro_answer_is_a_call_failed_with_the_status():
    def not_avro(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such thing"]

    with serving(not_avro) as address, client.EchoClient(*address) as echo_client:
        with fails_with("server answered 404 Not Found: no such thing"):
            echo_client.echo("hi")


def test_client_recovers_after_a_failed_call(live_server):
    with client.EchoClient(*live_server, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        echo_client.transceiver.conn.sock.close()  # as if the connection broke
        with pytest.raises(avrohttp.CallFailed):
            echo_client.echo("two")
        assert echo_client.echo("three") == "three"


def test_oversized_body_is_refused_before_it_is_sent(live_server):
    with socket.create_connection(live_server, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")  # and not one byte of the body
        status, headers, body = read_http_response(sock)
    assert status == "HTTP/1.1 413 Content Too Large"
    assert body == b"Body is larger than 1048576 bytes\n"


def test_get_is_refused_through_a_real_socket(live_server):
    with socket.create_connection(live_server, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_http_response(sock)
    assert (status, headers["allow"], body) == (
        "HTTP/1.1 405 Method Not Allowed", "POST", b"Avro calls must be POSTed\n")


def test_an_idle_keep_alive_connection_is_let_go():
    with serving(echo_app(), idle_timeout=0.5) as address, \
            socket.create_connection(address, timeout=10) as sock:
        assert sock.recv(1024) == b""  # closed by the server, with nothing said


def trickle(sock, data: bytes, seconds: float) -> bytes:
    """Send data a byte at a time, every 0.05 s, for at most `seconds`; then read the answer."""
    deadline = time.monotonic() + seconds
    for byte in data:
        if time.monotonic() > deadline:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # closed by the server
            break
        time.sleep(0.05)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("part, reason", [
    ("headers", b""),  # no application yet: eventlet's connection gets a bare 408
    ("body", b"The body came too slowly\n"),
])
def test_a_request_that_trickles_in_gets_408_and_is_let_go(part, reason, caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    body = call_body()
    request = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    head, _, _ = request.partition(b"\r\n\r\n")
    # Each byte comes well within the socket timeout (5 s), but the whole takes too long.
    with serving(echo_app(), request_timeout=1.0, socket_timeout=5.0) as address, \
            socket.create_connection(address, timeout=10) as sock:
        if part == "body":
            sock.sendall(head + b"\r\n\r\n")
        answer = trickle(sock, request if part == "headers" else body, seconds=8)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert rest.endswith(b"\r\n\r\n" + reason)
    assert caplog.text.count("did not arrive within 1 s") == 1  # logged once


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
    """An HTTP server on raw sockets, for what eventlet.wsgi would not do on its own.

    Connection n follows plans[n] (the last plan for any after those): (answers, then) is
    to answer that many calls with the real application, then to read one more request
    and "close" the connection or "hang" (never answer). Yields (address, counts).
    """
    app = echo_app()
    counts = Counts()
    listener = eventlet.listen(("127.0.0.1", 0))

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
                        eventlet.sleep(60)
                    return
                answer = call_app(app, body).body
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(answer) + answer)

    def accept():
        while True:
            connection, _ = listener.accept()
            plan = plans[min(counts.connections, len(plans) - 1)]
            counts.connections += 1
            pool.spawn(handle, connection, *plan)

    pool = eventlet.GreenPool()
    acceptor = eventlet.spawn(accept)
    try:
        yield listener.getsockname(), counts
    finally:
        acceptor.kill()
        for thread in list(pool.coroutines_running):
            thread.kill()
        listener.close()


def test_a_kept_alive_connection_that_the_server_closed_is_retried_on_a_new_one():
    # Each connection answers one call, then is closed by the server when the next arrives.
    with scripted_server((1, "close")) as (address, counts), \
            client.EchoClient(*address, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        assert echo_client.echo("two") == "two"  # sent twice: on the old connection, then anew
        assert echo_client.split("three") == "th"
    assert (counts.connections, counts.requests) == (3, 5)


def test_the_retry_is_made_once_only():
    # The first connection answers one call; every later one closes without an answer.
    with scripted_server((1, "close"), (0, "close")) as (address, counts), \
            client.EchoClient(*address, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        with fails_with(f"cannot reach the server at {address[0]}:{address[1]}: the server "
                        "closed the connection without an answer (if the server serves HTTPS, "
                        "call it with TLS)"):
            echo_client.echo("two")
        assert (counts.connections, counts.requests) == (2, 3)
        # A failure on a new connection is not retried at all.
        with fails_with(f"cannot reach the server at {address[0]}:{address[1]}: the server "
                        "closed the connection without an answer (if the server serves HTTPS, "
                        "call it with TLS)"):
            echo_client.echo("three")
        assert (counts.connections, counts.requests) == (3, 4)


def test_a_timeout_is_not_retried():
    with scripted_server((1, "hang")) as (address, counts), \
            client.EchoClient(*address, timeout=0.3) as echo_client:
        assert echo_client.echo("one") == "one"
        with fails_with(f"the server at {address[0]}:{address[1]} sent no answer within 0.3 s"):
            echo_client.echo("two")
        assert (counts.connections, counts.requests) == (1, 2)


def test_an_idle_connection_closed_by_the_real_server_is_retried():
    with serving(echo_app(), idle_timeout=0.2) as address, \
            client.EchoClient(*address, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        first = echo_client.transceiver.conn.sock
        eventlet.sleep(0.6)  # the server closes the idle connection after 0.2 s
        assert echo_client.echo("two") == "two"
        assert echo_client.transceiver.conn.sock is not first


def test_an_answer_over_the_limit_is_a_call_failed(live_server, monkeypatch):
    monkeypatch.setattr(avrohttp.client, "MAX_ANSWER_BYTES", 1000)
    with client.EchoClient(*live_server, timeout=5) as echo_client:
        assert echo_client.echo("x" * 900) == "x" * 900
        with fails_with("server answered with more than 1000 bytes"):
            echo_client.echo("x" * 1000)
        assert echo_client.echo("still fine") == "still fine"  # on a new connection


def test_a_chunked_answer_is_read_up_to_the_limit_only(monkeypatch):
    monkeypatch.setattr(avrohttp.client, "MAX_ANSWER_BYTES", 1000)

    def long_answer(environ, start_response):  # no Content-Length: eventlet sends it chunked
        start_response("200 OK", [("Content-Type", "avro/binary")])
        for _ in range(1000):
            yield b"\x00" * 1000

    with serving(long_answer) as address, \
            client.EchoClient(*address, timeout=5) as echo_client:
        with fails_with("server answered with more than 1000 bytes"):
            echo_client.echo("hi")


def test_a_request_line_that_does_not_parse_is_logged_once_and_leaks_nothing(caplog, capfd):
    caplog.set_level(logging.INFO, logger="avrohttp")
    with serving(echo_app()) as address, \
            socket.create_connection(address, timeout=5) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"\x16\x03\x01 not / HTTP at all\r\n\r\n")
        answer = b""
        while data := sock.recv(65536):
            answer += data
    # http.server's answer to what it takes for HTTP/0.9: its HTML page, with no status line.
    assert answer == (http.server.DEFAULT_ERROR_MESSAGE % {
        "code": 400, "message": "Bad request version ('all')",
        "explain": "Bad request syntax or unsupported method"}).encode()
    [line] = [record.getMessage() for record in caplog.records if record.name == "avrohttp"]
    assert line == f"client 127.0.0.1:{port}: code 400, message Bad request version ('all')"
    assert "Traceback" not in capfd.readouterr().err


class RecordingSocket:
    """A socket that records what is sent through it, in how many sends."""

    def __init__(self, sock):
        self.sock = sock
        self.sent = []

    def sendall(self, data):
        self.sent.append(bytes(data))
        return self.sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_a_call_goes_out_in_one_send(live_server):
    with client.EchoClient(*live_server, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"  # connected, and handshaken
        connection = echo_client.transceiver.conn
        connection.sock = recording = RecordingSocket(connection.sock)
        assert echo_client.echo("two") == "two"
    [request] = recording.sent  # headers and body together
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.startswith(b"POST / HTTP/1.1\r\n")
    assert b"\r\nContent-Length: %d" % len(body) in head
    assert body == call_body("echo", "two")
