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
"""

import json
import math
from typing import List

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
    kind = schema.type
    if kind == "union":
        return _from_json_union(schema, value, path)
    if kind in ("record", "error", "request"):
        return _from_json_record(schema, value, path)
    if kind == "array" and isinstance(value, list):
        return [from_json(schema.items, item, f"{path}[{n}]") for n, item in enumerate(value)]
    if kind == "map" and isinstance(value, dict):
        return {key: from_json(schema.values, item, f"{path}[{json.dumps(key)}]")
                for key, item in value.items()}
    if kind == "null" and value is None:
        return None
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind in ("int", "long") and isinstance(value, int) and not isinstance(value, bool):
        low, high = INT_RANGE if kind == "int" else LONG_RANGE
        if not low <= value <= high:
            raise DoesNotFit(path, f"{value} is out of the range of an {kind} "
                                   f"({low} to {high})")
        return value
    if kind in ("float", "double"):
        number = _number(value)
        if number is not None:
            if kind == "float" and math.isfinite(number) and abs(number) > FLOAT_MAX:
                raise DoesNotFit(path, f"{value} is out of the range of a float")
            return number
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "enum" and isinstance(value, str):
        if value not in schema.symbols:
            raise DoesNotFit(path, f"{json.dumps(value)} is not a symbol of the enum "
                                   f"{schema.name} ({', '.join(schema.symbols)})")
        return value
    if kind in ("bytes", "fixed") and isinstance(value, str):
        try:
            data = value.encode("latin-1")
        except UnicodeEncodeError:
            raise DoesNotFit(path, f"expected {expected(schema)}: {quote(value)} has a code "
                                   "point above \\u00ff") from None
        if kind == "fixed" and len(data) != schema.size:
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
        # A message's parameters are a record too: its "request".
        owner, part = (("the message", "parameter") if schema.type == "request"
                       else (f"record {schema.fullname}", "field"))
        raise DoesNotFit(path, f"{owner} has no {part} {json.dumps(unknown[0])} "
                               f"(its {part}s: {', '.join(fields) or 'none'})")
    datum = {}
    for name, field in fields.items():
        inner = f"{path}.{name}" if path else name
        if name in value:
            datum[name] = from_json(field.type, value[name], inner)
        elif field.has_default:
            # A default is JSON, but a union's is its first branch's value, never wrapped.
            branch = field.type.schemas[0] if field.type.type == "union" else field.type
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
    kind = schema.type
    if kind == "union":
        if datum is None and any(branch.type == "null" for branch in schema.schemas):
            return None
        for branch in schema.schemas:
            # avro.io writes a datum in the first branch that it fits: so does this.
            if branch.type != "null" and avro.io.validate(branch, datum):
                return {branch_name(branch): to_json(branch, datum)}
        raise ValueError(f"{quote(datum)} fits no branch of {expected(schema)}")
    if kind in ("record", "error", "request"):
        return {field.name: to_json(field.type, datum.get(field.name)) for field in schema.fields}
    if kind == "array":
        return [to_json(schema.items, item) for item in datum]
    if kind == "map":
        return {key: to_json(schema.values, item) for key, item in datum.items()}
    if kind in ("bytes", "fixed") and isinstance(datum, bytes):
        return datum.decode("latin-1")
    if kind in ("float", "double") and not math.isfinite(datum):
        return "NaN" if math.isnan(datum) else ("Infinity" if datum > 0 else "-Infinity")
    return datum


def branch_name(schema: avro.schema.Schema) -> str:
    """The name of a union's branch in the JSON encoding: its full name, or its type."""
    return getattr(schema, "fullname", None) or schema.type


def branch_names(schema: avro.schema.Schema) -> tuple:
    """The names that pick this branch of a union: its full name and its name, or its type."""
    if isinstance(schema, avro.schema.NamedSchema):
        return (schema.fullname, schema.name)
    return (schema.type,)


def expected(schema: avro.schema.Schema) -> str:
    """The schema in words, for an error message: "an int", "record example.shop.Item"."""
    kind = schema.type
    if kind == "union":
        return "one of " + ", ".join(branch_name(branch) for branch in schema.schemas)
    if kind in ("record", "error"):
        return f"record {schema.fullname} (a JSON object)"
    if kind == "enum":
        return f"enum {schema.fullname} (one of {', '.join(schema.symbols)})"
    if kind == "fixed":
        return (f"fixed {schema.fullname} (a string of {schema.size} code points, each "
                "\\u0000 to \\u00ff)")
    if kind == "bytes":
        return "bytes (a string of code points \\u0000 to \\u00ff)"
    if kind == "array":
        return f"an array of {branch_name(schema.items)}"
    if kind == "map":
        return f"a map of {branch_name(schema.values)} (a JSON object)"
    if kind in ("float", "double"):
        return f"a {kind} (a number, or \"NaN\", \"Infinity\", \"-Infinity\")"
    return {"null": "null", "boolean": "a boolean (true or false)", "int": "an int",
            "long": "a long", "string": "a string"}.get(kind, kind)


def quote(value: object) -> str:
    """A JSON value, cut short for an error message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS - 3] + "..."
