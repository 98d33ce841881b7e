"""In-process tests of the WSGI application: every HTTP rule, and every bad request with its
exact status and reason. No sockets. (The Avro rules are in test_responder.py.)"""

import http.client
import io
import logging
import struct
import threading

import pytest

import avrohttp
import avrohttp.wsgi
import server
from conftest import call_app, echo_app
from wire import call_body, frame, handshake_request, read_answer


# --- Framing, and a bug in the responder ----------------------------------------------------

def test_long_query_spanning_many_frames(app):
    query = "0123456789" * 10_000  # 100 kB: more than one 8 KiB frame each way
    response = call_app(app, call_body("echo", query))
    # The answer is 100,009 bytes: the handshake (4), metadata and error flag (2), the
    # string's length (3) and the string. Avro frames it in 8 KiB pieces, then an empty frame.
    assert frame_lengths(response.body) == [8192] * 12 + [100_009 - 12 * 8192, 0]
    assert read_answer(response.body).datum == query


def frame_lengths(body: bytes) -> list:
    lengths, position = [], 0
    while position < len(body):
        (length,) = struct.unpack_from(">I", body, position)
        lengths.append(length)
        position += 4 + length
    return lengths


def test_a_bug_in_the_responder_is_a_short_500_and_a_logged_traceback(caplog):
    class Buggy(server.EchoResponder):
        def respond(self, call_request):
            raise KeyError("internal detail")

    with caplog.at_level(logging.ERROR, logger="avrohttp"):
        response = call_app(avrohttp.make_application(Buggy()), call_body())
    assert (response.status, response.body) == (500, b"Internal server error\n")
    [record] = caplog.records
    error_type, error, _ = record.exc_info  # logged with its traceback
    assert (record.name, record.levelno, record.getMessage(), error_type, error.args) == (
        "avrohttp", logging.ERROR, "unexpected error while answering a call", KeyError,
        ("internal detail",))


# --- HTTP rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_only_post_is_allowed(app, method):
    response = call_app(app, method=method)
    assert (response.status, response.headers["allow"]) == (405, "POST")
    assert response.body == b"Avro calls must be POSTed\n"


@pytest.mark.parametrize("content_type", ["text/plain", "application/json",
                                          "application/octet-stream", "avro/json"])
def test_other_content_types_are_refused(app, content_type):
    response = call_app(app, call_body(), content_type=content_type)
    assert (response.status, response.body) == (415, b"Content-Type must be avro/binary\n")


@pytest.mark.parametrize("content_type", [None, "", "avro/binary", "AVRO/Binary",
                                          "avro/binary; charset=binary"])
def test_avro_binary_or_no_content_type_is_accepted(app, content_type):
    response = call_app(app, call_body(), content_type=content_type)
    assert response.status == 200
    assert read_answer(response.body).datum == "Hello World"


def test_chunked_body_is_accepted(app):
    response = call_app(app, call_body(), chunked=True)
    assert read_answer(response.body).datum == "Hello World"


class Breaking(io.BytesIO):
    """A request body whose every read raises `error`."""

    def __init__(self, error):
        super().__init__()
        self.error = error

    def read(self, *args):
        raise self.error


def test_declared_oversized_body_is_refused_before_reading(app):
    response = call_app(app, call_body(), content_length=avrohttp.wsgi.MAX_BODY_BYTES + 1)
    assert response.status == 413
    response = call_app(echo_app(max_body_bytes=10), content_length=11,
                        stream=Breaking(AssertionError("the body was read")))
    assert (response.status, response.body) == (413, b"Body is larger than 10 bytes\n")


def test_chunked_oversized_body_is_cut_off_at_the_limit():
    app = echo_app(max_body_bytes=1000)
    response = call_app(app, call_body(query="x" * 2000), chunked=True)
    assert (response.status, response.body) == (413, b"Body is larger than 1000 bytes\n")
    # Connection is hop-by-hop, for the server to say (PEP 3333): the eventlet host closes
    # such a connection (tests/avrohttp/test_limits.py), and wsgiref refuses the header.
    assert "connection" not in response.headers


def test_body_at_the_limit_is_accepted():
    body = call_body(query="x" * 500)
    app = echo_app(max_body_bytes=len(body))
    assert call_app(app, body).status == 200
    assert call_app(app, body, chunked=True).status == 200


@pytest.mark.parametrize("body, reason", [
    (b"", b"Bad Avro request: empty body\n"),
    (b"\x00\x00", b"Bad Avro request: body ends inside a frame or before the "
                  b"end-of-message frame\n"),
    (b"\x00\x00\x00\x10abc", b"Bad Avro request: body ends inside a frame or before the "
                             b"end-of-message frame\n"),
    (frame(b"")[:4] + b"garbage", b"Bad Avro request: body is not an Avro handshake request\n"),
    (b"GET / HTTP/1.1\r\n\r\n", b"Bad Avro request: body ends inside a frame or before the "
                                b"end-of-message frame\n"),
    (frame(b"not a handshake"), b"Bad Avro request: body is not an Avro handshake request\n"),
    (frame(handshake_request()[:20]), b"Bad Avro request: body is not an Avro handshake request\n"),
])
def test_unreadable_bodies_get_400_with_a_short_reason(app, body, reason):
    response = call_app(app, body)
    assert response.status == 400
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.body == reason


@pytest.mark.parametrize("error", [TimeoutError("timed out"), ConnectionResetError(),
                                   ValueError("bad chunk size")])
def test_body_that_cannot_be_read_gets_400(app, error):
    response = call_app(app, content_length=100, stream=Breaking(error))
    assert (response.status, response.headers) == (400, {
        "content-type": "text/plain; charset=utf-8", "content-length": "23"})
    assert response.body == b"Body could not be read\n"


@pytest.mark.parametrize("request_options, line", [
    ({"method": "GET"}, "405 Method Not Allowed: Avro calls must be POSTed"),
    ({"content_type": "text/plain"}, "415 Unsupported Media Type: Content-Type must be "
                                     "avro/binary"),
    ({"content_length": avrohttp.wsgi.MAX_BODY_BYTES + 1}, "413 Content Too Large: Body is "
                                                           "larger than 1048576 bytes"),
    ({"body": b"\x00\x00"}, "400 Bad Request: Bad Avro request: body ends inside a frame or "
                            "before the end-of-message frame"),
    ({"content_length": 100, "stream": Breaking(ConnectionResetError("reset"))},
     "the body could not be read: reset"),
])
def test_each_refusal_is_logged_once_in_one_line(app, caplog, request_options, line):
    with caplog.at_level(logging.INFO, logger="avrohttp"):
        call_app(app, **request_options)
    assert [(record.name, record.levelname, record.getMessage()) for record in caplog.records
            ] == [("avrohttp", "INFO", f"client 127.0.0.1:50000: {line}")]


def test_a_refusal_that_ends_the_connection_is_answered_under_wsgiref():
    # wsgiref asserts that an application sends no hop-by-hop header: a 413 with
    # "Connection: close" became a 500 there.
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    with make_server("127.0.0.1", 0, echo_app(max_body_bytes=10), handler_class=Quiet) as httpd:
        thread = threading.Thread(target=httpd.handle_request)
        thread.start()
        connection = http.client.HTTPConnection("127.0.0.1", httpd.server_port, timeout=10)
        connection.request("POST", "/", b"x" * 11, {"Content-Type": "avro/binary"})
        response = connection.getresponse()
        assert (response.status, response.read()) == (413, b"Body is larger than 10 bytes\n")
        connection.close()
        thread.join(10)
