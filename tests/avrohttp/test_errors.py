"""Declared errors, system errors, one-way messages and the protocol as written, on both
sides (avrohttp.responder, avrohttp.requestor, avrohttp.errors, avrohttp.protocol), each next
to what avro.ipc does, which these tests show to be wrong."""

import hashlib
import io
import json
import logging

import avro.errors
import avro.io
import avro.ipc
import avro.protocol
import pytest

import avrohttp
from avrohttp import codec
from conftest import LocalTransceiver

PROTOCOL_JSON = json.dumps({
    "protocol": "Stock", "namespace": "test.stock", "doc": "Kept in the handshake.",
    "types": [
        {"type": "error", "name": "OutOfStock", "fields": [
            {"name": "item", "type": "string"}, {"name": "left", "type": "int"}]},
        {"type": "error", "name": "Closed", "fields": [{"name": "until", "type": "string"}]},
    ],
    "messages": {
        "take": {"doc": "Take one.", "request": [{"name": "item", "type": "string"}],
                 "response": "int", "errors": ["OutOfStock", "Closed"]},
        "plain": {"request": [], "response": "int"},
        "note": {"request": [{"name": "text", "type": "string"}], "response": "null",
                 "one-way": True},
    },
}, indent=1)
STOCK = avrohttp.parse_protocol(PROTOCOL_JSON)


class Raising(avrohttp.Responder):
    """Raises, from every handler, whatever the test put in `error`."""

    error = None

    def invoke(self, message, request):
        if self.error is not None:
            raise self.error
        return 1 if message.name != "note" else "ignored: the message is one-way"


class PlainRaising(avro.ipc.Responder):
    error = None

    def invoke(self, message, request):
        raise self.error


def call(error, message="take", requestor_class=avrohttp.Requestor, **parameters):
    responder = Raising(PROTOCOL_JSON)
    responder.error = error
    requestor = requestor_class(PROTOCOL_JSON, LocalTransceiver(responder))
    return requestor.request(message, parameters or ({"item": "x"} if message == "take" else {}))


def test_a_declared_error_record_comes_back_as_itself():
    with pytest.raises(avrohttp.DeclaredError) as raised:
        call(avro.errors.AvroRemoteException({"item": "x", "left": 0}))
    assert (raised.value.name, raised.value.datum) == ("OutOfStock", {"item": "x", "left": 0})
    assert raised.value.args == ({"item": "x", "left": 0},)  # as avro.ipc users read it


def test_declared_error_names_its_branch():
    with pytest.raises(avrohttp.DeclaredError) as raised:
        call(avrohttp.DeclaredError("Closed", {"until": "Monday"}))
    assert (raised.value.name, raised.value.datum) == ("Closed", {"until": "Monday"})
    with pytest.raises(avrohttp.DeclaredError) as raised:  # the full name works too
        call(avrohttp.DeclaredError("test.stock.Closed", {"until": "Monday"}))
    assert raised.value.name == "Closed"


def test_the_response_holds_the_declared_branch_where_avro_ipc_writes_a_string():
    error = avro.errors.AvroRemoteException({"item": "x", "left": 0})
    writer = avro.io.DatumWriter(STOCK.messages["take"].errors)

    def union_branch(responder_class) -> bytes:
        responder = responder_class(avro.protocol.parse(PROTOCOL_JSON))
        responder.error = error
        request = (codec.encoder_for(avro.ipc.HANDSHAKE_REQUEST_SCHEMA)(
            {"clientHash": responder.local_hash, "serverHash": responder.local_hash})
            + b"\x00" + codec.encoder_for(STOCK.messages["take"].request.fields[0].type)("take")
            + codec.encoder_for(STOCK.messages["take"].request)({"item": "x"}))
        response = responder.respond(request)
        return response[len(b"\x00\x00\x00\x00") + 2:]  # after the BOTH handshake, meta, flag

    def encoded(datum) -> bytes:
        buffer = io.BytesIO()
        writer.write(datum, avro.io.BinaryEncoder(buffer))
        return buffer.getvalue()

    assert union_branch(Raising) == encoded({"item": "x", "left": 0})  # branch 1: OutOfStock
    assert union_branch(PlainRaising) == encoded("{'item': 'x', 'left': 0}")  # the str()


def test_a_plain_string_stays_a_system_error():
    with pytest.raises(avrohttp.RemoteSystemError) as raised:
        call(avro.errors.AvroRemoteException("no stock today"))
    assert raised.value.message == "no stock today"
    assert isinstance(raised.value, avro.errors.AvroRemoteException)


@pytest.mark.parametrize("error, message", [
    (avro.errors.AvroRemoteException({"item": "x"}), "take"),  # fits no declared record
    (avro.errors.AvroRemoteException({"item": "x", "left": 0}), "plain"),  # declares none
    (avrohttp.DeclaredError("Flooded", {}), "take"),  # no such error declared
    (avrohttp.DeclaredError("Closed", {"until": 3}), "take"),  # not a Closed
])
def test_an_error_that_fits_no_declared_branch_is_a_logged_system_error(error, message, caplog):
    with caplog.at_level(logging.ERROR, logger="avrohttp.responder"):
        with pytest.raises(avrohttp.RemoteSystemError) as raised:
            call(error, message)
    assert raised.value.message.startswith(f"{message} failed with an error it does not declare")
    assert "fits none of its declared errors" in caplog.text


def test_a_one_way_message_returns_none_whatever_its_handler_returns():
    assert call(None, "note", text="hello") is None


def test_a_one_way_message_still_reports_a_failure():
    # Over HTTP every call has its answer, so a failed one-way call can say so (as Java does).
    with pytest.raises(avrohttp.RemoteSystemError):
        call(avro.errors.AvroRemoteException("no notes"), "note", text="hello")


def test_the_protocol_as_written_keeps_one_way_and_docs_where_avro_drops_them():
    assert str(STOCK) == PROTOCOL_JSON
    assert STOCK.md5 == hashlib.md5(PROTOCOL_JSON.encode()).digest()
    assert STOCK.one_way == {"note"}
    assert "one-way" not in str(avro.protocol.parse(PROTOCOL_JSON))
    assert "doc" not in str(avro.protocol.parse(PROTOCOL_JSON))
    assert Raising(PROTOCOL_JSON).local_hash == STOCK.md5


@pytest.mark.parametrize("text", ["not json", "[1]", '{"protocol": ""}'])
def test_a_bad_protocol_text_is_a_parse_error(text):
    with pytest.raises(avro.errors.ProtocolParseException):
        avrohttp.parse_protocol(text)


def test_a_message_the_server_lacks_raises_the_servers_words():
    newer = json.loads(PROTOCOL_JSON)
    newer["messages"]["give"] = {"request": [], "response": "int"}
    responder = Raising(PROTOCOL_JSON)
    for requestor_class, expected in [(avrohttp.Requestor, avrohttp.RemoteSystemError),
                                      (avro.ipc.Requestor, avro.errors.AvroException)]:
        requestor = requestor_class(avrohttp.parse_protocol(json.dumps(newer)),
                                    LocalTransceiver(responder))
        with pytest.raises(expected) as raised:
            requestor.request("give", {})
        words = "Unknown message: give" if expected is avrohttp.RemoteSystemError \
            else "Unknown remote message: give"  # avro.ipc never reads the server's answer
        assert str(raised.value) == words
    avro.ipc.REMOTE_HASHES.clear()
    avro.ipc.REMOTE_PROTOCOLS.clear()


def test_errors_are_matched_by_name_when_the_protocols_differ():
    # The client declares only Closed, at another place in its union than the server's.
    older = json.loads(PROTOCOL_JSON)
    older["types"] = older["types"][1:]
    older["messages"] = {"take": {**older["messages"]["take"], "errors": ["Closed"]}}
    responder = Raising(PROTOCOL_JSON)
    requestor = avrohttp.Requestor(json.dumps(older), LocalTransceiver(responder))
    responder.error = avrohttp.DeclaredError("Closed", {"until": "Monday"})
    with pytest.raises(avrohttp.DeclaredError) as raised:
        requestor.request("take", {"item": "x"})
    assert (raised.value.name, raised.value.datum) == ("Closed", {"until": "Monday"})
    # An error the client does not know is read as the server wrote it.
    responder.error = avrohttp.DeclaredError("OutOfStock", {"item": "x", "left": 0})
    with pytest.raises(avrohttp.DeclaredError) as raised:
        requestor.request("take", {"item": "x"})
    assert (raised.value.name, raised.value.datum) == ("OutOfStock", {"item": "x", "left": 0})
