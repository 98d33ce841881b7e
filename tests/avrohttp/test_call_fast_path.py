"""The asyncio host's fast path for calls (avrohttp.call_fast_path): it answers what the ASGI
application answers, byte for byte but the Date header, and it is the path calls take."""

import re
import socket

import pytest

import avrohttp.serve_asyncio
import server
from conftest import serving
from wire import call_body

CALL = call_body()


def post(body: bytes = CALL, content_type: bytes = b"avro/binary", version: bytes = b"1.1",
         extra: bytes = b"") -> bytes:
    return (b"POST / HTTP/" + version + b"\r\nHost: x\r\nContent-Type: " + content_type
            + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body)


CHUNKED = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(CALL) + CALL + b"\r\n0\r\n\r\n")

# What a client may send, one connection each: and all of it at once, pipelined.
REQUESTS = {
    "a call": post(),
    "three calls, pipelined": post() * 3,
    "a call, then /health, then a call, pipelined":
        post() + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + post(),
    "a call of HTTP/1.0": post(version=b"1.0"),
    "a call that asks to close": post(extra=b"Connection: close\r\n"),
    "a call with a chunked body": CHUNKED,
    "a call that expects 100-continue": post(extra=b"Expect: 100-continue\r\n"),
    "the wrong content type": post(content_type=b"text/plain"),
    "a body that is not Avro-framed": post(body=b"hello"),
    "a body that is no Avro call": post(body=b"\x00\x00\x00\x01\x07\x00\x00\x00\x00"),
    "a body over the limit": post(body=b"x" * 2000),
    "a call to /health": b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
}


def exchange(address: tuple, request: bytes) -> bytes:
    """Send the request, half-close, and read everything until the server closes or goes
    quiet: the whole answer, whatever its framing."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request)
        sock.settimeout(0.5)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except socket.timeout:
            pass
        except ConnectionResetError:
            received += b"<reset>"
    return re.sub(rb"date: [^\r]*\r\n", b"", received)


@pytest.fixture(scope="module")
def answers_through_asgi() -> dict:
    # The access log takes every request through the ASGI application.
    with serving(server.EchoResponder(), "asyncio", access_log=True,
                 max_body_bytes=1000) as address:
        return {name: exchange(address, request) for name, request in REQUESTS.items()}


@pytest.mark.parametrize("name", REQUESTS)
def test_the_fast_path_answers_as_the_asgi_application(name, answers_through_asgi):
    with serving(server.EchoResponder(), "asyncio", max_body_bytes=1000) as address:
        fast = exchange(address, REQUESTS[name])
    assert fast.startswith(b"HTTP/1.1 ")
    assert fast == answers_through_asgi[name]


def test_calls_take_the_fast_path_and_the_rest_the_asgi_application(monkeypatch):
    requests = []
    application_of = avrohttp.serve_asyncio.application_of

    def counting(rules):
        application = application_of(rules)

        async def counted(scope, receive, send):
            requests.append((scope["method"], scope["path"]))
            await application(scope, receive, send)

        return counted

    monkeypatch.setattr(avrohttp.serve_asyncio, "application_of", counting)
    with serving(server.EchoResponder(), "asyncio") as address:
        exchange(address, REQUESTS["three calls, pipelined"])
        # The second call waits behind /health, whose answer comes from a task: it queues
        # as uvicorn queues pipelined requests, and so takes the ASGI path too.
        exchange(address, REQUESTS["a call, then /health, then a call, pipelined"])
        exchange(address, REQUESTS["a call with a chunked body"])
    assert requests == [("GET", "/health"), ("POST", "/"), ("POST", "/")]


def test_async_handlers_take_the_asgi_application():
    class AsyncEcho(server.EchoResponder):
        async def handle_echo(self, query: str) -> str:
            return query

    with serving(AsyncEcho(), "asyncio") as address:
        answer = exchange(address, post())
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Hello World" in answer
