"""End-to-end tests: EchoClient against the real eventlet.wsgi server on a free port."""

import json
import socket
import time

import avro.errors
import avro.ipc
import avro.protocol
import eventlet
import pytest

import client
import avro_fixes
import server
from conftest import free_port, read_http_response, serving
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
    sock = echo._transceiver.conn.sock
    for n in range(5):
        assert echo.split(f"call {n}") == f"call {n}"[: len(f"call {n}") // 2]
    assert echo._transceiver.conn.sock is sock


def test_avro_error_is_raised_as_avro_remote_exception():
    class Failing(server.EchoResponder):
        def handle_echo(self, query):
            raise ValueError("details stay in the server log")

    with serving(server.make_application(Failing())) as address, \
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

    class Shouting(avro_fixes.FixedResponder):
        def invoke(self, message, request):
            return request["query"].upper()

    with serving(server.make_application()) as plain_address, \
            serving(server.make_application(Shouting(other))) as shouting_address:
        for _ in range(3):  # fresh clients each round, as a long-running program would make
            with client.EchoClient(*plain_address) as plain, \
                    client.EchoClient(*shouting_address) as shouting:
                assert shouting.echo("hi") == "HI"
                assert plain.echo("hi") == "hi"
                assert shouting.echo("hey") == "HEY"
    assert avro.ipc.REMOTE_HASHES == {} and avro.ipc.REMOTE_PROTOCOLS == {}


def test_unreachable_server_is_a_call_failed():
    port = free_port()
    with client.EchoClient("127.0.0.1", port) as echo_client:
        with pytest.raises(client.CallFailed, match=f"cannot reach the server at 127.0.0.1:{port}"):
            echo_client.echo("hi")


def test_server_that_never_answers_times_out():
    listener = server.listen("127.0.0.1", 0)  # accepts (via the backlog) but never answers
    with client.EchoClient(*listener.getsockname(), timeout=0.3) as echo_client:
        started = time.monotonic()
        with pytest.raises(client.CallFailed, match="timed out"):
            echo_client.echo("hi")
    assert time.monotonic() - started < 5
    listener.close()


def test_non_avro_answer_is_a_call_failed_with_the_status():
    def not_avro(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such thing"]

    with serving(not_avro) as address, client.EchoClient(*address) as echo_client:
        with pytest.raises(client.CallFailed, match="server answered 404 Not Found: no such thing"):
            echo_client.echo("hi")


def test_client_recovers_after_a_failed_call(live_server):
    with client.EchoClient(*live_server, timeout=5) as echo_client:
        assert echo_client.echo("one") == "one"
        echo_client._transceiver.conn.sock.close()  # as if the connection broke
        with pytest.raises(client.CallFailed):
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
    with serving(server.make_application(), idle_timeout=0.5) as address, \
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
    body = call_body()
    request = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    head, _, _ = request.partition(b"\r\n\r\n")
    # Each byte comes well within the socket timeout (5 s), but the whole takes too long.
    with serving(server.make_application(), request_timeout=1.0, socket_timeout=5.0) as address, \
            socket.create_connection(address, timeout=10) as sock:
        if part == "body":
            sock.sendall(head + b"\r\n\r\n")
        answer = trickle(sock, request if part == "headers" else body, seconds=8)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert rest.endswith(b"\r\n\r\n" + reason)
    assert caplog.text.count("did not arrive within 1 s") == 1  # logged once
