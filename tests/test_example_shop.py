"""examples/shop: the Shop protocol served and called through avrohttp, in-process, on each
host, and as programs (`python -m examples.shop.server [--loop asyncio]`,
`python -m examples.shop.client`)."""

import contextlib
import hashlib
import json
import re
import signal
import subprocess
import sys

import avro.errors
import pytest

import avrohttp
from conftest import ROOT, call_app, server_program, serving
from examples.shop import client as shop_client, server as shop_server
from examples.shop.protocol import PROTOCOL_JSON
from avsc_peer import AvscPeer, outcome
from protocols import encode
from wire import call_request, frame, handshake_request, read_answer

SHOP = avrohttp.parse_protocol(PROTOCOL_JSON)


@pytest.fixture
def shop(host):
    """A Client of a fresh Shop server (its own stock) of each host, on a real socket."""
    with serving(shop_server.ShopResponder(), host) as (host, port), \
            avrohttp.Client(PROTOCOL_JSON, host, port) as client:
        yield client


def test_an_item_is_a_record_with_an_enum_array_a_union_and_bytes(shop):
    assert shop.call("item", sku="sock") == shop_server.CATALOGUE["sock"]
    assert shop.call("item", sku="boot")["discount_percent"] is None


def test_an_unknown_item_is_its_declared_error(shop):
    with pytest.raises(avrohttp.DeclaredError) as raised:
        shop.call("item", sku="hat")
    assert (raised.value.name, raised.value.datum) == ("UnknownItem", {"sku": "hat"})
    # Code written for avro.ipc, which catches AvroRemoteException and reads args[0], still works.
    assert isinstance(raised.value, avro.errors.AvroRemoteException)
    assert raised.value.args == ({"sku": "hat"},)


def test_an_order_then_out_of_stock(shop):
    order = shop.call("order", quantities={"boot": 2, "sock": 10})
    assert len(order["id"]) == 16
    assert order["quantities"] == {"boot": 2, "sock": 10}
    assert order["total_cents"] == 2 * 8900 + 10 * 650 * 90 // 100
    with pytest.raises(avrohttp.DeclaredError) as raised:
        shop.call("order", quantities={"boot": 2})
    assert (raised.value.name, raised.value.datum) == ("OutOfStock", {"sku": "boot", "left": 1})


@pytest.mark.parametrize("quantities", [{}, {"boot": 0}, {"sock": 1, "boot": -5}])
def test_an_order_of_nothing_or_less_is_refused_and_changes_no_stock(shop, quantities):
    with pytest.raises(avrohttp.RemoteSystemError) as raised:
        shop.call("order", quantities=quantities)
    assert raised.value.message == "an order needs quantities of 1 or more"
    assert shop.call("order", quantities={"boot": 3})["total_cents"] == 3 * 8900


def test_a_one_way_visit_returns_none_and_is_counted(shop):
    assert shop.call("visit", page="/") is None
    assert shop.call("visit", page="/") is None
    assert shop.call("visits") == {"/": 2}


def test_a_message_the_server_lacks_raises_the_servers_words(shop):
    # A newer client, with a message that this server does not have. avro.ipc's Requestor
    # raises "Unknown remote message" on the client's side, without reading the answer.
    newer = json.loads(PROTOCOL_JSON)
    newer["messages"]["refund"] = {"request": [{"name": "order", "type": "OrderId"}],
                                   "response": "null"}
    host, port = shop.transceiver.remote_name
    with avrohttp.Client(json.dumps(newer), host, port) as client:
        assert client.call("visits") == {}
        with pytest.raises(avrohttp.RemoteSystemError) as raised:
            client.call("refund", order=bytes(16))
    assert raised.value.message == "Unknown message: refund"


def test_the_handshake_sends_the_protocol_as_written():
    # A client with our protocol that guessed a wrong hash for the server: CLIENT, with the
    # server's protocol and hash.
    body = frame(handshake_request(protocol=SHOP, server_hash=b"\x07" * 16)
                 + call_request("visits", {}, SHOP))
    app = avrohttp.make_application(shop_server.ShopResponder())
    answer = read_answer(call_app(app, body).body, "visits", SHOP)
    assert (answer.handshake["match"], answer.datum) == ("CLIENT", {})
    assert answer.handshake["serverProtocol"] == PROTOCOL_JSON
    assert answer.handshake["serverHash"] == hashlib.md5(PROTOCOL_JSON.encode()).digest()
    assert json.loads(answer.handshake["serverProtocol"])["messages"]["visit"]["one-way"]


@contextlib.contextmanager
def shop_server_program(*args: str):
    """`python -m examples.shop.server` on a free port: yields its port, then stops it with
    SIGTERM and checks that it exits 0."""
    with server_program(*args, program=("-m", "examples.shop.server")) as running:
        yield running.port
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=20) == 0


def run_client(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "examples.shop.client", "--port", str(port),
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("loop", ["eventlet", "asyncio"])
def test_the_programs(loop, workers):
    with shop_server_program("--workers", workers, "--loop", loop) as port:
        result = run_client(port)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "Walking boot: 89.00, sizes MEDIUM, LARGE"
        assert re.fullmatch(r"Order [0-9a-f]{32}: 178\.00", lines[1])
        if workers == "1":  # with two, each process has its own stock and counts
            assert lines[2:] == ["Walking boot: 89.00, sizes MEDIUM, LARGE",
                                 "Out of stock: 1 left of boot", "Visits: {'/items/boot': 2}"]
        result = run_client(port, "--sku", "hat")
        assert (result.returncode, result.stderr) == (
            1, "error: the server answered UnknownItem: {'sku': 'hat'}\n")


def test_the_client_without_a_server_says_so(capsys):
    from conftest import free_port
    assert shop_client.main(["--port", str(free_port())]) == 1
    assert "cannot reach the server" in capsys.readouterr().err


@pytest.fixture(scope="module")
def avsc():
    peer = AvscPeer()
    yield peer
    peer.close()


def test_avsc_calls_the_shop(avsc, host):
    # Before the protocol went out as written, avsc refused this server altogether: avro's
    # text of it has no `"one-way": true` for `visit`, and every call failed with
    # "incompatible protocol" ("inconsistent one-way message: visit").
    calls = [("visit", {"page": "/"}), ("item", {"sku": "sock"}),
             ("order", {"quantities": {"boot": 9}}), ("item", {"sku": "hat"}), ("visits", {})]
    with serving(shop_server.ShopResponder(), host) as (host, port):
        results = avsc.ask(op="call", port=port, protocol=json.loads(PROTOCOL_JSON), calls=[
            {"message": name, "request": encode(SHOP.messages[name].request, request).hex()}
            for name, request in calls])["results"]
    assert [outcome(SHOP.messages[name], result)
            for (name, _), result in zip(calls, results)] == [
        ("response", None),
        ("response", shop_server.CATALOGUE["sock"]),
        ("declared", "OutOfStock", {"sku": "boot", "left": 3}),
        ("declared", "UnknownItem", {"sku": "hat"}),
        ("response", {"/": 1}),
    ]
