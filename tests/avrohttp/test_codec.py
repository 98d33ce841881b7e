"""The fast paths of avrohttp (codec, Responder, Requestor) give the bytes avro.ipc gives.

avro.ipc is the reference: for generated queries and every handshake case, the server's
response and the client's request are compared byte for byte with what avro.ipc's own
Responder, Requestor, FramedReader and FramedWriter produce.
"""

import io
import json
import struct

import avro.errors
import avro.io
import avro.ipc
import avro.protocol
import avro.schema
import pytest
from hypothesis import given, strategies as st

import avrohttp
import avrohttp.requestor
import avrohttp.responder
from avrohttp import codec
import server
from conftest import AnyResponder, LocalTransceiver, PlainRequestor, call_app
from protocol import PROTOCOL_JSON, EchoProtocol
from wire import call_request, frame, handshake_request


class PlainEchoResponder(avro.ipc.Responder):
    """The same service on avro.ipc's own Responder, with none of the fixes."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)

    def invoke(self, message, request):
        return getattr(server.EchoResponder, f"handle_{message.name}")(None, **request)


def evolved_protocol() -> avro.protocol.Protocol:
    """A newer client: an extra request field with a default, first, in each message."""
    data = json.loads(PROTOCOL_JSON)
    for message in data["messages"].values():
        message["request"].insert(0, {"name": "shout", "type": "boolean", "default": False})
    return avro.protocol.parse(json.dumps(data))


EVOLVED = evolved_protocol()
UNKNOWN = avro.protocol.parse(json.dumps({**json.loads(PROTOCOL_JSON), "protocol": "Other"}))

# Each handshake case: the client's protocol, whether it sends it, and its guess of our hash.
HANDSHAKES = {
    "BOTH": dict(protocol=EchoProtocol),
    "BOTH, protocol sent": dict(protocol=EVOLVED, send_protocol=True),
    "BOTH, known evolved client": dict(protocol=EVOLVED),
    "CLIENT": dict(protocol=EchoProtocol, server_hash=b"\x07" * 16),
    "CLIENT, protocol sent": dict(protocol=EVOLVED, send_protocol=True, server_hash=b"\x07" * 16),
    "NONE": dict(protocol=UNKNOWN),
}

queries = st.one_of(st.text(max_size=50), st.text(min_size=1000, max_size=20_000))

# One of each, kept across examples, so that their caches fill up as a real server's do.
FAST = server.EchoResponder()
PLAIN = PlainEchoResponder()


def call(handshake: dict, message: str, query: str) -> bytes:
    protocol = handshake["protocol"]
    params = {"query": query}
    if protocol is EVOLVED:
        params["shout"] = True
    if message == "":
        params = {}
    return handshake_request(**handshake) + call_request(message, params, protocol)


@pytest.mark.parametrize("case", HANDSHAKES)
@given(message=st.sampled_from(["echo", "split", ""]), query=queries)
def test_responses_are_the_bytes_avro_ipc_gives(case, message, query):
    request = call(HANDSHAKES[case], message, query)
    fast = FAST.respond(request)
    if message == "":  # avro.ipc cannot answer a ping: compare the handshake it would send
        assert fast == PLAIN.respond(call(HANDSHAKES[case], "echo", query))[:len(fast)]
    else:
        assert fast == PLAIN.respond(request)


@pytest.mark.parametrize("case", HANDSHAKES)
@given(query=queries)
def test_http_bodies_are_the_bytes_avro_ipc_frames(case, query):
    body = frame(call(HANDSHAKES[case], "echo", query), frame_size=4096)
    expected = io.BytesIO()
    avro.ipc.FramedWriter(expected).write_framed_message(
        PLAIN.respond(avro.ipc.FramedReader(io.BytesIO(body)).read_framed_message()))
    assert call_app(avrohttp.make_application(FAST), body).body == expected.getvalue()


@given(message=st.binary(max_size=30_000))
def test_frame_writes_what_framed_writer_writes(message):
    expected = io.BytesIO()
    avro.ipc.FramedWriter(expected).write_framed_message(message)
    assert codec.frame(message) == expected.getvalue()


@given(chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=5),
       trailing=st.binary(max_size=10))
def test_unframe_reads_what_framed_reader_reads(chunks, trailing):
    body = b"".join(len(c).to_bytes(4, "big") + c for c in chunks) + bytes(4) + trailing
    assert codec.unframe(body) == avro.ipc.FramedReader(io.BytesIO(body)).read_framed_message()


@given(body=st.binary(max_size=40))
def test_unframe_fails_where_framed_reader_fails(body):
    try:
        expected = avro.ipc.FramedReader(io.BytesIO(body)).read_framed_message()
    except (avro.errors.ConnectionClosedException, struct.error):  # struct: a short length
        with pytest.raises(codec.BadFraming):
            codec.unframe(body)
    else:
        assert codec.unframe(body) == expected


# --- The client ------------------------------------------------------------------------------

# Both the avro.ipc Requestor and ours, each test with avro.ipc's caches to itself.
pytestmark = pytest.mark.usefixtures("fresh_avro_ipc_caches")


@pytest.mark.parametrize("server_protocol", [EchoProtocol, EVOLVED], ids=["same", "newer"])
@given(calls=st.lists(st.tuples(st.sampled_from(["echo", "split"]), queries),
                      min_size=1, max_size=4))
def test_requests_are_the_bytes_avro_ipc_sends(server_protocol, calls):
    """From the first call (a guess, maybe NONE or CLIENT, then a resend) to the last."""
    transceivers = []
    for requestor_class in (avrohttp.requestor.Requestor, PlainRequestor):
        transceiver = LocalTransceiver(AnyResponder(server_protocol))
        transceiver.responder.invoke = lambda message, request: request["query"][::-1]
        requestor = requestor_class(EchoProtocol, transceiver)
        answers = [requestor.request(message, {"query": query}) for message, query in calls]
        assert answers == [query[::-1] for _, query in calls]
        transceivers.append(transceiver)
    fast, plain = transceivers
    assert fast.sent == plain.sent


@pytest.mark.parametrize("datum", [
    {"query": "ok"},
    {"query": 3},             # the wrong type for the field
    {},                       # the field is missing
    {"query": "ok", "x": 1},  # a field the schema does not have
    "query",                  # not a record at all
    None,
])
def test_request_writer_accepts_and_refuses_what_avro_does(datum):
    schema = EchoProtocol.messages["echo"].request

    def avros(datum):
        buffer = io.BytesIO()
        avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buffer))
        return buffer.getvalue()

    def outcome(encode):
        try:
            return encode(datum)
        except avro.errors.AvroTypeException:
            return "refused"

    assert outcome(codec.encoder_for(schema)) == outcome(avros)


@pytest.mark.parametrize("schema, datum", [
    ('"int"', 2**31),     # out of range: write_data alone would write it
    ('"long"', 2**63),
    ('{"type": "string", "logicalType": "uuid"}', "not a uuid"),
])
def test_request_writer_keeps_avros_validation_where_it_matters(schema, datum):
    encode = codec.encoder_for(avro.schema.parse(schema))
    with pytest.raises(avro.errors.AvroTypeException):
        encode(datum)


PRIMITIVES = {
    "null": st.none(), "boolean": st.booleans(), "string": st.text(),
    "bytes": st.binary(), "int": st.integers(-2**31, 2**31 - 1),
    "long": st.integers(-2**63, 2**63 - 1), "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
}


@pytest.mark.parametrize("type_name", PRIMITIVES)
@given(data=st.data())
def test_readers_and_encoders_agree_with_avros(type_name, data):
    record = avro.schema.parse(json.dumps({"type": "record", "name": "R", "fields": [
        {"name": "a", "type": type_name}, {"name": "b", "type": "string"}]}))
    one_field = avro.schema.parse(json.dumps({"type": "record", "name": "One", "fields": [
        {"name": "a", "type": type_name}]}))  # encoded without a join (encoder_for)
    primitive = avro.schema.parse(json.dumps(type_name))
    for schema, datum in [
        (primitive, data.draw(PRIMITIVES[type_name])),
        (record, {"a": data.draw(PRIMITIVES[type_name]), "b": data.draw(st.text())}),
        (one_field, {"a": data.draw(PRIMITIVES[type_name])}),
    ]:
        encoded = io.BytesIO()
        avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(encoded))
        expected = avro.io.DatumReader(schema, schema).read(
            avro.io.BinaryDecoder(io.BytesIO(encoded.getvalue())))
        read = codec.reader_for(schema, schema)
        assert read(codec.Decoder(io.BytesIO(encoded.getvalue()))) == expected
        assert codec.encoder_for(schema)(datum) == encoded.getvalue()


@given(values=st.lists(st.one_of(st.integers(-2**63, 2**63 - 1), st.binary(max_size=200),
                                 st.text(max_size=100))))
def test_encoder_and_decoder_agree_with_avros(values):
    def encode(encoder_class) -> bytes:
        buffer = io.BytesIO()
        encoder = encoder_class(buffer)
        for value in values:
            {int: encoder.write_long, bytes: encoder.write_bytes,
             str: encoder.write_utf8}[type(value)](value)
        return buffer.getvalue()

    encoded = encode(avro.io.BinaryEncoder)
    assert encode(codec.Encoder) == encoded
    decoder = codec.Decoder(io.BytesIO(encoded))
    decoded = [{int: decoder.read_long, bytes: decoder.read_bytes,
                str: decoder.read_utf8}[type(value)]() for value in values]
    assert decoded == values


@pytest.mark.parametrize("read, data", [
    ("read_long", b""), ("read_long", b"\x80"), ("read_long", b"\xff\xff"),
    ("read_long", b"\x80" * 11),
    ("read_utf8", b""), ("read_utf8", b"\x16abc"),  # 11 bytes said, 3 sent
    ("read_utf8", b"\x03"), ("read_utf8", b"\x04\xff\xfe"),  # a negative length; not UTF-8
])
def test_decoder_fails_where_avros_fails(read, data):
    with pytest.raises(Exception) as avros:
        getattr(avro.io.BinaryDecoder(io.BytesIO(data)), read)()
    with pytest.raises(type(avros.value)) as ours:
        getattr(codec.Decoder(io.BytesIO(data)), read)()
    assert str(ours.value) == str(avros.value)


@pytest.mark.parametrize("type_name", PRIMITIVES)
@given(data=st.data())
def test_reader_at_reads_what_reader_for_reads(type_name, data):
    schema = avro.schema.parse(json.dumps(type_name))
    encoded = io.BytesIO()
    avro.io.DatumWriter(schema).write(data.draw(PRIMITIVES[type_name]),
                                      avro.io.BinaryEncoder(encoded))
    before, after = data.draw(st.binary(max_size=8)), data.draw(st.binary(max_size=8))
    body = before + encoded.getvalue() + after
    decoder = codec.Decoder(io.BytesIO(body))
    decoder.reader.seek(len(before))
    expected = codec.reader_for(schema, schema)(decoder)
    assert codec.reader_at_for(schema, schema)(body, len(before)) == expected


@pytest.mark.parametrize("data", [b"", b"\x16abc", b"\x03", b"\x04\xff\xfe", b"\x80"])
def test_reader_at_fails_where_the_decoder_fails(data):
    schema = avro.schema.parse('"string"')
    with pytest.raises(Exception) as decoders:
        codec.reader_for(schema, schema)(codec.Decoder(io.BytesIO(data)))
    with pytest.raises(type(decoders.value)) as ours:
        codec.reader_at_for(schema, schema)(b"xx" + data, 2)
    assert str(ours.value) == str(decoders.value)
