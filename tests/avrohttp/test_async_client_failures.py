"""AsyncClient's failures, in Client's words, and Client's retry rule, against asyncio servers
in the test's own loop (http_server) that answer what neither host would: nothing, a 404,
bytes that are not HTTP, an answer over the limit, a connection closed or left hanging.
Each test runs its own event loop (test_async_client.py's on_asyncio).
"""

import asyncio
import contextlib
import re
import socket
import time

import pytest

import avrohttp
import avrohttp.client_rules
from conftest import call_app, echo_app, free_port, server_program
from test_async_client import echo_client, fails_with, on_asyncio


# --- failures: Client's words ---------------------------------------------------------------

@on_asyncio
async def test_unreachable_server_is_a_call_failed():
    port = free_port()
    async with echo_client(port) as client:
        with fails_with(f"cannot reach the server at 127.0.0.1:{port}: "
                        "[Errno 111] Connection refused"):
            await client.call("echo", query="hi")


@on_asyncio
async def test_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts (via the backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        host, port = listener.getsockname()
        async with echo_client(port, timeout=0.3) as client:
            started = time.monotonic()
            with fails_with(f"the server at {host}:{port} sent no answer within 0.3 s"):
                await client.call("echo", query="hi")
        assert time.monotonic() - started < 5


@on_asyncio
async def test_the_timeout_holds_between_calls_and_inside_an_answer(server_process):
    async with echo_client(server_process, timeout=0.3) as client:
        assert await client.call("echo", query="one") == "one"
        await asyncio.sleep(0.5)  # idle for longer than the timeout: no call is waiting
        assert await client.call("echo", query="two") == "two"

    async def half_an_answer(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                     b"Content-Length: 100\r\n\r\n" + b"\x00" * 10)
        await asyncio.sleep(60)

    async with http_server(half_an_answer) as port, echo_client(port, timeout=0.3) as client:
        with fails_with(f"the server at 127.0.0.1:{port} sent no answer within 0.3 s"):
            await client.call("echo", query="hi")


@contextlib.asynccontextmanager
async def http_server(handle):
    """An asyncio server in this loop on a free port, each connection handled by `handle`
    (reader, writer): yields its port. Connections still open at the end are cut."""
    handlers = set()

    async def handle_connection(reader, writer):
        handlers.add(asyncio.current_task())
        try:
            await handle(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle_connection, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read a request with a Content-Length: its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    return await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head)[1]))


@on_asyncio
async def test_non_avro_answer_is_a_call_failed_with_the_status():
    async def not_found(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 13\r\n\r\nno such thing")

    async with http_server(not_found) as port, echo_client(port) as client:
        with fails_with("server answered 404 Not Found: no such thing"):
            await client.call("echo", query="hi")


@pytest.mark.parametrize("answer, reason", [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "the answer is not HTTP"),
    (b"", "the server closed the connection without an answer"),
])
@on_asyncio
async def test_what_is_not_an_answer_says_so(answer, reason):
    async def not_http(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)

    async with http_server(not_http) as port, echo_client(port) as client:
        with fails_with(f"cannot reach the server at 127.0.0.1:{port}: {reason} "
                        "(if the server serves HTTPS, call it with TLS)"):
            await client.call("echo", query="hi")


@on_asyncio
async def test_an_answer_over_the_limit_is_a_call_failed(monkeypatch):
    monkeypatch.setattr(avrohttp.client_rules, "MAX_ANSWER_BYTES", 1000)

    async def chunked(reader, writer):  # a chunked answer, longer than the limit
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n"
                         + b"3e8\r\n" + b"\x00" * 1000 + b"\r\n" + b"1\r\n\x00\r\n0\r\n\r\n")

    async with http_server(chunked) as port, echo_client(port) as client:
        with fails_with("server answered with more than 1000 bytes"):
            await client.call("echo", query="x" * 20)


# --- the retry rule: Client's -----------------------------------------------------------------

class Counts:
    connections = 0
    requests = 0


def scripted(*plans):
    """A server that answers the first `answers` calls of connection n with the real echo
    application, then reads one more request and closes the connection ("close") or never
    answers ("hang"), as plans[n] = (answers, then) says (the last plan for any after those).
    Returns the handler for http_server, and its counts."""
    app = echo_app()
    counts = Counts()

    async def handle(reader, writer):
        answers, then = plans[min(counts.connections, len(plans) - 1)]
        counts.connections += 1
        for n in range(answers + 1):
            try:
                body = await read_request(reader)
            except asyncio.IncompleteReadError:  # the client closed the connection
                return
            counts.requests += 1
            if n == answers:
                if then == "hang":
                    await asyncio.sleep(60)
                return
            answer = call_app(app, body).body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(answer) + answer)

    return handle, counts


CLOSED = ("the server closed the connection without an answer "
          "(if the server serves HTTPS, call it with TLS)")
CUT_OFF = "closed the connection before answering"  # a connection that had answered before


@on_asyncio
async def test_a_kept_alive_connection_that_the_server_closed_is_retried_on_a_new_one():
    handle, counts = scripted((1, "close"))
    async with http_server(handle) as port, echo_client(port, retry=True) as client:
        assert await client.call("echo", query="one") == "one"
        assert await client.call("echo", query="two") == "two"  # sent twice
        assert await client.call("split", query="three") == "th"
    assert (counts.connections, counts.requests) == (3, 5)


@on_asyncio
async def test_without_retry_the_closed_connection_is_a_call_failed():
    handle, counts = scripted((1, "close"))
    async with http_server(handle) as port, echo_client(port) as client:
        assert await client.call("echo", query="one") == "one"
        with fails_with(f"the server at 127.0.0.1:{port} {CUT_OFF}"):
            await client.call("echo", query="two")
        assert await client.call("echo", query="three") == "three"  # on a new connection
    assert (counts.connections, counts.requests) == (2, 3)


@on_asyncio
async def test_the_retry_is_made_once_only():
    handle, counts = scripted((1, "close"), (0, "close"))
    async with http_server(handle) as port, echo_client(port, retry=True) as client:
        assert await client.call("echo", query="one") == "one"
        with fails_with(f"the server at 127.0.0.1:{port} {CUT_OFF}"):
            await client.call("echo", query="two")
        assert (counts.connections, counts.requests) == (2, 3)
        # A failure on a new connection is not retried at all.
        with fails_with(f"cannot reach the server at 127.0.0.1:{port}: {CLOSED}"):
            await client.call("echo", query="three")
        assert (counts.connections, counts.requests) == (3, 4)


@on_asyncio
async def test_a_timeout_is_not_retried():
    handle, counts = scripted((1, "hang"))
    async with http_server(handle) as port, \
            echo_client(port, timeout=0.3, retry=True) as client:
        assert await client.call("echo", query="one") == "one"
        with fails_with(f"the server at 127.0.0.1:{port} sent no answer within 0.3 s"):
            await client.call("echo", query="two")
        assert (counts.connections, counts.requests) == (1, 2)


@on_asyncio
async def test_an_idle_connection_closed_by_the_real_server_is_retried():
    with server_program("--idle-timeout", "0.2") as running:
        async with echo_client(running.port, retry=True) as client:
            assert await client.call("echo", query="one") == "one"
            [connection] = client._connections
            first = connection.writer
            await asyncio.sleep(0.6)  # the server closes the idle connection after 0.2 s
            assert await client.call("echo", query="two") == "two"
            assert connection.writer is not first
