"""avrohttp.arguments: parameters_error() names the first problem with a call's parameters,
in one line, for every kind of schema; and finds one exactly when avro.io cannot write them.

Calls through Client and AsyncClient, which raise BadArguments once the requestor asks
parameters_error() why its encoding failed, are tested with the clients.
"""

import datetime
import decimal
import io
import json
import pickle
import uuid

import avro.errors
import avro.io
import avro.schema
import pytest
from hypothesis import given, settings, strategies as st

import avrohttp
from avrohttp import codec
from avrohttp.arguments import BadArguments, parameters_error, raise_bad_arguments
from protocols import examples

PROTOCOL = avrohttp.parse_protocol(json.dumps({
    "protocol": "Kinds", "namespace": "test.arguments",
    "types": [
        {"type": "enum", "name": "Size", "symbols": ["SMALL", "LARGE"]},
        {"type": "fixed", "name": "Id", "size": 4},
        {"type": "record", "name": "Entry", "fields": [
            {"name": "key", "type": "string"}, {"name": "value", "type": "int"}]},
        {"type": "record", "name": "Other", "fields": [{"name": "value", "type": "string"}]},
    ],
    "messages": {
        "kinds": {"request": [
            {"name": "n", "type": "int"}, {"name": "big", "type": "long"},
            {"name": "f", "type": "float"}, {"name": "d", "type": "double"},
            {"name": "yes", "type": "boolean"}, {"name": "text", "type": "string"},
            {"name": "data", "type": "bytes"}, {"name": "nothing", "type": "null"},
        ], "response": "null"},
        "named": {"request": [
            {"name": "size", "type": "Size"}, {"name": "id", "type": "Id"},
            {"name": "entry", "type": "Entry"},
        ], "response": "null"},
        "collections": {"request": [
            {"name": "sizes", "type": {"type": "array", "items": "int"}},
            {"name": "quantities", "type": {"type": "map", "values": "int"}},
            {"name": "entries", "type": {"type": "array", "items": "Entry"}},
        ], "response": "null"},
        "unions": {"request": [
            {"name": "note", "type": ["null", "string"]},
            {"name": "entry", "type": ["null", "Entry"]},
            {"name": "either", "type": ["Entry", "Other"]},
        ], "response": "null"},
        "defaults": {"request": [
            {"name": "count", "type": "int", "default": 1},
            {"name": "maybe", "type": ["null", "int"], "default": None},
        ], "response": "null"},
        "logical": {"request": [
            {"name": "day", "type": {"type": "int", "logicalType": "date"}},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "price", "type": {"type": "bytes", "logicalType": "decimal",
                                       "precision": 6, "scale": 2}},
            {"name": "key", "type": {"type": "string", "logicalType": "uuid"}},
        ], "response": "null"},
        "none": {"request": [], "response": "null"},
    },
}))
ENTRY = {"key": "k", "value": 1}
GOOD = {
    "kinds": {"n": 1, "big": 2**40, "f": 1.5, "d": 0.25, "yes": True, "text": "hé",
              "data": b"\x00\xff", "nothing": None},
    "named": {"size": "SMALL", "id": b"abcd", "entry": ENTRY},
    "collections": {"sizes": [1, 2, 3], "quantities": {"boot": 2}, "entries": [ENTRY]},
    "unions": {"note": "hi", "entry": ENTRY, "either": ENTRY},
    "defaults": {"count": 3},
    "logical": {"day": datetime.date(2026, 1, 2),
                "at": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc),
                "price": decimal.Decimal("12.34"), "key": str(uuid.UUID(int=7))},
    "none": {},
}


def avro_writes(schema: avro.schema.Schema, datum: object) -> bool:
    try:
        avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(io.BytesIO()))
    except Exception:
        return False
    return True


def codec_writes(schema: avro.schema.Schema, datum: object) -> bool:
    """Whether the requestor's encoder writes the datum."""
    try:
        codec.encoder_for(schema)(datum)
    except Exception:
        return False
    return True


def error(message: str, **changes) -> str:
    """The text of parameters_error for the message's good parameters with these changes
    (a change to `...` leaves the parameter out)."""
    parameters = {**GOOD[message], **changes}
    parameters = {name: value for name, value in parameters.items() if value is not ...}
    found = parameters_error(PROTOCOL.messages[message], parameters)
    assert found is not None
    assert not avro_writes(PROTOCOL.messages[message].request, parameters)
    assert not codec_writes(PROTOCOL.messages[message].request, parameters)
    return str(found)


@pytest.mark.parametrize("message", sorted(GOOD))
def test_parameters_that_fit_have_no_error(message):
    assert parameters_error(PROTOCOL.messages[message], GOOD[message]) is None
    assert avro_writes(PROTOCOL.messages[message].request, GOOD[message])


@pytest.mark.parametrize("message, changes", [
    ("kinds", {"f": 3}),                  # a float takes an int, as avro.io does
    ("kinds", {"d": float("inf")}),
    ("kinds", {"f": float("nan")}),
    ("kinds", {"n": True}),               # bool is an int to avro.io
    ("kinds", {"n": -2**31, "big": 2**63 - 1}),
    ("kinds", {"nothing": ...}),          # absent: written as None, which null takes
    ("unions", {"note": None, "entry": None}),
    ("unions", {"note": ..., "entry": ...}),
    ("defaults", {"maybe": 4}),
    ("collections", {"sizes": [], "quantities": {}}),
])
def test_what_avro_takes_has_no_error_either(message, changes):
    parameters = {**GOOD[message], **changes}
    parameters = {name: value for name, value in parameters.items() if value is not ...}
    assert parameters_error(PROTOCOL.messages[message], parameters) is None
    assert avro_writes(PROTOCOL.messages[message].request, parameters)


@pytest.mark.parametrize("message, changes, text", [
    # Primitives, and the ranges of ints and longs.
    ("kinds", {"n": "5"}, "kinds: n: expected an int, got '5' (str)"),
    ("kinds", {"n": 2**31},
     "kinds: n: 2147483648 is out of the range of an int (-2147483648 to 2147483647)"),
    ("kinds", {"n": -2**31 - 1},
     "kinds: n: -2147483649 is out of the range of an int (-2147483648 to 2147483647)"),
    ("kinds", {"big": 2**63}, "kinds: big: 9223372036854775808 is out of the range of a long "
                              "(-9223372036854775808 to 9223372036854775807)"),
    ("kinds", {"n": 1.0}, "kinds: n: expected an int, got 1.0 (float)"),
    ("kinds", {"f": "1.5"}, "kinds: f: expected a float (int or float), got '1.5' (str)"),
    ("kinds", {"f": 1e39}, "kinds: f: 1e+39 is out of the range of a float"),
    ("kinds", {"d": 10**400},
     f"kinds: d: 1{'0' * 56}... is out of the range of a double"),
    ("kinds", {"yes": 1}, "kinds: yes: expected a boolean (bool), got 1 (int)"),
    ("kinds", {"nothing": 0}, "kinds: nothing: expected null (None), got 0 (int)"),
    # Bytes and strings.
    ("kinds", {"text": b"hi"}, "kinds: text: expected a string (str), got b'hi' (bytes)"),
    ("kinds", {"data": "hi"}, "kinds: data: expected bytes, got 'hi' (str)"),
    ("kinds", {"data": bytearray(b"hi")},
     "kinds: data: expected bytes, got bytearray(b'hi') (bytearray)"),
    ("kinds", {"text": "a\ud800"}, "kinds: text: 'a\\ud800' (str) holds a lone surrogate "
                                   "(\\ud800, at 1), which UTF-8 cannot encode"),
    # Named types: fixed, enum, records.
    ("named", {"id": b"abc"}, "named: id: expected fixed test.arguments.Id (4 bytes), got 3 bytes"),
    ("named", {"id": "abcd"},
     "named: id: expected fixed test.arguments.Id (4 bytes), got 'abcd' (str)"),
    ("named", {"size": "MEDIUM"},
     "named: size: 'MEDIUM' is not a symbol of the enum Size (SMALL, LARGE)"),
    ("named", {"size": b"SMALL"}, "named: size: expected enum test.arguments.Size (one of "
                                  "SMALL, LARGE), got b'SMALL' (bytes)"),
    ("named", {"entry": {"key": "k", "value": "1"}},
     "named: entry.value: expected an int, got '1' (str)"),
    ("named", {"entry": {"key": "k"}}, "named: entry.value: missing: give an int"),
    ("named", {"entry": {**ENTRY, "colour": "red"}}, 'named: entry: record '
     'test.arguments.Entry has no field "colour" (its fields: key, value)'),
    ("named", {"entry": [("key", "k")]}, "named: entry: expected record test.arguments.Entry "
                                         "(dict), got [('key', 'k')] (list)"),
    # Arrays and maps, and the path inside them.
    ("collections", {"sizes": [1, 2, "3"]},
     "collections: sizes[2]: expected an int, got '3' (str)"),
    ("collections", {"sizes": (1, 2)},
     "collections: sizes: expected an array of int (list), got (1, 2) (tuple)"),
    ("collections", {"quantities": {"shoe": 1, "boot": "2"}},
     'collections: quantities["boot"]: expected an int, got \'2\' (str)'),
    ("collections", {"quantities": {"boot": 2**40}}, 'collections: quantities["boot"]: '
     "1099511627776 is out of the range of an int (-2147483648 to 2147483647)"),
    ("collections", {"quantities": {1: 2}}, "collections: quantities: expected a map of int "
                                            "(dict with str keys), got the key 1 (int)"),
    ("collections", {"quantities": {"\udc80": 2}}, "collections: quantities: the key '\\udc80' "
     "(str) holds a lone surrogate (\\udc80, at 0), which UTF-8 cannot encode"),
    ("collections", {"entries": [ENTRY, {"key": 5, "value": 1}]},
     "collections: entries[1].key: expected a string (str), got 5 (int)"),
    # Unions, null among them.
    ("unions", {"note": 5}, "unions: note: expected one of null, string, got 5 (int)"),
    ("unions", {"entry": {"key": "k", "value": None}},
     "unions: entry.value: expected an int, got None"),
    ("unions", {"entry": "k"}, "unions: entry: expected one of null, test.arguments.Entry, "
                               "got 'k' (str)"),
    # A dict for the second record is taken as the first, as avro.io takes it.
    ("unions", {"either": {"value": "v"}}, "unions: either.key: missing: give a string (str) "
     "(avro.io writes it as test.arguments.Entry, the first branch of the union that takes "
     "a dict)"),
    # Missing and unknown parameters, named with the message's parameters.
    ("named", {"entry": ...}, "named: entry: missing: give record test.arguments.Entry "
                              "(dict); the message's parameters: size, id, entry"),
    ("defaults", {"count": ...}, "defaults: count: missing: give an int; avro.io does not "
                                 "fill in defaults; the message's parameters: count, maybe"),
    ("named", {"colour": "red"}, 'named: the message has no parameter "colour" (its '
                                 "parameters: size, id, entry)"),
    ("none", {"x": 1}, 'none: the message has no parameter "x" (its parameters: none)'),
    # Logical types, as avro.io gives them.
    ("logical", {"day": 20000}, "logical: day: expected int of logical type date "
                                "(a datetime.date), got 20000 (int)"),
    ("logical", {"day": datetime.datetime(2026, 1, 2)}, "logical: day: expected int of "
     "logical type date (a datetime.date), got datetime.datetime(2026, 1, 2, 0, 0) "
     "(datetime), not a date alone"),
    ("logical", {"at": datetime.datetime(2026, 1, 2)}, "logical: at: expected long of logical "
     "type timestamp-millis (a datetime.datetime with a tzinfo), got "
     "datetime.datetime(2026, 1, 2, 0, 0) (datetime)"),
    ("logical", {"price": decimal.Decimal("1.234")},
     "logical: price: Decimal('1.234') (Decimal) has more decimal places than the scale, 2"),
    ("logical", {"price": decimal.Decimal("NaN")},
     "logical: price: Decimal('NaN') (Decimal) is not a finite number"),
    ("logical", {"key": uuid.UUID(int=7)}, "logical: key: expected string of logical type "
     "uuid (a str that holds a UUID), got UUID('00000000-0000-0000-0000-000000000007') (UUID)"),
])
def test_each_problem_is_named_in_one_line(message, changes, text):
    assert error(message, **changes) == text


def test_an_unknown_parameter_comes_before_the_one_it_leaves_missing():
    assert error("named", entry=..., entyr=ENTRY) == (
        'named: the message has no parameter "entyr" (its parameters: size, id, entry)')


def test_of_several_problems_the_first_in_the_messages_order_depth_first():
    assert error("kinds", d="x", n="y") == "kinds: n: expected an int, got 'y' (str)"
    # Depth first: avro.io.validate, breadth first, would find `quantities` first.
    assert error("collections", sizes=[1, [2]], quantities=None) == (
        "collections: sizes[1]: expected an int, got [2] (list)")
    # What validate refuses comes before what only writing finds.
    assert error("kinds", f=1e39, text=5) == (
        "kinds: text: expected a string (str), got 5 (int)")


def test_parameters_that_are_not_a_dict():
    found = parameters_error(PROTOCOL.messages["kinds"], ["n", 1])
    assert str(found) == "kinds: expected the parameters as a dict, by name, got ['n', 1] (list)"
    assert found.path == ""


def test_a_long_value_is_cut_short():
    text = error("kinds", text=list(range(100)))
    assert text.startswith("kinds: text: expected a string (str), got [0, 1, 2, ")
    assert text.endswith("... (list)")
    assert len(text) < 120


def test_bad_arguments_is_a_type_error_with_its_parts():
    found = parameters_error(PROTOCOL.messages["named"],
                             {**GOOD["named"], "entry": {"key": "k", "value": "1"}})
    assert isinstance(found, TypeError)
    assert isinstance(found, avrohttp.arguments.BadArguments)
    assert (found.message, found.path) == ("named", "entry.value")
    assert found.problem == "expected an int, got '1' (str)"
    copy = pickle.loads(pickle.dumps(found))
    assert (type(copy), str(copy), copy.path) == (BadArguments, str(found), "entry.value")


def test_raise_bad_arguments_raises_from_the_encoders_error():
    message = PROTOCOL.messages["kinds"]
    parameters = {**GOOD["kinds"], "text": 5}
    with pytest.raises(avro.errors.AvroTypeException) as refused:
        codec.encoder_for(message.request)(parameters)
    with pytest.raises(BadArguments) as raised:
        raise_bad_arguments(message, parameters, refused.value)
    assert raised.value.__cause__ is refused.value
    assert str(raised.value) == "kinds: text: expected a string (str), got 5 (int)"


def test_raise_bad_arguments_leaves_an_error_that_is_not_about_the_parameters():
    raise_bad_arguments(PROTOCOL.messages["kinds"], GOOD["kinds"], OSError("disk full"))


def test_a_walk_that_fails_itself_leaves_avros_error():
    schema = {"type": "record", "name": "Node", "fields": [
        {"name": "next", "type": ["null", "Node"]}, {"name": "n", "type": "int"}]}
    protocol = avrohttp.parse_protocol(json.dumps({
        "protocol": "Deep", "types": [schema],
        "messages": {"m": {"request": [{"name": "node", "type": "Node"}], "response": "null"}}}))
    node = {"next": None, "n": "x"}
    for _ in range(5000):
        node = {"next": node, "n": 1}
    raise_bad_arguments(protocol.messages["m"], {"node": node}, RecursionError())


# --- parameters_error agrees with avro.io, for generated protocols and parameters ---

WILD = st.one_of(
    st.sampled_from([None, True, "", "S0", "\ud800", b"", b"abcd", [], {}, {"f0": None},
                     {1: 2}, (1,), 1e39, float("nan")]),
    st.integers(), st.floats(), st.binary(max_size=5),
    st.text(st.characters(exclude_categories=()), max_size=3))  # lone surrogates too


@st.composite
def mutated(draw, datum, whole: bool = False):
    """The datum, with a value here and there replaced by a wild one, a key added or a key
    taken out: parameters that may fit, or not, anywhere. (Not 0 for a change: Hypothesis
    draws the smallest integer most often.)"""
    if not whole and draw(st.integers(0, 5)) == 3:
        return draw(WILD)
    if isinstance(datum, list):
        return [draw(mutated(item)) for item in datum]
    if isinstance(datum, str) and draw(st.integers(0, 5)) == 3:
        return datum + "\udc80"  # a lone surrogate: validate takes it, UTF-8 does not
    if not isinstance(datum, dict):
        return datum
    changed = {key: draw(mutated(value)) for key, value in datum.items()}
    change = draw(st.integers(0, 11))
    if change == 5 and changed:
        del changed[draw(st.sampled_from(sorted(changed)))]
    elif change == 6:
        changed[draw(st.sampled_from(["zz", "f0", "f1", 1, "\ud800"]))] = draw(WILD)
    return changed


@settings(max_examples=300)
@given(data=st.data())
def test_an_error_exactly_when_avro_cannot_write_the_parameters(data):
    example = data.draw(examples(max_calls=1))
    call = example.calls[0]
    message = example.protocol.messages[call.message]
    parameters = data.draw(mutated(call.request, whole=True))
    found = parameters_error(message, parameters)
    writes = avro_writes(message.request, parameters)
    assert (found is None) == writes
    assert codec_writes(message.request, parameters) == writes  # what the requestor uses
    if not avro.io.validate(message.request, parameters):
        assert found is not None
    if found is not None:
        assert isinstance(found, BadArguments) and found.message == call.message
        assert "\n" not in str(found) and str(found).startswith(f"{call.message}: ")
