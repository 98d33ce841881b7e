"""What the fuzz tests (test_fuzz.py) send: Hypothesis strategies that build request bodies.

Valid calls in every case of the handshake, odd client protocols, then mutations of them,
bad framings and odd HTTP options.
"""

import hashlib
import json
import struct

import avro.ipc
import avro.protocol
import avro.schema
from hypothesis import strategies as st

import avrohttp.wsgi
import avrohttp.requestor
import avrohttp.responder
from protocol import PROTOCOL_JSON, EchoProtocol
from wire import STRING, call_head, encode, handshake_request


# --- Valid calls, every handshake case ------------------------------------------------------

def protocol_with(**changes) -> avro.protocol.Protocol:
    data = json.loads(PROTOCOL_JSON)
    data.update(changes)
    return avro.protocol.parse(json.dumps(data))


OTHER = protocol_with(types=[{"type": "fixed", "name": "Unused", "size": 1}])
WITH_SHOUT = protocol_with(messages={
    **json.loads(PROTOCOL_JSON)["messages"],
    "shout": {"request": [{"name": "query", "type": "string"}], "response": "string"}})
EVOLVED = protocol_with(messages={
    **json.loads(PROTOCOL_JSON)["messages"],
    "split": {"request": [{"name": "query", "type": "string"},
                          {"name": "loud", "type": "boolean", "default": False}],
              "response": "string"}})
RECURSIVE = protocol_with(  # its `echo` takes a linked list: data can nest without end
    types=[{"type": "record", "name": "Node",
            "fields": [{"name": "next", "type": ["null", "Node"]}]}],
    messages={"echo": {"request": [{"name": "query", "type": "string"},
                                   {"name": "tail", "type": ["null", "Node"]}],
                       "response": "string"}})
NO_MESSAGES = avro.protocol.parse('{"protocol": "Empty", "messages": {}}')  # valid, and odd
OVERSIZED_TEXT = str(EchoProtocol) + " " * avrohttp.responder.MAX_PROTOCOL_CHARS

BYTES = avro.schema.parse('"bytes"')  # to put bytes that are not UTF-8 where a string goes

hashes = st.binary(min_size=16, max_size=16)


@st.composite
def protocol_texts(draw) -> str:
    """A clientProtocol: valid, almost valid, JSON but not a protocol, or not JSON at all."""
    kind = draw(st.sampled_from(["valid", "edited", "json", "text", "nested", "schema"]))
    if kind == "valid":
        return str(draw(st.sampled_from([EchoProtocol, OTHER, WITH_SHOUT, EVOLVED, NO_MESSAGES])))
    if kind == "edited":  # a few characters of a valid protocol changed
        text = str(draw(st.sampled_from([EchoProtocol, OTHER, EVOLVED])))
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(text)))
            cut = draw(st.integers(0, 3))
            text = text[:at] + draw(st.text(max_size=3)) + text[at + cut:]
        return text
    if kind == "json":
        values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(["protocol", "namespace", "types", "messages",
                                               "request", "response", "errors", "name",
                                               "type", "fields", "symbols", "items",
                                               "values", "size", "default", "one-way"])
                              | st.text(max_size=5), inner, max_size=4),
            max_leaves=20)
        return json.dumps(draw(values))
    if kind == "nested":  # deep nesting: recursion limits in the parsers
        depth = draw(st.integers(1, 5000))
        opener = draw(st.sampled_from(["[", '{"a":', '{"protocol":"P","types":[',
                                       '{"type":"array","items":']))
        return opener * depth
    if kind == "schema":  # a protocol whose `echo` request has another parameter type
        param = draw(st.sampled_from([
            "bytes", "int", "null", ["null", "string"], ["string", "int"], "Nope",
            {"type": "array", "items": "string"}, {"type": "map", "values": "string"},
            {"type": "enum", "name": "E", "symbols": ["A", "B"]},
            {"type": "fixed", "name": "F", "size": 3},
            {"type": "record", "name": "R", "fields": [{"name": "query", "type": "string"}]},
            {"type": "string", "logicalType": "uuid"}]))
        data = json.loads(PROTOCOL_JSON)
        data["messages"]["echo"]["request"] = [{"name": "query", "type": param}]
        return json.dumps(data)
    return draw(st.text(max_size=200))


@st.composite
def handshakes(draw):
    """(a handshake request, the protocol the client speaks): every case of the handshake."""
    case = draw(st.sampled_from(["known", "known and sent", "other and sent", "other unsent",
                                 "wrong server hash", "unknown hash", "text under wrong hash",
                                 "evolved", "shout", "recursive", "odd protocol",
                                 "oversized protocol"]))
    if case == "known":
        return handshake_request(), EchoProtocol
    if case == "known and sent":
        return handshake_request(send_protocol=True), EchoProtocol
    if case == "other and sent":
        return handshake_request(OTHER, send_protocol=True), OTHER
    if case == "other unsent":  # NONE: no call response
        return handshake_request(OTHER), OTHER
    if case == "wrong server hash":  # CLIENT
        return handshake_request(server_hash=draw(hashes)), EchoProtocol
    if case == "unknown hash":
        return handshake_request(client_hash=draw(hashes)), EchoProtocol
    if case == "text under wrong hash":
        return handshake_request(OTHER, send_protocol=True, client_hash=draw(hashes)), OTHER
    if case == "evolved":
        return handshake_request(EVOLVED, send_protocol=True), EVOLVED
    if case == "shout":
        return handshake_request(WITH_SHOUT, send_protocol=True), WITH_SHOUT
    if case == "recursive":
        return handshake_request(RECURSIVE, send_protocol=True), RECURSIVE
    if case == "oversized protocol":
        return handshake_request(protocol_text=OVERSIZED_TEXT,
                                 client_hash=hashlib.md5(OVERSIZED_TEXT.encode()).digest()), None
    text = draw(protocol_texts())
    client_hash = draw(st.sampled_from([hashlib.md5(text.encode()).digest(), b"\x07" * 16]))
    return handshake_request(protocol_text=text, client_hash=client_hash), None


@st.composite
def valid_calls(draw) -> bytes:
    """An unframed call request: a handshake, then a call (or a ping) with its parameters."""
    handshake, protocol = draw(handshakes())
    messages = protocol.messages if protocol else {"echo": None}
    if draw(st.integers(0, 3)):  # usually, a message of the client's protocol
        name = draw(st.sampled_from(sorted(messages)))
    else:  # or a ping, one the server does not have, or any name
        name = draw(st.sampled_from(["echo", "split", "", "shout"]) | st.text(max_size=10))
    query = draw(st.text(max_size=30))
    message = messages.get(name) if protocol else None
    if name == "":
        params = draw(st.sampled_from([b"", encode(STRING, query)]))  # a ping's are ignored
    elif message is not None and protocol is EVOLVED and name == "split":
        params = encode(message.request, {"query": query, "loud": draw(st.booleans())})
    elif message is not None and protocol is RECURSIVE:  # the list, `depth` nodes long
        depth = draw(st.sampled_from([0, 1, 5000]) | st.integers(0, 5000))
        params = encode(STRING, query) + b"\x02" * depth + b"\x00"
    elif message is not None:
        params = encode(message.request, {"query": query})
    else:
        params = encode(STRING, query)
    if draw(st.integers(0, 9)) == 0:  # a string that is not UTF-8, where the query goes
        params = encode(BYTES, draw(st.binary(max_size=8)))
    if draw(st.integers(0, 9)) == 0:  # a message name that is not UTF-8
        return handshake + encode(avro.ipc.META_SCHEMA, {}) + encode(BYTES, draw(
            st.binary(max_size=8))) + params
    return handshake + call_head(name) + params


# --- Mutations ------------------------------------------------------------------------------

def varint(n: int) -> bytes:
    """Avro's zig-zag varint, for any Python int (so also ones too long for Avro)."""
    n = n * 2 if n >= 0 else -n * 2 - 1
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out) + bytes([n])


# Bytes that mean trouble where a length, a count, a union index or a string is read.
TOKENS = [
    b"\x00", b"\x7f", b"\x80", b"\xff",
    varint(-1), varint(-2), varint(-(2 ** 63)), varint(2 ** 63 - 1),
    varint(2 ** 31), varint(2 ** 40), varint(avrohttp.wsgi.MAX_BODY_BYTES + 1),
    b"\xff" * 11, b"\x80" * 10 + b"\x00", b"\xff" * 9 + b"\x7f",  # overlong varints
    b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",  # not UTF-8
    b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00",
]


@st.composite
def mutated(draw, data: bytes, max_mutations: int = 4) -> bytes:
    """`data` with a few bytes flipped, replaced, inserted, deleted or duplicated, or cut."""
    data = bytearray(data)
    for _ in range(draw(st.integers(0, max_mutations))):
        kind = draw(st.sampled_from(["flip", "replace", "insert", "insert token",
                                     "overwrite token", "delete", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(data)))
        end = draw(st.integers(at, min(len(data), at + 32)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "overwrite token":
            token = draw(st.sampled_from(TOKENS))
            data[at:at + len(token)] = token
        elif kind == "delete":
            del data[at:end]
        elif kind == "duplicate":
            data[at:at] = data[at:end]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


HUGE_LENGTHS = [0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, avrohttp.wsgi.MAX_BODY_BYTES + 1]


@st.composite
def framed(draw, message: bytes) -> bytes:
    """`message` cut into frames, maybe with wrong lengths, lost, repeated or extra frames."""
    size = draw(st.sampled_from([8192, len(message) or 1]) | st.integers(1, 64))
    chunks = [message[i:i + size] for i in range(0, len(message), size)]
    lengths = [len(chunk) for chunk in chunks]
    for _ in range(draw(st.integers(0, 2))):
        if not chunks:
            break
        i = draw(st.integers(0, len(chunks) - 1))
        kind = draw(st.sampled_from(["wrong length", "huge length", "drop", "repeat",
                                     "empty frame"]))
        if kind == "wrong length":
            lengths[i] = min(max(0, lengths[i] + draw(st.integers(-8, 8))), 0xFFFFFFFF)
        elif kind == "huge length":
            lengths[i] = draw(st.sampled_from(HUGE_LENGTHS))
        elif kind == "drop":
            del chunks[i], lengths[i]
        elif kind == "repeat":
            chunks.insert(i, chunks[i])
            lengths.insert(i, lengths[i])
        elif kind == "empty frame":  # a zero length mid-message ends it early
            chunks.insert(i, b"")
            lengths.insert(i, 0)
    body = b"".join(struct.pack("!I", n) + chunk for n, chunk in zip(lengths, chunks))
    if draw(st.integers(0, 3)) > 0:  # usually, the end-of-message frame
        body += b"\x00\x00\x00\x00"
    if draw(st.integers(0, 9)) == 0:
        body += draw(st.binary(min_size=1, max_size=16))  # bytes after the end
    return body


# Content types the app accepts, and some it must refuse (with 415, not a crash).
CONTENT_TYPES = [None, "", "avro/binary", "AVRO/Binary", "avro/binary; charset=binary",
                 " avro/binary ;", "avro/binary;;", "text/plain", "avro/json", ";", "\x00",
                 "avro/binary\r\nX: y", "ÿ/ÿ"]
http_options = st.fixed_dictionaries({}, optional={
    "chunked": st.booleans(),
    "content_type": st.sampled_from(CONTENT_TYPES) | st.text(max_size=20),
})
