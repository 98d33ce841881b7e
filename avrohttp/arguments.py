"""A clear error for a call whose parameters do not fit its message: BadArguments.

avro.io refuses such a call with words that help nobody: `AvroTypeException:
(<avro.schema.PrimitiveSchema object at 0x...>, 5)`, a whole schema for a wrong enum symbol,
`provided for "None"` for an unknown parameter; and a string that UTF-8 cannot encode, or a
number too large for a float, fails with Python's own UnicodeEncodeError, OverflowError or
struct.error.
BadArguments says it in one line, the message's name first, then where (the parameter, and
the path inside it: `entry.value`, `sizes[2]`, `quantities["boot"]`), what was expected and
what was given:

    add_entry: entry.value: expected an int, got '5' (str)

The client's encoding (avrohttp.codec.encoder_for) stays as it is, fast, and its errors
avro's: only once it has failed does the requestor call parameters_error(), which walks the
parameters again to say why. So a call whose parameters fit pays nothing for it.

What fits is exactly what avro.io writes: parameters_error() returns None if and only if
avro.io.DatumWriter writes the parameters (tests/avrohttp/test_arguments.py checks it for
generated schemas and datums). It looks at them in two passes:
- as avro.io.validate does, which DatumWriter calls first: each value checked by its
  schema's own validate() (so bytes are bytes, fixed is bytes of its size, a record a dict
  with no unknown keys, an enum one of its symbols, a float an int or a float, an int within
  its range, a map's keys str...), a union's value in the first branch whose validate() takes
  it, a missing field read as None;
- then what only writing finds: a string (or a map's key) that UTF-8 cannot encode, a number
  beyond a float's range, a Decimal with more decimal places than its scale, a datetime given
  for a date. Each value is written alone as DatumWriter.write_data writes it, a union's in
  the last branch that validates it, as DatumWriter.write_union picks it.
The first problem is reported: an unknown parameter before all else (a misspelt name leaves
the right one missing too, and the misspelt one is what to fix), then the parameters in the
message's order, each looked at depth first (avro.io.validate goes breadth first).

Unknown and missing parameters have no function of their own: they are part of the first
pass, and named with the message's parameters. Nor does a call need a check of its names
beforehand: the encoder refuses an unknown keyword on every path of the requestor (codec's
record encoder compares the names, and so does avro.io.validate), and writes a missing one as
None, which fails unless its type takes null. A missing parameter that has a default is
refused all the same: avro.io never writes a default in place of a value, and the message
says so.
"""

import datetime
import decimal
import io
from typing import Optional, Tuple, cast

import avro.errors
import avro.io
import avro.protocol
import avro.schema

from avrohttp.avro_json import (branch_name, expected, field_path, item_path, key_path,
                                no_such_field, not_a_symbol, out_of_range, shorten)

# How a Python datum of each type is given, where expected() says so (avro_json.JSON_FORMS
# has the same for JSON values); ints and longs are ints, and bytes bytes, so they need none.
PYTHON_FORMS = {
    "null": "None", "boolean": "bool", "string": "str", "float": "int or float",
    "double": "int or float", "fixed": "{size} bytes", "record": "dict", "error": "dict",
    "array": "list", "map": "dict with str keys",
}
# The same for the logical types that avro.io reads and writes as Python objects.
LOGICAL_FORMS = {
    "date": "a datetime.date", "time-millis": "a datetime.time",
    "time-micros": "a datetime.time", "timestamp-millis": "a datetime.datetime with a tzinfo",
    "timestamp-micros": "a datetime.datetime with a tzinfo",
    "uuid": "a str that holds a UUID", "decimal": "a decimal.Decimal",
}
_STRING = avro.schema.PrimitiveSchema("string")
# Where a problem is, and what it is.
Problem = Tuple[str, str]


class BadArguments(TypeError):
    """A call's parameters do not fit its message. `message` is the message's name, `path`
    where the problem is (a parameter, or a path inside one: `entry.value`, `sizes[2]`,
    `quantities["boot"]`; "" if it is about the whole call), `problem` what is wrong; the
    exception's text is all three, in one line. Nothing was sent: the call can be made again
    on the same client."""

    def __init__(self, message: str, path: str, problem: str) -> None:
        super().__init__(f"{message}: {path}: {problem}" if path else f"{message}: {problem}")
        self.message = message
        self.path = path
        self.problem = problem

    def __reduce__(self):  # pickled with its three parts, not its one text
        return type(self), (self.message, self.path, self.problem)


def parameters_error(message: avro.protocol.Message,
                     parameters: object) -> Optional[BadArguments]:
    """None if avro.io writes these parameters (a dict, by name) as the message's request;
    else the BadArguments that describes the first problem. Slow: call it once encoding has
    failed (raise_bad_arguments)."""
    request = message.request
    problem: Optional[Problem]
    if not isinstance(parameters, dict):
        problem = ("", f"expected the parameters as a dict, by name, got {given(parameters)}")
    else:
        problem = (_first_problem(request, parameters, "", writing=False)
                   or _first_problem(request, parameters, "", writing=True))
    return None if problem is None else BadArguments(message.name, *problem)


def raise_bad_arguments(message: avro.protocol.Message, parameters: object,
                        error: Exception) -> None:
    """Raise the BadArguments of parameters whose encoding failed with `error`, from it; or
    return if the parameters fit, and `error` is about something else (the caller then
    raises it again). For the requestor, in an `except` around the encoding."""
    try:
        bad = parameters_error(message, parameters)
    except Exception:  # nested deeper than the walk can go, say: avro's own error stands
        return
    if bad is not None:
        raise bad from error


def given(value: object) -> str:
    """A Python value, cut short, and its type, for an error message: `'5' (str)`."""
    text = shorten(repr(value))
    return text if value is None else f"{text} ({type(value).__name__})"


def expected_value(schema: avro.schema.Schema) -> str:
    """The schema in words, with the Python type of its values: "a string (str)"."""
    logical = getattr(schema, "logical_type", None)
    if isinstance(schema, avro.schema.LogicalSchema) and logical in LOGICAL_FORMS:
        return f"{branch_name(schema)} of logical type {logical} ({LOGICAL_FORMS[logical]})"
    return expected(schema, PYTHON_FORMS)


def _first_problem(schema: avro.schema.Schema, datum: object, path: str,
                   writing: bool) -> Optional[Problem]:
    """The first problem with the datum: as avro.io.validate sees it, or (`writing`) as
    avro.io.DatumWriter.write_data does, once validate has taken it."""
    # The type names the schema's class, and (once _takes has taken it) the datum's type:
    # each cast below says which.
    kind = schema.type
    if kind == "union":
        return _union_problem(cast(avro.schema.UnionSchema, schema), datum, path, writing)
    if not _takes(schema, datum):
        return path, _does_not_fit(schema, datum)
    if kind in ("record", "error", "request"):
        record, fields = cast(dict, datum), cast(avro.schema.RecordSchema, schema)
        for field in fields.fields:
            inner = field_path(path, field.name)
            if not writing and field.name not in record and not _validates(field.type, None):
                return inner, _missing(fields, field)
            problem = _first_problem(field.type, record.get(field.name), inner, writing)
            if problem is not None:
                return problem
        return None
    if kind == "array":
        items = cast(avro.schema.ArraySchema, schema).items
        for index, item in enumerate(cast(list, datum)):
            problem = _first_problem(items, item, item_path(path, index), writing)
            if problem is not None:
                return problem
        return None
    if kind == "map":
        values = cast(avro.schema.MapSchema, schema).values
        for key, value in cast(dict, datum).items():
            unwritable = _unwritable(_STRING, key, path) if writing else None
            if unwritable is not None:  # a key that UTF-8 cannot encode
                return path, f"the key {unwritable[1]}"
            problem = _first_problem(values, value, key_path(path, key), writing)
            if problem is not None:
                return problem
        return None
    return _unwritable(schema, datum, path) if writing else None


def _union_problem(schema: avro.schema.UnionSchema, datum: object, path: str,
                   writing: bool) -> Optional[Problem]:
    if writing:
        # DatumWriter.write_union checks the datum against every branch, and writes it in
        # the last one that takes it whole.
        chosen = None
        for branch in schema.schemas:
            try:
                if avro.io.validate(branch, datum):
                    chosen = branch
            except Exception as error:
                return path, (f"avro.io fails on {given(datum)} when it checks it against "
                              f"{branch_name(branch)}, a branch of the union: {_words(error)}")
        if chosen is None:  # never once validate has taken it; said all the same
            return path, f"expected {expected_value(schema)}, got {given(datum)}"
        return _first_problem(chosen, datum, path, writing)
    taking = [branch for branch in schema.schemas if _takes(branch, datum)]
    if not taking:
        return path, f"expected {expected_value(schema)}, got {given(datum)}"
    # avro.io.validate goes on in the first branch that takes the datum itself, even if a
    # later one would take its contents too.
    problem = _first_problem(taking[0], datum, path, writing)
    if problem is not None and len(taking) > 1:
        inner, words = problem
        problem = inner, (f"{words} (avro.io writes it as {branch_name(taking[0])}, the "
                          f"first branch of the union that takes a {type(datum).__name__})")
    return problem


def _takes(schema: avro.schema.Schema, datum: object) -> bool:
    """Whether the schema's own validate() takes the datum itself, as avro.io.validate asks
    of each value (a record's, an array's or a map's contents are asked apart)."""
    try:
        return schema.validate(datum) is not None
    except Exception:  # avro.io.validate fails too: the datum cannot be written
        return False


def _validates(schema: avro.schema.Schema, datum: object) -> bool:
    """Whether avro.io.validate takes the datum whole."""
    try:
        return avro.io.validate(schema, datum)
    except Exception:
        return False


def _missing(record: avro.schema.RecordSchema, field: avro.schema.Field) -> str:
    words = f"missing: give {expected_value(field.type)}"
    if field.has_default:
        words += "; avro.io does not fill in defaults"
    if record.type == "request":
        words += f"; the message's parameters: {', '.join(f.name for f in record.fields)}"
    return words


def _does_not_fit(schema: avro.schema.Schema, datum: object) -> str:
    """What is wrong with a value that the schema's validate() does not take."""
    kind = schema.type
    logical = isinstance(schema, avro.schema.LogicalSchema)
    if kind in ("int", "long") and isinstance(datum, int) and not logical:  # beyond the range
        return out_of_range(kind, shorten(repr(datum)))
    if kind == "enum" and isinstance(datum, str):
        return not_a_symbol(cast(avro.schema.EnumSchema, schema), repr(datum))
    if kind == "fixed" and isinstance(datum, bytes) and not logical:  # of another size
        return f"expected {expected_value(schema)}, got {len(datum)} bytes"
    if kind in ("record", "error", "request") and isinstance(datum, dict):
        record = cast(avro.schema.RecordSchema, schema)
        known = {field.name for field in record.fields}
        unknown = [key for key in datum if key not in known]
        if unknown:
            return no_such_field(record, unknown[0])
    if kind == "map" and isinstance(datum, dict):
        keys = [key for key in datum if not isinstance(key, str)]
        if keys:
            return f"expected {expected_value(schema)}, got the key {given(keys[0])}"
    return f"expected {expected_value(schema)}, got {given(datum)}"


def _unwritable(schema: avro.schema.Schema, datum: object, path: str) -> Optional[Problem]:
    """The problem with a value that validate takes, if avro.io cannot write it: written
    alone, as DatumWriter.write_data writes it."""
    try:
        avro.io.DatumWriter().write_data(schema, datum, avro.io.BinaryEncoder(io.BytesIO()))
    except Exception as error:
        return path, _why_unwritable(schema, datum, error)
    return None


def _why_unwritable(schema: avro.schema.Schema, datum: object, error: Exception) -> str:
    kind = schema.type
    if isinstance(error, UnicodeEncodeError):
        surrogate = ascii(error.object[error.start])[1:-1]
        return (f"{given(datum)} holds a lone surrogate ({surrogate}, at {error.start}), "
                "which UTF-8 cannot encode")
    if kind in ("float", "double") and not isinstance(schema, avro.schema.LogicalSchema):
        if kind == "float":
            return out_of_range(kind, shorten(repr(datum)))
        return f"{shorten(repr(datum))} is out of the range of a double"
    if isinstance(error, avro.errors.AvroOutOfScaleException):
        return (f"{given(datum)} has more decimal places than the scale, "
                f"{schema.get_prop('scale')}")
    logical = getattr(schema, "logical_type", None)
    if logical == "decimal" and not cast(decimal.Decimal, datum).is_finite():
        return f"{given(datum)} is not a finite number"
    if logical == "date" and isinstance(datum, datetime.datetime):
        return f"expected {expected_value(schema)}, got {given(datum)}, not a date alone"
    return f"avro.io cannot write {given(datum)} as {expected_value(schema)}: {_words(error)}"


def _words(error: Exception) -> str:
    """An exception in one line of words."""
    return shorten(" ".join(f"{type(error).__name__}: {error}".split()))
