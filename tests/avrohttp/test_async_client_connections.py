"""AsyncClient's bytes on the wire and its connections: a chunked answer, a plain call's
request (the fast path), an answer that closes its connection, and the pool of connections
(MAX_CONNECTIONS), with calls that wait for one and calls cancelled meanwhile.
"""

import asyncio
import re

import pytest

import avrohttp
import avrohttp.async_client
from conftest import call_app, echo_app
from test_async_client import echo_client, on_asyncio
from test_async_client_failures import Counts, http_server, read_request
import wire


# --- how an answer is read ----------------------------------------------------------------

@on_asyncio
async def test_a_chunked_answer_is_read():
    app = echo_app()

    async def chunked(reader, writer):
        answer = call_app(app, await read_request(reader)).body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"".join(b"%x\r\n%s\r\n" % (len(answer[i:i + 5]), answer[i:i + 5])
                                for i in range(0, len(answer), 5)) + b"0\r\n\r\n")

    async with http_server(chunked) as port, echo_client(port) as client:
        assert await client.call("echo", query="in chunks") == "in chunks"


# --- the fast path: a plain call's bytes, the connections' pool ---------------------------

@on_asyncio
async def test_each_request_is_avro_ipcs_call_in_one_post_whatever_its_length():
    """A plain call's request (PlainCall) under a head looked up by its length
    (AsyncClient.request_head): for more lengths than are kept, each is the POST of the
    bytes that avro.ipc sends, with its own Content-Length."""
    app = echo_app()
    requests = []

    async def recording(reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(int(re.search(rb"Content-Length: (\d+)", head)[1]))
            requests.append((head, body))
            answer = call_app(app, body).body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(answer) + answer)

    queries = ["x" * n for n in range(avrohttp.async_client.REQUEST_HEADS_KEPT + 10)] * 2
    async with http_server(recording) as port, echo_client(port) as client:
        for query in queries:
            assert await client.call("echo", query=query) == query
        assert len(client.request_heads) == avrohttp.async_client.REQUEST_HEADS_KEPT
    assert len(requests) == len(queries)
    for (head, body), query in zip(requests, queries):
        assert body == wire.call_body("echo", query, meta=wire.timeout_meta(5))
        assert head == (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: avro/binary"
                        b"\r\nContent-Length: %d\r\n\r\n" % (port, len(body)))


@on_asyncio
async def test_an_avro_answer_that_closes_the_connection_is_read_and_the_connection_closed():
    """Not the usual answer (Connection: close): read all the same, then a new connection."""
    app = echo_app()
    counts = Counts()

    async def closing(reader, writer):
        counts.connections += 1
        answer = call_app(app, await read_request(reader)).body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(answer) + answer)

    async with http_server(closing) as port, echo_client(port) as client:
        for query in ("one", "two", "three"):
            assert await client.call("echo", query=query) == query
            [connection] = client._connections
            assert connection.writer is None
    assert counts.connections == 3


def slow_echo(delay: float):
    """An echo server that answers each call after `delay` seconds; and its counts."""
    app = echo_app()
    counts = Counts()

    async def handle(reader, writer):
        counts.connections += 1
        while True:
            try:
                body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            counts.requests += 1
            await asyncio.sleep(delay)
            answer = call_app(app, body).body
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: avro/binary\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(answer) + answer)

    return handle, counts


@on_asyncio
async def test_calls_beyond_max_connections_wait_for_a_free_one(monkeypatch):
    monkeypatch.setattr(avrohttp.async_client, "MAX_CONNECTIONS", 2)
    handle, counts = slow_echo(0.01)
    async with http_server(handle) as port, echo_client(port) as client:
        queries = [f"q{n}" for n in range(9)]
        answers = await asyncio.gather(*(client.call("echo", query=q) for q in queries))
        assert answers == queries
        assert counts.connections == len(client._connections) == 2
        assert len(client._idle) == 2 and not client._waiting


@on_asyncio
async def test_a_call_cancelled_while_it_waits_for_a_connection_takes_none(monkeypatch):
    monkeypatch.setattr(avrohttp.async_client, "MAX_CONNECTIONS", 1)
    handle, counts = slow_echo(0.05)
    async with http_server(handle) as port, echo_client(port) as client:
        first = asyncio.ensure_future(client.call("echo", query="first"))
        waiting = asyncio.ensure_future(client.call("echo", query="cancelled"))
        last = asyncio.ensure_future(client.call("echo", query="last"))
        await asyncio.sleep(0.01)
        waiting.cancel()
        assert await asyncio.wait_for(first, 5) == "first"
        assert await asyncio.wait_for(last, 5) == "last"
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await asyncio.wait_for(client.call("echo", query="again"), 5) == "again"
        assert len(client._connections) == 1 and len(client._idle) == 1
        assert not client._waiting
    assert counts.requests == 3  # the cancelled call sent nothing


@on_asyncio
async def test_a_call_cancelled_once_handed_a_connection_gives_it_back(monkeypatch):
    monkeypatch.setattr(avrohttp.async_client, "MAX_CONNECTIONS", 1)
    handle, _ = slow_echo(0)
    async with http_server(handle) as port, echo_client(port) as client:
        assert await client.call("echo", query="one") == "one"
        [connection] = client._idle
        client._idle.pop()  # as if a call had it: the next call waits
        waiting = asyncio.ensure_future(client.call("echo", query="two"))
        await asyncio.sleep(0)
        assert len(client._waiting) == 1
        client._put_back(connection)  # handed to the waiting call, which is cancelled
        waiting.cancel()              # before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert client._idle == [connection] and not client._waiting
        assert await asyncio.wait_for(client.call("echo", query="three"), 5) == "three"
