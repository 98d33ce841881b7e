"""Helpers that build and read Avro HTTP bodies byte by byte, the way a client would."""

import io
from typing import NamedTuple, Optional

import avro.io
import avro.ipc
import avro.protocol
import avro.schema

from protocol import EchoProtocol


def encode(schema, datum) -> bytes:
    buffer = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buffer))
    return buffer.getvalue()


def frame(message: bytes, frame_size: int = 8192) -> bytes:
    out = io.BytesIO()
    writer = avro.ipc.FramedWriter(out)
    frames = [message[i:i + frame_size] for i in range(0, len(message), frame_size)]
    for chunk in frames:
        writer.write_buffer(chunk)
    writer.write_buffer_length(0)
    return out.getvalue()


def handshake_request(protocol=EchoProtocol, server_hash: Optional[bytes] = None,
                      send_protocol: bool = False, protocol_text: Optional[str] = None,
                      client_hash: Optional[bytes] = None) -> bytes:
    request = {"clientHash": client_hash or protocol.md5,
               "serverHash": server_hash or EchoProtocol.md5}
    if send_protocol or protocol_text is not None:
        request["clientProtocol"] = protocol_text if protocol_text is not None else str(protocol)
    return encode(avro.ipc.HANDSHAKE_REQUEST_SCHEMA, request)


STRING = avro.schema.parse('"string"')


def call_head(message: str, meta: Optional[dict] = None) -> bytes:
    """The start of a call request: its metadata (empty by default), then the message name."""
    return encode(avro.ipc.META_SCHEMA, meta or {}) + encode(STRING, message)


def call_request(message: str, params: dict, protocol=EchoProtocol,
                 meta: Optional[dict] = None) -> bytes:
    if message == "":  # a ping has no parameters
        return call_head("", meta)
    return call_head(message, meta) + encode(protocol.messages[message].request, params)


def call_body(message: str = "echo", query: str = "Hello World", meta: Optional[dict] = None,
              **handshake) -> bytes:
    """A framed HTTP body: handshake request, then a call of `message` with `query` (and the
    call metadata `meta`: avrohttp's clients send their timeout, timeout_meta())."""
    protocol = handshake.get("protocol", EchoProtocol)
    params = {"query": query} if message else {}
    return frame(handshake_request(**handshake)
                 + call_request(message, params, protocol, meta))


def timeout_meta(seconds: float) -> dict:
    """The call metadata with which avrohttp's clients send their timeout."""
    return {"timeout-ms": b"%d" % (seconds * 1000)}


class Answer(NamedTuple):
    handshake: dict
    has_call_response: bool
    is_error: Optional[bool] = None
    datum: object = None


def read_answer(body: bytes, message: str = "echo", protocol=EchoProtocol) -> Answer:
    """Decode a framed response body, with the server's response schemas for `message`."""
    payload = avro.ipc.FramedReader(io.BytesIO(body)).read_framed_message()
    stream = io.BytesIO(payload)
    decoder = avro.io.BinaryDecoder(stream)
    handshake = avro.io.DatumReader(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA).read(decoder)
    if stream.tell() == len(payload):
        return Answer(handshake, False)
    avro.io.DatumReader(avro.ipc.META_SCHEMA).read(decoder)
    is_error = decoder.read_boolean()
    if is_error:
        datum = avro.io.DatumReader(avro.ipc.SYSTEM_ERROR_SCHEMA).read(decoder)
    else:
        datum = avro.io.DatumReader(protocol.messages[message].response).read(decoder)
    assert stream.tell() == len(payload), "trailing bytes after the call response"
    return Answer(handshake, True, is_error, datum)
