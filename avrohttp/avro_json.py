"""Avro's JSON encoding of datums, both ways, for any schema: from_json() turns a JSON value
into the datum that avro.io writes, to_json() a datum that avro.io read into a JSON value.

`python -m avrohttp call` uses both (docs/running.md, "Serving a module, and the command-line
tools"). As in the Avro specification's JSON encoding: bytes and fixed are strings whose code
points 0-255 are the bytes ("\\u00ff" is the byte 0xff), and a union's value is
`{"branch": value}`, the branch named by its type ("string", "array", "map") or its full
name ("example.shop.Item"), except null, which is plain `null`. from_json() also takes a
union's value plain, when exactly one branch fits it; to_json() always writes the wrapped
form, so an answer can be given back as a parameter. Floats that JSON cannot write (NaN and
the infinities) are the strings "NaN", "Infinity" and "-Infinity", as in Avro's Java JSON
encoder. Logical types go as the types they annotate (a date as its int, say).

The words of its errors (expected(), out_of_range(), the paths: `entry.value`, `sizes[2]`,
`quantities["boot"]`) are also avrohttp.arguments', which says what is wrong with a call's
parameters as Python datums.
"""

import json
import math
from typing import List, cast

import avro.io
import avro.schema

INT_RANGE = (-2**31, 2**31 - 1)
LONG_RANGE = (-2**63, 2**63 - 1)
FLOAT_MAX = 3.4028234663852886e38  # the largest finite float32
SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# How much of a JSON value that does not fit an error message quotes.
QUOTED_CHARS = 60


class DoesNotFit(ValueError):
    """A JSON value that does not fit its schema: `path` is where it is (`entry.value`,
    `quantities["boot"]`, `sizes[2]`), and the message says what was expected and what was
    given."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path


def from_json(schema: avro.schema.Schema, value: object, path: str) -> object:
    """The datum for this JSON value of the schema; DoesNotFit, naming `path`, if it does not
    fit."""
    # The type names the schema's class: each cast below says which.
    kind = schema.type
    if kind == "union":
        return _from_json_union(cast(avro.schema.UnionSchema, schema), value, path)
    if kind in ("record", "error", "request"):
        return _from_json_record(cast(avro.schema.RecordSchema, schema), value, path)
    if kind == "array" and isinstance(value, list):
        items = cast(avro.schema.ArraySchema, schema).items
        return [from_json(items, item, item_path(path, n)) for n, item in enumerate(value)]
    if kind == "map" and isinstance(value, dict):
        values = cast(avro.schema.MapSchema, schema).values
        return {key: from_json(values, item, key_path(path, key))
                for key, item in value.items()}
    if kind == "null" and value is None:
        return None
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind in ("int", "long") and isinstance(value, int) and not isinstance(value, bool):
        low, high = INT_RANGE if kind == "int" else LONG_RANGE
        if not low <= value <= high:
            raise DoesNotFit(path, out_of_range(kind, value))
        return value
    if kind in ("float", "double"):
        number = _number(value)
        if number is not None:
            if kind == "float" and math.isfinite(number) and abs(number) > FLOAT_MAX:
                raise DoesNotFit(path, out_of_range(kind, value))
            return number
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "enum" and isinstance(value, str):
        enum = cast(avro.schema.EnumSchema, schema)
        if value not in enum.symbols:
            raise DoesNotFit(path, not_a_symbol(enum, json.dumps(value)))
        return value
    if kind in ("bytes", "fixed") and isinstance(value, str):
        try:
            data = value.encode("latin-1")
        except UnicodeEncodeError:
            raise DoesNotFit(path, f"expected {expected(schema)}: {quote(value)} has a code "
                                   "point above \\u00ff") from None
        if kind == "fixed" and len(data) != cast(avro.schema.FixedSchema, schema).size:
            raise DoesNotFit(path, f"expected {expected(schema)}, got {len(data)} bytes")
        return data
    raise DoesNotFit(path, f"expected {expected(schema)}, got {quote(value)}")


def _number(value: object):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        return SPECIAL_FLOATS.get(value)
    return None


def _from_json_record(schema: avro.schema.RecordSchema, value: object, path: str) -> dict:
    if not isinstance(value, dict):
        raise DoesNotFit(path, f"expected {expected(schema)}, got {quote(value)}")
    fields = {field.name: field for field in schema.fields}
    unknown = [name for name in value if name not in fields]
    if unknown:
        raise DoesNotFit(path, no_such_field(schema, unknown[0]))
    datum = {}
    for name, field in fields.items():
        inner = field_path(path, name)
        if name in value:
            datum[name] = from_json(field.type, value[name], inner)
        elif field.has_default:
            # A default is JSON, but a union's is its first branch's value, never wrapped.
            branch = (cast(avro.schema.UnionSchema, field.type).schemas[0]
                      if field.type.type == "union" else field.type)
            datum[name] = from_json(branch, field.default, inner)
        else:
            raise DoesNotFit(inner, f"missing: give {expected(field.type)}")
    return datum


def _from_json_union(schema: avro.schema.UnionSchema, value: object, path: str) -> object:
    branches = schema.schemas
    if value is None and any(branch.type == "null" for branch in branches):
        return None
    if isinstance(value, dict) and len(value) == 1:  # the wrapped form, {"branch": value}
        (name, inner), = value.items()
        for branch in branches:
            if name in branch_names(branch):
                return from_json(branch, inner, path)
    fitting: List[tuple] = []
    for branch in branches:
        try:
            fitting.append((branch, from_json(branch, value, path)))
        except DoesNotFit:
            pass
    if len(fitting) == 1:
        return fitting[0][1]
    if not fitting:
        raise DoesNotFit(path, f"expected {expected(schema)}, got {quote(value)}")
    names = [branch_name(branch) for branch, _ in fitting]
    raise DoesNotFit(path, f"{quote(value)} fits several branches of the union "
                           f"({', '.join(names)}): give it as {{{json.dumps(names[0])}: ...}}")


def to_json(schema: avro.schema.Schema, datum: object) -> object:
    """The JSON value of a datum of the schema, in Avro's JSON encoding."""
    # The type names the schema's class, and the datum's type: each cast below says which.
    kind = schema.type
    if kind == "union":
        branches = cast(avro.schema.UnionSchema, schema).schemas
        if datum is None and any(branch.type == "null" for branch in branches):
            return None
        for branch in branches:
            # avro.io writes a datum in the first branch that it fits: so does this.
            if branch.type != "null" and avro.io.validate(branch, datum):
                return {branch_name(branch): to_json(branch, datum)}
        raise ValueError(f"{quote(datum)} fits no branch of {expected(schema)}")
    if kind in ("record", "error", "request"):
        record = cast(dict, datum)
        return {field.name: to_json(field.type, record.get(field.name))
                for field in cast(avro.schema.RecordSchema, schema).fields}
    if kind == "array":
        items = cast(avro.schema.ArraySchema, schema).items
        return [to_json(items, item) for item in cast(list, datum)]
    if kind == "map":
        values = cast(avro.schema.MapSchema, schema).values
        return {key: to_json(values, item) for key, item in cast(dict, datum).items()}
    if kind in ("bytes", "fixed") and isinstance(datum, bytes):
        return datum.decode("latin-1")
    if kind in ("float", "double"):
        number = cast(float, datum)
        if not math.isfinite(number):
            return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
    return datum


def branch_name(schema: avro.schema.Schema) -> str:
    """The name of a union's branch in the JSON encoding: its full name, or its type."""
    return getattr(schema, "fullname", None) or schema.type


def branch_names(schema: avro.schema.Schema) -> tuple:
    """The names that pick this branch of a union: its full name and its name, or its type."""
    if isinstance(schema, avro.schema.NamedSchema):
        return (schema.fullname, schema.name)
    return (schema.type,)


# How a value of each type is written in JSON, where expected() says so: {size} is a fixed
# type's. avrohttp.arguments has the same for Python datums.
JSON_FORMS = {
    "boolean": "true or false", "record": "a JSON object", "error": "a JSON object",
    "map": "a JSON object", "bytes": "a string of code points \\u0000 to \\u00ff",
    "fixed": "a string of {size} code points, each \\u0000 to \\u00ff",
    "float": 'a number, or "NaN", "Infinity", "-Infinity"',
    "double": 'a number, or "NaN", "Infinity", "-Infinity"',
}


def expected(schema: avro.schema.Schema, forms: dict = JSON_FORMS) -> str:
    """The schema in words, for an error message: "an int", "record example.shop.Item (a
    JSON object)"; `forms` says how a value of each type is written (JSON_FORMS)."""
    kind = schema.type
    if kind == "union":
        branches = cast(avro.schema.UnionSchema, schema).schemas
        return "one of " + ", ".join(branch_name(branch) for branch in branches)
    if kind in ("record", "error"):
        words = f"record {cast(avro.schema.RecordSchema, schema).fullname}"
    elif kind == "enum":
        enum = cast(avro.schema.EnumSchema, schema)
        words = f"enum {enum.fullname} (one of {', '.join(enum.symbols)})"
    elif kind == "fixed":
        words = f"fixed {cast(avro.schema.FixedSchema, schema).fullname}"
    elif kind == "array":
        words = f"an array of {branch_name(cast(avro.schema.ArraySchema, schema).items)}"
    elif kind == "map":
        words = f"a map of {branch_name(cast(avro.schema.MapSchema, schema).values)}"
    else:
        words = {"null": "null", "boolean": "a boolean", "int": "an int", "long": "a long",
                 "float": "a float", "double": "a double", "string": "a string"
                 }.get(kind, kind)
    form = forms.get(kind)
    return f"{words} ({form.format(size=getattr(schema, 'size', None))})" if form else words


def out_of_range(kind: str, value: object) -> str:
    """What is wrong with a number beyond the range of an int, a long or a float."""
    if kind == "float":
        return f"{value} is out of the range of a float"
    low, high, words = (*INT_RANGE, "an int") if kind == "int" else (*LONG_RANGE, "a long")
    return f"{value} is out of the range of {words} ({low} to {high})"


def not_a_symbol(schema: avro.schema.EnumSchema, shown: str) -> str:
    """What is wrong with a value (`shown` as written) that is not one of the enum's symbols."""
    return f"{shown} is not a symbol of the enum {schema.name} ({', '.join(schema.symbols)})"


def no_such_field(schema: avro.schema.RecordSchema, name: object) -> str:
    """What is wrong with a value of a record (or a message's parameters: its "request")
    that has a field `name` which the record lacks."""
    owner, part = (("the message", "parameter") if schema.type == "request"
                   else (f"record {schema.fullname}", "field"))
    shown = json.dumps(name) if isinstance(name, str) else repr(name)
    fields = ", ".join(field.name for field in schema.fields) or "none"
    return f"{owner} has no {part} {shown} (its {part}s: {fields})"


def field_path(path: str, name: str) -> str:
    """The path of a record's field (or a parameter) in error messages: `entry.value`."""
    return f"{path}.{name}" if path else name


def item_path(path: str, index: int) -> str:
    """The path of an array's item in error messages: `sizes[2]`."""
    return f"{path}[{index}]"


def key_path(path: str, key: str) -> str:
    """The path of a map's value in error messages: `quantities["boot"]`."""
    return f"{path}[{json.dumps(key)}]"


def quote(value: object) -> str:
    """A JSON value, cut short for an error message."""
    return shorten(json.dumps(value, default=repr))


def shorten(text: str) -> str:
    """A value's text, cut to QUOTED_CHARS for an error message."""
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS - 3] + "..."
