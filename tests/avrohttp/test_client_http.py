"""HTTP on a real socket, between a client and the real server of each host (eventlet and
asyncio): a body too large, a GET, an idle keep-alive connection, a request that trickles in,
a request line that does not parse, and a call that goes out in one send."""

import logging
import re
import socket
import time
# Not `import http.server`: once eventlet.wsgi is imported, the `http` package's attribute
# `server` is eventlet's green copy (left there by eventlet.patcher.import_patched), whose
# threads would be green threads in this unpatched process.
from http.server import DEFAULT_ERROR_MESSAGE

import pytest

import client
import server
from conftest import read_http_response, serving
from wire import call_body, timeout_meta


def test_oversized_body_is_refused_before_it_is_sent(live_server):
    with socket.create_connection(live_server, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                     b"Content-Length: 1000000000\r\n\r\n")  # and not one byte of the body
        status, headers, body = read_http_response(sock)
    # The reason phrase is the host's: uvicorn writes Python's ("Request Entity Too Large"
    # before Python 3.13), eventlet.wsgi the application's ("Content Too Large").
    assert status.startswith("HTTP/1.1 413 ")
    assert body == b"Body is larger than 1048576 bytes\n"


def test_get_is_refused_through_a_real_socket(live_server):
    with socket.create_connection(live_server, timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_http_response(sock)
    assert (status, headers["allow"], body) == (
        "HTTP/1.1 405 Method Not Allowed", "POST", b"Avro calls must be POSTed\n")


def test_an_idle_keep_alive_connection_is_let_go(host):
    with serving(server.EchoResponder(), host, idle_timeout=0.5) as address, \
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
    ("headers", b""),  # no application yet: the connection gets a bare 408
    ("body", b"The body came too slowly\n"),
])
def test_a_request_that_trickles_in_gets_408_and_is_let_go(host, part, reason, caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    body = call_body()
    request = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    head, _, _ = request.partition(b"\r\n\r\n")
    # Each byte comes well within the socket timeout (5 s), but the whole takes too long.
    with serving(server.EchoResponder(), host, request_timeout=1.0,
                 socket_timeout=5.0) as address, \
            socket.create_connection(address, timeout=10) as sock:
        if part == "body":
            sock.sendall(head + b"\r\n\r\n")
        answer = trickle(sock, request if part == "headers" else body, seconds=8)
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert rest.endswith(b"\r\n\r\n" + reason)
    assert caplog.text.count("did not arrive within 1 s") == 1  # logged once


# What each host answers to a request line that does not parse, and the line it logs: the
# HTTP parser's own words (http.server's for eventlet.wsgi, httptools' for uvicorn).
BAD_REQUEST_LINE = {
    # http.server's answer to what it takes for HTTP/0.9: its HTML page, with no status line.
    "eventlet": ((DEFAULT_ERROR_MESSAGE % {
        "code": 400, "message": "Bad request version ('all')",
        "explain": "Bad request syntax or unsupported method"}).encode(),
        "code 400, message Bad request version ('all')"),
    "asyncio": (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                b"content-length: 30\r\nconnection: close\r\n\r\nInvalid HTTP request received.",
                "400 Bad Request: Invalid HTTP request received."),
}


def test_a_request_line_that_does_not_parse_is_logged_once_and_leaks_nothing(host, caplog,
                                                                             capfd):
    caplog.set_level(logging.INFO, logger="avrohttp")
    expected_answer, expected_line = BAD_REQUEST_LINE[host]
    with serving(server.EchoResponder(), host) as address, \
            socket.create_connection(address, timeout=5) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"\x16\x03\x01 not / HTTP at all\r\n\r\n")
        answer = b""
        while data := sock.recv(65536):
            answer += data
    answer = re.sub(rb"\r\ndate: [^\r]*", b"", answer)  # uvicorn's Date header
    assert answer == expected_answer
    [line] = [record.getMessage() for record in caplog.records if record.name == "avrohttp"
              and record.getMessage().startswith("client ")]
    assert line == f"client 127.0.0.1:{port}: {expected_line}"
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
    assert body == call_body("echo", "two", meta=timeout_meta(5))
