"""End-to-end tests of avrohttp.AsyncClient: what test_client.py checks of Client, on asyncio:
its answers and Avro errors, TLS, and an avsc server. Its failures and retry rule are
test_async_client_failures.py's, its bytes on the wire and its connections' pool
test_async_client_connections.py's.

The servers it calls run as programs (server.py, the Shop example, avsc), not in this test
process, which eventlet has monkey-patched (conftest.py imports server.py); each test runs
its own event loop with asyncio.run (on_asyncio), with no pytest plugin. The scripted
servers that close or hang (test_async_client_failures.py's http_server) are asyncio servers
in the test's own loop.
"""

import asyncio
import functools
import json
import re
import ssl

import avro.errors
import pytest
import trustme

import avrohttp
import avrohttp.async_client
from avrohttp import hooks
from avsc_peer import AvscPeer
from conftest import free_port, server_program
from examples.shop.protocol import PROTOCOL_JSON as SHOP_JSON
from protocol import EchoProtocol
from protocols import encode

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
