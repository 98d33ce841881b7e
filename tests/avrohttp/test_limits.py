"""Memory bounds: the client-protocol cache, the protocol size limit, the body limit and the
connection limit keep what a client can make the server hold bounded. In-process, then
through a real server of each host.

Run with `pytest -s tests/avrohttp/test_limits.py` to see what was measured.
"""

import gc
import hashlib
import io
import json
import socket
import tracemalloc

import avro.protocol
import pytest

import avrohttp
import avrohttp.requestor
import avrohttp.responder
import server
from conftest import call_app, echo_app, read_http_response, serving
from protocol import PROTOCOL_JSON
from wire import call_body, read_answer

# One client protocol, as avro would send it (str(protocol)), with a name to vary.
_data = json.loads(PROTOCOL_JSON)
_data["types"] = [{"type": "fixed", "name": "Client000000", "size": 1}]
TEMPLATE = str(avro.protocol.parse(json.dumps(_data)))


def client_protocol(n: int) -> tuple:
    """The n-th distinct client protocol: (its text, its MD5), as a client would send them."""
    text = TEMPLATE.replace("Client000000", f"Client{n:06d}")
    return text, hashlib.md5(text.encode()).digest()


def test_client_protocols_are_what_avro_would_send():
    for n in (0, 1, 999_999):
        text, md5 = client_protocol(n)
        assert avro.protocol.parse(text).md5 == md5 and str(avro.protocol.parse(text)) == text
    assert client_protocol(1) != client_protocol(2)


def send_protocols(app, responder, numbers) -> None:
    """Call echo once with each client protocol; check each answer and the cache bound."""
    for n in numbers:
        text, md5 = client_protocol(n)
        body = call_body(query=f"call {n}", protocol_text=text, client_hash=md5)
        answer = read_answer(call_app(app, body).body)
        assert (answer.handshake["match"], answer.is_error, answer.datum) == (
            "BOTH", False, f"call {n}")
        assert len(responder.protocol_cache) <= responder.max_cached_protocols


def test_thousands_of_client_protocols_never_overflow_the_cache():
    responder = server.EchoResponder()
    app = avrohttp.make_application(responder)
    send_protocols(app, responder, range(5000))
    assert responder.max_cached_protocols == avrohttp.responder.MAX_CACHED_PROTOCOLS
    # Full, with the most recent protocols: these are found again by their hash alone.
    assert len(responder.protocol_cache) == avrohttp.responder.MAX_CACHED_PROTOCOLS
    assert set(responder.protocol_cache) == {client_protocol(n)[1] for n in range(4744, 5000)}
    again = call_body(protocol_text=None, client_hash=client_protocol(4999)[1])
    assert read_answer(call_app(app, again).body).handshake["match"] == "BOTH"
    forgotten = call_body(protocol_text=None, client_hash=client_protocol(0)[1])
    assert read_answer(call_app(app, forgotten).body).handshake["match"] == "NONE"


WARM_UP = 300  # more than the cache holds, so that it is full before measuring
BATCH = 1000
# The most that a batch of BATCH new protocols may add once the cache is full. Without a
# bound, each cached protocol of this size costs about 5.5 KB (traced), so a batch costs about
# 5.5 MB; with the bound, new entries replace old ones, and the batch costs next to nothing
# (measured: about 23 KB). 512 KiB is far from both.
MAX_GROWTH_BYTES = 512 * 1024


def traced_growth(max_cached_protocols: int) -> tuple:
    """Traced memory (before, after) a batch of new client protocols, once warmed up."""
    responder = server.EchoResponder()
    responder.max_cached_protocols = max_cached_protocols
    app = avrohttp.make_application(responder)
    gc.collect()
    tracemalloc.start()
    try:
        send_protocols(app, responder, range(WARM_UP))
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        send_protocols(app, responder, range(WARM_UP, WARM_UP + BATCH))
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return before, after


def test_memory_stays_flat_with_the_bounded_cache_and_would_not_without_it():
    before, after = traced_growth(avrohttp.responder.MAX_CACHED_PROTOCOLS)
    unbounded_before, unbounded_after = traced_growth(10 ** 9)
    print(f"\n{BATCH} new client protocols after {WARM_UP}: traced memory "
          f"{before} -> {after} bytes with the bounded cache (+{after - before}), "
          f"{unbounded_before} -> {unbounded_after} without a bound "
          f"(+{unbounded_after - unbounded_before})")
    assert after - before < MAX_GROWTH_BYTES
    # The same measure catches an unbounded cache: the test has the power to fail.
    assert unbounded_after - unbounded_before > 4 * MAX_GROWTH_BYTES


def padded(text: str, length: int) -> str:
    """The same protocol, padded with whitespace (still valid JSON) to `length` characters."""
    return text[:-1] + " " * (length - len(text)) + text[-1]


def test_oversized_client_protocol_is_refused_without_parsing_or_caching(monkeypatch):
    parsed = []
    parse = avro.protocol.parse
    monkeypatch.setattr(avro.protocol, "parse", lambda text: parsed.append(text) or parse(text))
    responder = server.EchoResponder()
    app = avrohttp.make_application(responder)
    cached = set(responder.protocol_cache)  # avro's Responder starts with its own protocol

    too_long = padded(client_protocol(1)[0], avrohttp.responder.MAX_PROTOCOL_CHARS + 1)
    body = call_body(protocol_text=too_long, client_hash=hashlib.md5(too_long.encode()).digest())
    answer = read_answer(call_app(app, body).body)
    assert (answer.is_error, answer.datum) == (
        True, "Invalid client protocol: longer than "
              f"{avrohttp.responder.MAX_PROTOCOL_CHARS} characters")
    assert parsed == [] and set(responder.protocol_cache) == cached

    at_limit = padded(client_protocol(1)[0], avrohttp.responder.MAX_PROTOCOL_CHARS)
    body = call_body(protocol_text=at_limit, client_hash=hashlib.md5(at_limit.encode()).digest())
    answer = read_answer(call_app(app, body).body)
    assert (answer.is_error, answer.datum) == (False, "Hello World")
    assert parsed == [at_limit] and len(set(responder.protocol_cache) - cached) == 1


class EndlessBody(io.RawIOBase):
    """A request body that never ends, and counts what the app read of it."""

    def __init__(self) -> None:
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        assert size >= 0, "the app asked for the whole of an endless body"
        self.bytes_read += size
        return b"\x00" * size


def test_body_limit_holds_before_anything_is_read():
    app = echo_app(max_body_bytes=1000)
    declared = EndlessBody()
    response = call_app(app, content_length=10 ** 12, stream=declared)
    assert (response.status, declared.bytes_read) == (413, 0)
    chunked = EndlessBody()
    response = call_app(app, chunked=True, stream=chunked)
    assert (response.status, chunked.bytes_read) == (413, 1001)


# The same limits through a real server, on each host.

def test_the_servers_cache_of_client_protocols_stays_bounded(host):
    responder = server.EchoResponder()
    responder.max_cached_protocols = 4
    with serving(responder, host) as address, \
            socket.create_connection(address, timeout=10) as sock:
        for n in range(10):
            text, md5 = client_protocol(n)
            body = call_body(query=f"call {n}", protocol_text=text, client_hash=md5)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status, _, payload = read_http_response(sock)
            answer = read_answer(payload)
            assert (status, answer.handshake["match"], answer.datum) == (
                "HTTP/1.1 200 OK", "BOTH", f"call {n}")
            assert len(responder.protocol_cache) <= 4


def test_a_body_over_the_limit_is_refused_before_it_is_sent(host):
    with serving(server.EchoResponder(), host, max_body_bytes=1000) as address, \
            socket.create_connection(address, timeout=10) as sock:
        # The head alone: the answer comes without a byte of the body.
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                     b"Content-Length: 1000000000000\r\n\r\n")
        status, headers, body = read_http_response(sock)
    assert (status, headers["connection"], body) == (
        "HTTP/1.1 413 Content Too Large", "close", b"Body is larger than 1000 bytes\n")


def test_a_chunked_body_over_the_limit_is_refused(host):
    chunk = b"\x00" * 600
    with serving(server.EchoResponder(), host, max_body_bytes=1000) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" +
                     (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 2)  # and more to come
        status, headers, body = read_http_response(sock)
    assert (status, headers["connection"], body) == (
        "HTTP/1.1 413 Content Too Large", "close", b"Body is larger than 1000 bytes\n")


def answer_to_the_end(sock: socket.socket) -> tuple:
    """An answer read until the server closes the connection: (status line, its headers as
    sent, in order and with repeats, body)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, [tuple(line.split(": ", 1)) for line in lines], body


@pytest.mark.parametrize("request_line, connection", [
    (b"POST / HTTP/1.1", b""),
    (b"POST / HTTP/1.1", b"Connection: keep-alive\r\n"),
    (b"POST / HTTP/1.0", b""),
    (b"POST / HTTP/1.0", b"Connection: keep-alive\r\n"),
], ids=["1.1", "1.1-keep-alive", "1.0", "1.0-keep-alive"])
def test_a_413_says_connection_close_once_and_closes(host, request_line, connection):
    # The client sends part of a body over the limit, and waits: the server answers 413,
    # says once that it closes the connection, closes it without reading the rest, and
    # lets the client read the answer meanwhile.
    with serving(server.EchoResponder(), host, max_body_bytes=1000) as address, \
            socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                     + connection + b"Content-Length: 1000000\r\n\r\n" + b"\x00" * 20_000)
        status, headers, body = answer_to_the_end(sock)
    assert (status, body) == ("HTTP/1.1 413 Content Too Large", b"Body is larger than 1000 bytes\n")
    said = [(name.lower(), value.lower()) for name, value in headers
            if name.lower() in ("connection", "keep-alive")]
    assert said == [("connection", "close")], headers


def call(sock: socket.socket, query: str) -> str:
    body = call_body(query=query)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return read_answer(read_http_response(sock)[2]).datum


def test_connections_past_the_limit_wait_until_one_closes(host):
    with serving(server.EchoResponder(), host, max_connections=2) as address:
        first = socket.create_connection(address, timeout=10)
        with socket.create_connection(address, timeout=10) as second, \
                socket.create_connection(address, timeout=10) as third:
            assert (call(first, "one"), call(second, "two")) == ("one", "two")
            body = call_body(query="three")
            third.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                          % len(body) + body)
            third.settimeout(0.5)
            with pytest.raises(socket.timeout):  # waits, in the listen backlog, say
                third.recv(1)
            first.close()  # room for it
            third.settimeout(10)
            assert read_answer(read_http_response(third)[2]).datum == "three"
            assert call(second, "two again") == "two again"
