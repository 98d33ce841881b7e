"""Hypothesis strategies for whole Avro protocols, and calls with data for them.

`examples()` draws an Example: a protocol's JSON text, with named types (records, enums,
fixed), anonymous arrays, maps and unions nested in them, maybe a recursive record, declared
error records and one-way messages; and a list of Calls, each with its request and what the
server answers: a response, a declared error (raised as avrohttp.DeclaredError or as avro.ipc
users raise it, AvroRemoteException(datum)), or a plain string (a system error).

Longs stay within +/-(2^52 - 4): avsc 5.7.9 loses precision beyond that (its Tap.writeLong
flips the sign of longs below -2^52), and every example also goes through avsc.
"""

import io
import json
from typing import List, NamedTuple, Optional

import avro.io
import avro.protocol
import avro.schema
from hypothesis import strategies as st

import avrohttp

MAX_AVSC_LONG = 2**52 - 4
NUMERIC = ("int", "long", "float", "double")
PRIMITIVES = ("null", "boolean", "string", "bytes") + NUMERIC


class Call(NamedTuple):
    message: str
    request: dict
    outcome: str  # "response", "declared" (raised as DeclaredError), "remote" (as
    # AvroRemoteException(datum)), or "string" (AvroRemoteException("words"))
    datum: object  # the response, the error's datum, or the words
    error_name: Optional[str] = None  # the declared error's type


class Example(NamedTuple):
    text: str
    calls: List[Call]

    @property
    def protocol(self) -> avro.protocol.Protocol:
        return avrohttp.parse_protocol(self.text)


class _Drawer:
    """Draws one protocol's types, then data for them, with `draw` from st.composite."""

    def __init__(self, draw) -> None:
        self.draw = draw
        self.named = {}  # name: definition, in the order defined (no forward references)
        self.types = []
        self.recursive = None

    def name(self, prefix: str) -> str:
        return f"{prefix}{len(self.named)}"

    def schema(self, depth: int):
        """A type for a field, an item, a value or a response."""
        kinds = list(PRIMITIVES)
        if depth > 0:
            kinds += ["array", "map", "union"]
        kinds += [name for name, d in self.named.items() if d["type"] != "error"]
        kind = self.draw(st.sampled_from(kinds))
        if kind == "array":
            return {"type": "array", "items": self.schema(depth - 1)}
        if kind == "map":
            return {"type": "map", "values": self.schema(depth - 1)}
        if kind == "union":
            return self.union(depth - 1)
        return kind

    def union(self, depth: int) -> list:
        # Branches that no datum can fit twice: avro writes a datum in the first branch it
        # fits, so ["float", "double"] would round a double. One numeric type at most, and
        # distinct kinds otherwise. Also one record or map at most: avro.io chooses a union's
        # branch for a dict by its keys alone (RecordSchema.validate), then fails on its
        # fields, so it cannot write {} as the second of two records (AvroTypeException);
        # avro.ipc and avrohttp, which write with avro.io, share that limit.
        branches, kinds = [], set()
        for _ in range(self.draw(st.integers(1, 4))):
            branch = self.schema(depth)
            if isinstance(branch, list):  # no union directly in a union
                continue
            kind = branch if isinstance(branch, str) else branch["type"]
            kind = "number" if kind in NUMERIC else kind
            if kind == "map" or self.named.get(kind, {}).get("type") == "record":
                kind = "record or map"
            if kind in kinds:
                continue
            kinds.add(kind)
            branches.append(branch)
        return branches or ["null"]

    def define(self, kind: str) -> str:
        name = self.name({"record": "R", "enum": "E", "fixed": "F"}[kind])
        if kind == "record":
            definition = {"type": "record", "name": name, "fields": self.fields(2)}
        elif kind == "enum":
            size = self.draw(st.integers(1, 4))
            definition = {"type": "enum", "name": name, "symbols": [f"S{i}" for i in range(size)]}
        else:
            definition = {"type": "fixed", "name": name, "size": self.draw(st.integers(1, 16))}
        if self.draw(st.booleans()):
            definition["doc"] = f"The type {name}."
        self.named[name] = definition
        self.types.append(definition)
        return name

    def define_recursive(self) -> str:
        """A record that refers to itself: a linked list, or a tree."""
        name = self.name("Node")
        if self.draw(st.booleans()):
            link = {"name": "next", "type": ["null", name]}
        else:
            link = {"name": "children", "type": {"type": "array", "items": name}}
        definition = {"type": "record", "name": name, "fields": [
            {"name": "value", "type": self.schema(1)}, link]}
        self.named[name] = definition
        self.types.append(definition)
        self.recursive = name
        return name

    def define_error(self, index: int) -> str:
        # The first field's name is the error's own: a datum of one error record never fits
        # another, so the branch a datum goes in is never in doubt.
        name = self.name("Oops")
        definition = {"type": "error", "name": name, "fields": [
            {"name": f"oops{index}", "type": "string"}, *self.fields(1)]}
        self.named[name] = definition
        self.types.append(definition)
        return name

    def fields(self, depth: int) -> list:
        count = self.draw(st.integers(0, 3))
        return [{"name": f"f{i}", "type": self.schema(depth)} for i in range(count)]

    # --- data ---

    def datum(self, schema, depth: int = 3):
        draw = self.draw
        if isinstance(schema, list):
            branches = schema
            if depth <= 0 and "null" in branches:
                return None
            if depth <= 0:  # keep a recursive type's data finite
                branches = [b for b in schema if not self.reaches_recursive(b)] or schema
            return self.datum(draw(st.sampled_from(branches)), depth - 1)
        if isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind == "null":
            return None
        if kind == "boolean":
            return draw(st.booleans())
        if kind == "int":
            return draw(st.integers(-2**31, 2**31 - 1))
        if kind == "long":
            return draw(st.integers(-MAX_AVSC_LONG, MAX_AVSC_LONG))
        if kind == "float":
            return draw(st.floats(width=32, allow_nan=False))
        if kind == "double":
            return draw(st.floats(allow_nan=False))
        if kind == "string":
            return draw(st.text(max_size=10))
        if kind == "bytes":
            return draw(st.binary(max_size=10))
        if kind == "enum":
            return draw(st.sampled_from(schema["symbols"]))
        if kind == "fixed":
            return draw(st.binary(min_size=schema["size"], max_size=schema["size"]))
        if kind == "array":
            size = draw(st.integers(0, 3 if depth > 0 else 0))
            return [self.datum(schema["items"], depth - 1) for _ in range(size)]
        if kind == "map":
            keys = draw(st.lists(st.text(max_size=5), max_size=3 if depth > 0 else 0,
                                 unique=True))
            return {key: self.datum(schema["values"], depth - 1) for key in keys}
        return {field["name"]: self.datum(field["type"], depth - 1)
                for field in schema["fields"]}  # a record or an error

    def reaches_recursive(self, schema) -> bool:
        if self.recursive is None:
            return False
        return self.recursive in json.dumps(schema)


@st.composite
def examples(draw, max_calls: int = 6) -> Example:
    """A protocol of generated types and messages, and calls of its messages."""
    types = _Drawer(draw)
    for _ in range(draw(st.integers(0, 3))):
        types.define(draw(st.sampled_from(["record", "enum", "fixed"])))
    if draw(st.booleans()):
        types.define_recursive()
    errors = [types.define_error(i) for i in range(draw(st.sampled_from([0, 1, 1, 2])))]
    messages = {}
    for i in range(draw(st.integers(1, 3))):
        message = {"request": types.fields(2), "response": types.schema(2)}
        declared = draw(st.lists(st.sampled_from(errors), min_size=1, unique=True)
                        ) if errors and draw(st.integers(0, 3)) else []
        if declared:
            message["errors"] = declared
        if draw(st.booleans()):
            message["doc"] = f"Message m{i}."
        messages[f"m{i}"] = message
    if draw(st.booleans()):
        messages["tell"] = {"doc": "One-way: no answer.", "request": types.fields(2),
                            "response": "null", "one-way": True}
    protocol = {"protocol": "Generated", "namespace": "test.generated", "types": types.types,
                "messages": messages}
    if draw(st.booleans()):
        protocol["doc"] = "A generated protocol."
    text = json.dumps(protocol, indent=draw(st.sampled_from([None, 2])))

    calls = []
    for _ in range(draw(st.integers(1, max_calls))):
        name = draw(st.sampled_from(sorted(messages)))
        message = messages[name]
        request = {field["name"]: types.datum(field["type"]) for field in message["request"]}
        outcomes = ["response"]
        if not message.get("one-way"):
            outcomes.append("string")
            if message.get("errors"):
                outcomes += ["declared", "remote"]
        outcome = draw(st.sampled_from(outcomes))
        if outcome == "response":
            calls.append(Call(name, request, outcome, types.datum(message["response"])))
        elif outcome == "string":
            calls.append(Call(name, request, outcome, draw(st.text(max_size=20))))
        else:
            error = draw(st.sampled_from(message["errors"]))
            calls.append(Call(name, request, outcome, types.datum(error), error))
    return Example(text, calls)


def round_trip(schema: avro.schema.Schema, datum: object) -> object:
    """The datum as avro writes it and reads it back: what the other side gets."""
    buffer = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buffer))
    buffer.seek(0)
    return avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(buffer))


def encode(schema: avro.schema.Schema, datum: object) -> bytes:
    buffer = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buffer))
    return buffer.getvalue()


def decode(schema: avro.schema.Schema, data: bytes) -> object:
    return avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data)))
