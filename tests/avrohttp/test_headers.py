"""avrohttp.headers reads a request's headers as the standard library does, only faster: the
same message, the same errors, the same bytes left for the body, for any header block."""

import email.parser
import http.client
import io
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import avrohttp.serve
from avrohttp import headers
from conftest import echo_app, read_http_response, serving
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
    def no_email_parser(*args, **kwargs):
        raise AssertionError("the email parser was used")

    monkeypatch.setattr(email.parser, "Parser", no_email_parser)
    with serving(echo_app()) as address:
        status, _, body = exchange(address, call_request(b"X-Trace: abc\r\n"))
    assert (status, read_answer(body).datum) == ("HTTP/1.1 200 OK", "Hello World")


def test_only_the_server_reads_headers_this_way():
    assert avrohttp.serve.HTTPProtocol.parse_request is headers.parse_request
    assert http.client.parse_headers is not headers.parse_headers  # changed for nobody else


def exchange(address, request: bytes) -> tuple:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        return read_http_response(sock)


def call_request(extra_headers: bytes = b"") -> bytes:
    body = call_body()
    return (b"POST / HTTP/1.1\r\nHost: test\r\nContent-Type: avro/binary\r\n" + extra_headers +
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def test_the_server_answers_calls_with_plain_and_with_folded_headers():
    with serving(echo_app()) as address:
        plain = exchange(address, call_request(b"X-Trace: abc\r\n"))
        folded = exchange(address, call_request(b"X-Trace: abc\r\n def\r\n"))
    assert plain[0] == folded[0] == "HTTP/1.1 200 OK"
    assert plain[2] == folded[2]


def test_the_server_refuses_a_header_line_over_its_limit_as_before():
    # eventlet.wsgi's limit (8,192 bytes a line) is met first, inside parse_headers' reading.
    with serving(echo_app()) as address:
        status, _, body = exchange(address, call_request(b"X-Long: " + b"x" * 9_000 + b"\r\n"))
    assert status == "HTTP/1.0 400 Header Line Too Long"
