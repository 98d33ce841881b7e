"""Generated protocols (tests/protocols.py), each with its calls, through every path:

- our Client and our server, over a real socket, on each host (eventlet and asyncio);
- our Requestor and our server on each host against avro.ipc's Requestor and Responder, byte
  for byte (where avro.ipc is wrong, a declared error, against avro.ipc with that one thing put
  right);
- avsc calling our server on each host, and our Client calling an avsc server
  (tests/interop/avsc_peer.js).

`make test` runs GENERATED_EXAMPLES_QUICK examples per test; `make fuzz` sets
GENERATED_EXAMPLES to run many more.
"""

import json
import os

import avro.errors
import avro.io
import avro.ipc
import avro.protocol
import pytest
from hypothesis import HealthCheck, event, given, settings

import avrohttp
import avrohttp.client
import avsc_peer
from avrohttp import Requestor, Responder
from avsc_peer import AvscPeer
from conftest import HOSTS, serving
from protocols import Call, Example, decode, encode, examples, round_trip

GENERATED_EXAMPLES_QUICK = 60
GENERATED_EXAMPLES = int(os.environ.get("GENERATED_EXAMPLES", "0")) or GENERATED_EXAMPLES_QUICK

generated = settings(max_examples=GENERATED_EXAMPLES,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def raised_by(call: Call) -> avro.errors.AvroRemoteException:
    """What the handler of this call raises."""
    if call.outcome == "declared":
        return avrohttp.DeclaredError(call.error_name, call.datum)
    if call.outcome == "remote":  # as avro.ipc users write it
        return avro.errors.AvroRemoteException(call.datum)
    return avro.errors.AvroRemoteException(call.datum)  # "string": words


class Scripted(Responder):
    """Answers each call as the next Call says, and keeps the requests it gets."""

    def __init__(self, example: Example) -> None:
        super().__init__(example.text)
        self.script = iter(example.calls)
        self.requests = []

    def invoke(self, message, request):
        call = next(self.script)
        assert message.name == call.message
        self.requests.append(request)
        if call.outcome != "response":
            raise raised_by(call)
        return call.datum


class PlainScripted(avro.ipc.Responder):
    """avro.ipc's Responder, scripted alike, with its one flaw here put right: write_error
    writes str(error) (a declared error's datum as a string); this writes the datum, so
    that its bytes are what a correct server sends."""

    def __init__(self, example: Example) -> None:
        super().__init__(example.protocol)
        self.script = iter(example.calls)

        self.requests = []

    invoke = Scripted.invoke

    def write_error(self, writers_schema, error, encoder):
        avro.io.DatumWriter(writers_schema).write(error.args[0], encoder)


def expected_outcome(example: Example, call: Call):
    """What the caller gets: ("response", datum), ("declared", name, datum) or
    ("system error", words)."""
    protocol = example.protocol
    message = protocol.messages[call.message]
    # Counted in `make fuzz`'s statistics (--hypothesis-show-statistics).
    event("one-way call" if message.name in protocol.one_way else f"call: {call.outcome}")
    if call.outcome == "response":
        if message.name in protocol.one_way:
            return ("response", None)
        return ("response", round_trip(message.response, call.datum))
    if call.outcome == "string":
        return ("system error", call.datum)
    return ("declared", call.error_name,
            round_trip(protocol.types_dict[call.error_name], call.datum))


def outcome_of(call) -> tuple:
    """Call `call()`, and say what came of it, in the terms of expected_outcome."""
    try:
        return ("response", call())
    except avrohttp.DeclaredError as e:
        return ("declared", e.name, e.datum)
    except avrohttp.RemoteSystemError as e:
        return ("system error", e.message)


def expected_requests(example: Example) -> list:
    protocol = example.protocol
    return [round_trip(protocol.messages[call.message].request, call.request)
            for call in example.calls]


class Switch:
    """The responder of one real server for many examples: each request goes to the
    responder of the moment, which the test sets."""

    local_protocol = avro.protocol.parse('{"protocol": "Generated", "messages": {}}')
    responder = None

    def respond(self, request: bytes) -> bytes:
        return self.responder.respond(request)

    def invoke(self, message, request):  # what a host looks at (for async def): never called
        return self.responder.invoke(message, request)


@pytest.fixture(scope="module", params=HOSTS)
def our_server(request):
    """One real server of each host for the module, its responder switched for each
    example."""
    switch = Switch()
    with serving(switch, request.param) as address:
        yield switch, address


@generated
@given(example=examples())
def test_our_client_and_our_server(our_server, example):
    switch, (host, port) = our_server
    responder = Scripted(example)
    switch.responder = responder
    with avrohttp.Client(example.text, host, port) as client:
        got = [outcome_of(lambda: client.call(call.message, **call.request))
               for call in example.calls]
    assert got == [expected_outcome(example, call) for call in example.calls]
    assert responder.requests == expected_requests(example)


class Recording:
    """A transceiver that hands each request to a responder, and records both ways."""

    remote_name = ("recording", 0)

    def __init__(self, responder) -> None:
        self.responder = responder
        self.exchanges = []

    def transceive(self, request: bytes) -> bytes:
        response = self.responder.respond(request)
        self.exchanges.append((request, response))
        return response


class RecordingHTTP(avrohttp.client.Transceiver):
    """Our client's transceiver, to a real server, recording both ways (the Avro bytes,
    unframed)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, timeout=10, connect_timeout=10, ssl_context=None)
        self.exchanges = []

    def transceive(self, request: bytes) -> bytes:
        response = super().transceive(request)
        self.exchanges.append((request, response))
        return response


@pytest.mark.parametrize("client_protocol", ["as written", "parsed by avro"])
@generated
@given(example=examples())
def test_the_bytes_are_avro_ipcs(our_server, client_protocol, example):
    """Requests and responses, byte for byte, from the first handshake (a NONE, when the
    client's protocol is avro's text and so has another hash) to the last call: ours through
    a real server of each host, avro.ipc's in-process."""
    switch, (host, port) = our_server
    recorded = []
    for requestor_class, responder_class in [(Requestor, Scripted),
                                             (avro.ipc.Requestor, PlainScripted)]:
        avro.ipc.REMOTE_HASHES.clear()  # avro.ipc's module-level caches
        avro.ipc.REMOTE_PROTOCOLS.clear()
        protocol = (example.protocol if client_protocol == "as written"
                    else avro.protocol.parse(example.text))
        if requestor_class is Requestor:
            switch.responder = responder_class(example)
            transceiver = RecordingHTTP(host, port)
        else:
            transceiver = Recording(responder_class(example))
        requestor = requestor_class(protocol, transceiver)
        for call in example.calls:
            try:
                requestor.request(call.message, call.request)
            except avro.errors.AvroRemoteException:  # avro.ipc's, for either kind of error
                pass
        recorded.append(transceiver.exchanges)
        if requestor_class is Requestor:
            transceiver.close()
    ours, avros = recorded
    assert ours == avros


# --- avsc: tests/interop/avsc_peer.js -------------------------------------------------------

@pytest.fixture(scope="module")
def avsc():
    peer = AvscPeer()
    yield peer
    peer.close()


@generated
@given(example=examples())
def test_avsc_calls_our_server(our_server, avsc, example):
    switch, (host, port) = our_server
    responder = Scripted(example)
    switch.responder = responder
    protocol = example.protocol
    calls = [{"message": call.message,
              "request": encode(protocol.messages[call.message].request, call.request).hex()}
             for call in example.calls]
    results = avsc.ask(op="call", port=port, protocol=json.loads(example.text), calls=calls)
    got = [avsc_peer.outcome(protocol.messages[call.message], result)
           for call, result in zip(example.calls, results["results"])]
    assert got == [expected_outcome(example, call) for call in example.calls]
    assert responder.requests == expected_requests(example)


@generated
@given(example=examples())
def test_our_client_calls_an_avsc_server(avsc, example):
    protocol = example.protocol
    script = []
    for call in example.calls:
        message = protocol.messages[call.message]
        if call.outcome == "response":
            answer = {"response": encode(message.response, call.datum).hex()}
        else:
            answer = {"error": encode(message.errors, call.datum).hex()}
        script.append({"message": call.message, **answer})
    port = avsc.ask(op="serve", protocol=json.loads(example.text), script=script)["port"]
    with avrohttp.Client(example.text, "127.0.0.1", port) as client:
        got = [outcome_of(lambda: client.call(call.message, **call.request))
               for call in example.calls]
    requests = avsc.ask(op="served")["requests"]
    assert got == [expected_outcome(example, call) for call in example.calls]
    assert [decode(protocol.messages[call.message].request, bytes.fromhex(request))
            for call, request in zip(example.calls, requests)] == expected_requests(example)
