"""End-to-end tests of avrohttp.AsyncClient: what test_client.py checks of Client, on asyncio.

The servers it calls run as programs (server.py, the Shop example, avsc), not in this test
process, which eventlet has monkey-patched (conftest.py imports server.py); each test runs
its own event loop with asyncio.run, with no pytest plugin. The scripted servers that close
or hang are asyncio servers in the test's own loop.
"""

import asyncio
import contextlib
import functools
import json
import re
import socket
import ssl
import time

import avro.errors
import pytest
import trustme

import avrohttp
import avrohttp.async_client
import avrohttp.client
import avrohttp.client_rules
from avrohttp import hooks
from avsc_peer import AvscPeer
from conftest import call_app, echo_app, free_port, server_program
from examples.shop.protocol import PROTOCOL_JSON as SHOP_JSON
from protocol import EchoProtocol
from protocols import encode
import wire

SHOP = avrohttp.parse_protocol(SHOP_JSON)


def on_asyncio(test):
    """Run an `async def` test in a fresh event loop (asyncio.run), as a plain test."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


def echo_client(port: int, **options) -> avrohttp.AsyncClient:
    return avrohttp.AsyncClient(EchoProtocol, "127.0.0.1", port, **{"timeout": 5, **options})


def fails_with(message: str):
    """pytest.raises for a CallFailed whose message is exactly `message`."""
    return pytest.raises(avrohttp.CallFailed, match=f"^{re.escape(message)}$")


@pytest.fixture(scope="module")
def shop_port():
    """The Shop example's server (declared errors, a one-way message), as a program."""
    with server_program(program=("-m", "examples.shop.server")) as running:
        yield running.port


# --- answers and Avro errors ----------------------------------------------------------------

@pytest.mark.parametrize("query", ["Hello World", "héllo wörld! ✓ 𝄞", "", "x" * 100_000])
@on_asyncio
async def test_echo_and_split_round_trip(server_process, query):
    async with echo_client(server_process) as client:
        assert await client.call("echo", query=query) == query
        assert await client.call("split", query=query) == query[: len(query) // 2]


@on_asyncio
async def test_calls_one_after_another_reuse_one_connection(server_process):
    async with echo_client(server_process) as client:
        for n in range(5):
            assert await client.call("echo", query=f"call {n}") == f"call {n}"
        [connection] = client._connections
        writer = connection.writer
        assert await client.call("split", query="ab") == "a"
        assert connection.writer is writer


@on_asyncio
async def test_many_calls_at_once_with_gather(server_process):
    async with echo_client(server_process) as client:
        answers = await asyncio.gather(*(client.call("echo", query=f"call {n}")
                                         for n in range(500)))
        assert answers == [f"call {n}" for n in range(500)]
        # One connection per call in flight, up to the limit, each kept for the next calls.
        assert 1 < len(client._connections) <= avrohttp.async_client.MAX_CONNECTIONS
        opened = len(client._connections)
        await asyncio.gather(*(client.call("split", query="ab") for n in range(opened)))
        assert len(client._connections) == opened


@on_asyncio
async def test_a_declared_error_a_system_error_and_a_one_way_call(shop_port):
    async with avrohttp.AsyncClient(SHOP_JSON, "127.0.0.1", shop_port, timeout=5) as shop:
        assert (await shop.call("item", sku="sock"))["name"] == "Wool sock"
        with pytest.raises(avrohttp.DeclaredError) as raised:
            await shop.call("item", sku="hat")
        assert (raised.value.name, raised.value.datum) == ("UnknownItem", {"sku": "hat"})
        assert isinstance(raised.value, avro.errors.AvroRemoteException)
        with pytest.raises(avrohttp.RemoteSystemError) as raised:
            await shop.call("order", quantities={})
        assert raised.value.message == "an order needs quantities of 1 or more"
        assert await shop.call("visit", page="/async") is None
        assert await shop.call("visit", page="/async") is None
        assert (await shop.call("visits"))["/async"] == 2
        assert len(shop._connections) == 1  # an Avro error leaves the connection open


@on_asyncio
async def test_a_message_unknown_here_or_to_the_server(shop_port):
    newer = json.loads(SHOP_JSON)
    newer["messages"]["refund"] = {"request": [{"name": "order", "type": "OrderId"}],
                                   "response": "null"}
    async with avrohttp.AsyncClient(json.dumps(newer), "127.0.0.1", shop_port) as shop:
        with pytest.raises(avro.errors.AvroException, match="^Unknown message: shout$"):
            await shop.call("shout", query="hi")  # not in our protocol: nothing is sent
        with pytest.raises(avrohttp.RemoteSystemError) as raised:
            await shop.call("refund", order=bytes(16))
        assert raised.value.message == "Unknown message: refund"


class Recording(avrohttp.CallHook):
    def __init__(self) -> None:
        self.calls = []

    def after(self, call: avrohttp.Call) -> None:
        self.calls.append((call.message, call.outcome, call.request_bytes > 0))


@on_asyncio
async def test_call_hooks_see_every_outcome(shop_port):
    recording = Recording()
    async with avrohttp.AsyncClient(SHOP_JSON, "127.0.0.1", shop_port,
                                    call_hooks=[recording]) as shop:
        await shop.call("item", sku="boot")
        with pytest.raises(avrohttp.DeclaredError):
            await shop.call("item", sku="hat")
        with pytest.raises(avrohttp.RemoteSystemError):
            await shop.call("order", quantities={"boot": 0})
    async with avrohttp.AsyncClient(SHOP_JSON, "127.0.0.1", free_port(),
                                    call_hooks=[recording]) as unreachable:
        with pytest.raises(avrohttp.CallFailed):
            await unreachable.call("visits")
    assert recording.calls == [("item", hooks.ANSWERED, True),
                               ("item", hooks.DECLARED_ERROR, True),
                               ("order", hooks.SYSTEM_ERROR, True),
                               ("visits", hooks.FAILED, True)]


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


# --- TLS --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_port(tmp_path_factory):
    """server.py over HTTPS with a throwaway CA's certificate: yields (port, CA file)."""
    directory = tmp_path_factory.mktemp("async-pki")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    issued.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    issued.private_key_pem.write_to_path(directory / "key.pem")
    with server_program("--certfile", str(directory / "cert.pem"),
                        "--keyfile", str(directory / "key.pem")) as running:
        yield running.port, str(directory / "ca.pem")


@on_asyncio
async def test_tls_calls_and_their_failures(tls_port):
    port, cafile = tls_port
    trusting = ssl.create_default_context(cafile=cafile)
    async with echo_client(port, ssl_context=trusting) as client:
        assert await client.call("echo", query="over TLS") == "over TLS"
    untrusted = ssl.create_default_context()  # the system's CAs only
    async with echo_client(port, ssl_context=untrusted) as client:
        with fails_with(f"cannot reach the server at 127.0.0.1:{port}: its TLS certificate "
                        "is not trusted (unable to get local issuer certificate)"):
            await client.call("echo", query="hi")
    async with echo_client(port) as client:  # plain HTTP to an HTTPS server
        with pytest.raises(avrohttp.CallFailed,
                           match=r"\(if the server serves HTTPS, call it with TLS\)$"):
            await client.call("echo", query="hi")


# --- avsc, the Node.js implementation of Avro, as the server ----------------------------------

@on_asyncio
async def test_calling_an_avsc_server():
    avsc = AvscPeer()
    try:
        item, visits = SHOP.messages["item"], SHOP.messages["visits"]
        sock = {"sku": "sock", "name": "Wool sock", "price_cents": 650, "sizes": ["SMALL"],
                "discount_percent": 10, "photo": b"\x01"}
        script = [{"message": "item", "response": encode(item.response, sock).hex()},
                  {"message": "item", "error": encode(item.errors, {"sku": "hat"}).hex()},
                  {"message": "visit", "response": ""}]
        script += [{"message": "visits", "response": encode(visits.response, {"/": 1}).hex()}
                   ] * 20
        port = avsc.ask(op="serve", protocol=json.loads(SHOP_JSON), script=script)["port"]
        async with avrohttp.AsyncClient(SHOP_JSON, "127.0.0.1", port, timeout=10) as shop:
            assert await shop.call("item", sku="sock") == sock
            with pytest.raises(avrohttp.DeclaredError) as raised:
                await shop.call("item", sku="hat")
            assert (raised.value.name, raised.value.datum) == ("UnknownItem", {"sku": "hat"})
            assert await shop.call("visit", page="/") is None
            # At once: each new connection makes its own handshake with avsc.
            answers = await asyncio.gather(*(shop.call("visits") for _ in range(20)))
            assert answers == [{"/": 1}] * 20
        assert len(avsc.ask(op="served")["requests"]) == 23
    finally:
        avsc.close()
        avsc.process.stdout.close()  # AvscPeer.close() leaves it to the garbage collector


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
