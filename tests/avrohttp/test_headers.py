"""avrohttp.headers reads a request's headers as the standard library does, only faster: the
same message, the same errors, the same bytes left for the body, for any header block."""

import email.parser
import http.client
import io
import logging
import re
import socket
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import avrohttp.serve
import server
from avrohttp import headers
from conftest import read_http_response, serving
from wire import call_body, read_answer


def parse_both(block: bytes) -> tuple:
    """(avrohttp's, the standard library's) reading of block, each as (the headers, or the
    exception's type and text; the bytes left in the stream)."""
    results = []
    for parse in (headers.parse_headers, http.client.parse_headers):
        stream = io.BytesIO(block)
        try:
            message = parse(stream)
            result = (message.items(), message.get_content_type())
        except http.client.HTTPException as e:
            result = (type(e), str(e))
        results.append((result, stream.read()))
    return tuple(results)


# Header lines of every kind a client could send: plain ones, and the unusual ones that the
# email parser reads its own way.
names = st.text(st.sampled_from("Aa-_:9 \t!~\x7f\xe9"), max_size=8)
values = st.text(st.sampled_from("a ;,=\t\r\n\x0b\x0c\x1c\x85\xe9:"), max_size=12)
endings = st.sampled_from(["\r\n", "\n", "\r", ""])
lines = st.builds(lambda name, value, end: f"{name}:{value}{end}", names, values, endings) | \
    st.sampled_from(["Host: example\r\n", "Content-Length: 10\r\n", " folded\r\n",
                     "\tfolded\r\n", "no colon\r\n", "From someone\r\n", ": no name\r\n",
                     "Content-Type: avro/binary  \r\n", "Name:\r\n"])
blocks = st.builds(
    lambda lines, end, body: ("".join(lines) + end).encode("iso-8859-1") + body,
    st.lists(lines, max_size=6), st.sampled_from(["\r\n", "\n", ""]),
    st.sampled_from([b"", b"the body", b"\r\nmore"]))


@settings(max_examples=1000, deadline=None)
@given(blocks)
def test_any_header_block_reads_as_the_standard_library_reads_it(block):
    ours, theirs = parse_both(block)
    assert ours == theirs


@pytest.mark.parametrize("block", [
    b"Host: example\r\nContent-Type: avro/binary\r\nContent-Length: 10\r\n\r\nbody",
    b"Host: example\r\nX-Folded: one\r\n two\r\n\r\n",  # an obsolete folded line
    b"Host: example\r\nno colon here\r\nContent-Length: 10\r\n\r\n",  # the rest is "body"
    b"Content-Type: avro/binary  \r\nX-Empty:\r\nX-Latin: caf\xe9\r\n\n",
    b"X-Long: " + b"x" * 70_000 + b"\r\n\r\n",  # over http.client's 65,536 bytes a line
    b"".join(b"X-%d: x\r\n" % n for n in range(101)) + b"\r\n",  # over its 100 lines
    b"Host: example\r\nHost: again\r\n",  # the stream ends before the blank line
])
def test_the_unusual_cases_read_as_the_standard_library_reads_them(block):
    ours, theirs = parse_both(block)
    assert ours == theirs


def test_plain_headers_skip_the_email_parser_and_others_use_it(monkeypatch):
    def no_email_parser(*args, **kwargs):
        raise AssertionError("the email parser was used")

    monkeypatch.setattr(email.parser, "Parser", no_email_parser)
    plain = headers.parse_headers(io.BytesIO(b"Host: h\r\nContent-Length:  3 \r\n\r\n"))
    assert plain.items() == [("Host", "h"), ("Content-Length", "3 ")]
    with pytest.raises(AssertionError, match="the email parser was used"):
        headers.parse_headers(io.BytesIO(b"Host: h\r\n folded\r\n\r\n"))


def test_the_server_reads_plain_headers_without_the_email_parser(monkeypatch):
    # The eventlet host's (avrohttp.headers); the asyncio host's parser is httptools.
    def no_email_parser(*args, **kwargs):
        raise AssertionError("the email parser was used")

    monkeypatch.setattr(email.parser, "Parser", no_email_parser)
    with serving(server.EchoResponder(), "eventlet") as address:
        status, _, body = exchange(address, call_request(b"X-Trace: abc\r\n"))
    assert (status, read_answer(body).datum) == ("HTTP/1.1 200 OK", "Hello World")


def test_only_the_server_reads_headers_this_way(monkeypatch):
    read = []
    monkeypatch.setattr(headers, "parse_request", lambda handler: read.append(handler))
    protocol = object.__new__(avrohttp.serve.HTTPProtocol)
    avrohttp.serve.HTTPProtocol.parse_request(protocol)
    assert read == [protocol]
    assert http.client.parse_headers is not headers.parse_headers  # changed for nobody else


def exchange(address, request: bytes) -> tuple:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        return read_http_response(sock)


def call_request(extra_headers: bytes = b"") -> bytes:
    body = call_body()
    return (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Type: avro/binary\r\n" + extra_headers +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_the_server_answers_calls_with_plain_and_with_folded_headers(host):
    with serving(server.EchoResponder(), host) as address:
        plain = exchange(address, call_request(b"X-Trace: abc\r\n"))
        folded = exchange(address, call_request(b"X-Trace: abc\r\n def\r\n"))
    assert plain[0] == "HTTP/1.1 200 OK"
    if host == "eventlet":
        assert folded[0] == "HTTP/1.1 200 OK"
        assert plain[2] == folded[2]
    else:  # httptools refuses an obsolete folded line, as RFC 9112 (5.2) lets a server do
        assert (folded[0], folded[2]) == ("HTTP/1.1 400 Bad Request",
                                          b"Invalid HTTP request received.")


def test_the_server_answers_a_call_without_a_content_type(host):
    body = call_body()
    with serving(server.EchoResponder(), host) as address:
        status, _, answer = exchange(address, b"POST / HTTP/1.1\r\nHost: test\r\n"
                                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert (status, read_answer(answer).datum) == ("HTTP/1.1 200 OK", "Hello World")


def refused(address, request: bytes) -> tuple:
    """The answer to a request refused before its body (no Content-Length): (status line,
    the rest), once the server has closed the connection."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    return status.decode(), rest


@pytest.mark.parametrize("request_, status", [
    # eventlet.wsgi's limits (8,192 bytes a line, 64 KiB of headers), on both hosts; the
    # header line's is met first, inside parse_headers' reading.
    (call_request(b"X-Long: " + b"x" * 9_000 + b"\r\n"), "HTTP/1.0 400 Header Line Too Long"),
    (call_request(b"".join(b"X-%d: %s\r\n" % (n, b"x" * 1000) for n in range(70))),
     "HTTP/1.0 400 Headers Too Large"),
    (b"GET /" + b"x" * 9_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",
     "HTTP/1.0 414 Request URI Too Long"),
])
def test_the_server_refuses_a_head_over_its_limits_as_before(host, request_, status, caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    with serving(server.EchoResponder(), host) as address:
        assert refused(address, request_) == (
            status, b"Connection: close\r\nContent-" +
            (b"Length" if "414" in status else b"length") + b": 0\r\n\r\n")
    assert client_lines(caplog) == [status.split(" ", 1)[1]]  # logged once


def client_lines(caplog) -> list:
    """What the server logged about its clients, without their addresses."""
    return [re.sub(r"^client 127\.0\.0\.1:\d+: ", "", record.getMessage())
            for record in caplog.records
            if record.name == "avrohttp" and record.getMessage().startswith("client ")]


@pytest.mark.parametrize("start, length, status", [
    # eventlet.wsgi reads a request line up to its limit, and a header line up to
    # http.client's (65,536 bytes and its end), then refuses it.
    (b"GET /", 8192, "HTTP/1.0 414 Request URI Too Long"),
    (b"POST / HTTP/1.1\r\nX-Endless: ", 65537, "HTTP/1.0 400 Header Line Too Long"),
])
def test_the_server_refuses_a_line_that_never_ends(host, start, length, status, caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    # Sent in pieces, so that no piece is over the limit: the server counts what comes. Then
    # nothing more, lest the server's kernel answer what comes after its close with a reset.
    line = start.rpartition(b"\n")[2]
    rest = start + b"x" * (length - len(line))
    with serving(server.EchoResponder(), host) as address, \
            socket.create_connection(address, timeout=5) as sock:
        for at in range(0, len(rest), 1000):
            sock.sendall(rest[at:at + 1000])
            time.sleep(0.001)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(status.encode() + b"\r\n"), answer[:100]
    assert client_lines(caplog) == [status.split(" ", 1)[1]]  # logged once
