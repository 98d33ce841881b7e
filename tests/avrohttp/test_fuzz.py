"""Fuzzing each host's application in-process (the WSGI one of the eventlet host, the ASGI one
of the asyncio host): bodies made from valid calls by mutation, truncation and insertion, bad
framings, odd client protocols, arbitrary bytes, odd HTTP.

Whatever comes in, the answer must be a 4xx with a short one-line reason, or a well-formed
Avro response that decodes completely; no exception escapes, nothing is logged as an error,
and no traceback or internal path reaches the client. `make test` tries a few hundred
inputs; `make fuzz` (FUZZ_EXAMPLES=n inputs per test) tries many more and prints counts.
The inputs are made in fuzz_inputs.py; the checks on the answers are here.
"""

import collections
import io
import logging
import os
import re
import struct
import sys
from pathlib import Path

import avro
import avro.errors
import avro.io
import avro.ipc
import avro.protocol
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import avrohttp
import avrohttp.requestor
import avrohttp.responder
import server
from conftest import Response, call_app, call_asgi, echo_app, echo_asgi_app
from fuzz_inputs import framed, handshakes, http_options, mutated, valid_calls
from protocol import PROTOCOL_JSON, EchoProtocol
from wire import STRING, call_body, call_head, encode, frame, handshake_request, read_answer

# Inputs per test: `make fuzz` sets FUZZ_EXAMPLES; `make test` runs the small numbers below.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def fuzz_settings(quick_examples: int):
    return settings(
        max_examples=FUZZ_EXAMPLES or quick_examples,
        # caplog is cleared by hand for each input; bodies are large on purpose.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# --- What every answer must look like -------------------------------------------------------

MAX_REASON_BYTES = 400
# Signs of a leak: a traceback, a source file, a rooted path, the repr of a Python object.
# (avro's own messages may name a JSON value's type, as in "it is <class 'NoneType'>": ugly,
# but it tells nothing about the server, so it is allowed.)
LEAK = re.compile(r"Traceback|File \"|\w\.pyc?\b|site-packages|(?<![\w.])/[\w.-]+/"
                  r"|<[\w.]+ object at 0x|<(?:function|module|bound method) ")
# Where this code and its libraries live: never sent to anyone, whatever the request.
INTERNAL_PATHS = {str(Path(server.__file__).resolve().parent), str(Path(avro.__file__).parent),
                  sys.prefix, sys.base_prefix}


def assert_no_leak(text: str, request_body: bytes) -> None:
    """Nothing that looks internal, unless the client sent it (a message name is quoted)."""
    for path in INTERNAL_PATHS:
        assert path not in text, f"internal path in {text!r}"
    for match in LEAK.finditer(text):
        assert match.group().encode() in request_body, f"leak {match.group()!r} in {text!r}"


def check_answer(response: Response, request_body: bytes) -> str:
    """Assert that the response is a short 4xx reason or a complete Avro answer.

    Returns what it was (e.g. "400", "200 system error"), for the counts `make fuzz` prints.
    """
    assert response.status == 200 or 400 <= response.status < 500, response
    assert int(response.headers["content-length"]) == len(response.body)
    if response.status != 200:
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert len(response.body) < MAX_REASON_BYTES, response.body
        reason = response.body.decode("utf-8")
        assert reason.endswith("\n") and reason[:-1].isprintable() and reason.strip(), reason
        assert_no_leak(reason, request_body)
        return str(response.status)
    assert response.headers["content-type"] == "avro/binary"
    try:
        return check_avro_answer(response.body, request_body)
    except (avro.errors.AvroException, struct.error, ValueError) as e:
        raise AssertionError(f"not a well-formed Avro response: {e}") from e


def check_avro_answer(body: bytes, request_body: bytes) -> str:
    stream = io.BytesIO(body)
    payload = avro.ipc.FramedReader(stream).read_framed_message()
    assert stream.read() == b"", "bytes after the end-of-message frame"
    stream = io.BytesIO(payload)
    decoder = avro.io.BinaryDecoder(stream)
    handshake = avro.io.DatumReader(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA).read(decoder)
    if handshake["match"] == "BOTH":
        assert handshake["serverProtocol"] is None and handshake["serverHash"] is None
    else:
        assert handshake["match"] in ("CLIENT", "NONE"), handshake
        assert handshake["serverHash"] == EchoProtocol.md5
        assert handshake["serverProtocol"] == PROTOCOL_JSON  # as written, docs and all
    if stream.tell() == len(payload):  # NONE, or a ping: the handshake alone
        return f"200 {handshake['match']}, no call response"
    assert handshake["match"] != "NONE", "a call response after NONE"
    assert avro.io.DatumReader(avro.ipc.META_SCHEMA).read(decoder) == {}
    is_error = decoder.read_boolean()
    # Both messages answer a string; a system error is the "string" branch of ["string"].
    schema = avro.ipc.SYSTEM_ERROR_SCHEMA if is_error else STRING
    datum = avro.io.DatumReader(schema).read(decoder)
    assert isinstance(datum, str)
    assert stream.tell() == len(payload), "bytes after the call response"
    if not is_error:
        return "200 answer"
    assert 0 < len(datum) <= avrohttp.responder.MAX_ERROR_CHARS, datum
    assert_no_leak(datum, request_body)
    return "200 system error"


class Tally:
    """Counts the kinds of answers one test got; in `make fuzz` it shows progress."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts = collections.Counter()

    def add(self, outcome: str) -> None:
        self.counts[outcome] += 1
        total = sum(self.counts.values())
        if FUZZ_EXAMPLES and total % 1000 == 0:
            print(f"  {self.name}: {total} inputs so far", file=sys.stderr, flush=True)

    def summary(self) -> str:
        kinds = ", ".join(f"{n} x {kind}" for kind, n in sorted(self.counts.items()))
        return f"{self.name}: {sum(self.counts.values())} inputs: {kinds}"


# Each host's application, and how to call it in-process.
APPLICATIONS = {"eventlet": (echo_app, call_app), "asyncio": (echo_asgi_app, call_asgi)}


@pytest.fixture
def fuzz(request, caplog, host):
    """Returns try_body(body, **call_app options): call a fresh app of the host, check the
    answer."""
    tally = Tally(request.node.name)
    make_app, call = APPLICATIONS[host]

    def try_body(body: bytes, **options) -> Response:
        app = make_app()
        caplog.clear()
        response = call(app, body, **options)  # an exception escaping fails the test
        outcome = check_answer(response, body)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not errors, f"bad input logged as a bug: {errors}"
        # Bad input leaves the server able to answer the next call.
        assert check_answer(call(app, call_body()), b"") == "200 answer"
        tally.add(outcome)
        return response

    yield try_body
    if FUZZ_EXAMPLES and tally.counts:
        print("\n" + tally.summary(), file=sys.stderr)


# --- The tests ------------------------------------------------------------------------------

@fuzz_settings(100)
@given(data=st.data())
def test_mutated_calls(fuzz, data):
    message = data.draw(mutated(data.draw(valid_calls())), label="message")
    body = data.draw(framed(message) if data.draw(st.booleans()) else st.just(frame(message)),
                     label="body")
    fuzz(body, chunked=data.draw(st.booleans(), label="chunked"))


@fuzz_settings(60)
@given(data=st.data())
def test_mutated_framed_bodies(fuzz, data):
    body = data.draw(mutated(frame(data.draw(valid_calls()), data.draw(st.integers(1, 9000)))))
    fuzz(body, chunked=data.draw(st.booleans()))


@fuzz_settings(100)
@given(message=valid_calls(), chunked=st.booleans())
def test_valid_calls(fuzz, message, chunked):
    assert fuzz(frame(message), chunked=chunked).status == 200


@fuzz_settings(60)
@given(data=st.data())
def test_valid_calls_in_odd_framings(fuzz, data):
    fuzz(data.draw(framed(data.draw(valid_calls()))))


@fuzz_settings(60)
@given(handshake=handshakes(), rest=st.binary(max_size=64))
def test_every_handshake_followed_by_arbitrary_bytes(fuzz, handshake, rest):
    fuzz(frame(handshake[0] + rest))


@fuzz_settings(40)
@given(body=st.binary(max_size=2000), chunked=st.booleans())
def test_arbitrary_bytes(fuzz, body, chunked):
    fuzz(body, chunked=chunked)


@fuzz_settings(40)
@given(frames=st.lists(st.tuples(st.integers(0, 0xFFFFFFFF) | st.none(),
                                 st.binary(max_size=64)), max_size=6),
       end=st.booleans())
def test_arbitrary_framings(fuzz, frames, end):
    # Each frame: a declared length (None: its true length) and its bytes.
    body = b"".join(struct.pack("!I", len(chunk) if n is None else n) + chunk
                    for n, chunk in frames)
    fuzz(body + (b"\x00\x00\x00\x00" if end else b""))


@fuzz_settings(40)
@given(data=st.data())
def test_odd_http_requests(fuzz, data):
    body = data.draw(st.sampled_from([call_body(), call_body("split")])
                     | valid_calls().map(frame) | st.binary(max_size=64))
    options = data.draw(http_options)
    if not options.get("chunked"):
        options["content_length"] = data.draw(
            st.integers(-10, len(body) + 10) | st.sampled_from(
                ["", "abc", " 12", "1e3", "-0", "0x10", "١٢", "9" * 30]), label="length")
    fuzz(body, **options)


# --- The checks can fail ----------------------------------------------------------------------

PLAIN = {"content-type": "text/plain; charset=utf-8"}
AVRO = {"content-type": "avro/binary"}


def answer(payload: bytes) -> bytes:
    return frame(encode(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA, {"match": "BOTH"}) + payload)


def error_answer(text: str) -> bytes:
    return answer(encode(avro.ipc.META_SCHEMA, {}) + b"\x01"
                  + encode(avro.ipc.SYSTEM_ERROR_SCHEMA, text))


@pytest.mark.parametrize("status, headers, body", [
    (500, PLAIN, b"Internal server error\n"),
    (502, PLAIN, b"Bad gateway\n"),
    (400, PLAIN, b"x" * MAX_REASON_BYTES + b"\n"),
    (400, PLAIN, b"two\nlines\n"),
    (400, PLAIN, b"Traceback (most recent call last):\n"),
    (400, PLAIN, b"Bad request: error in server.py\n"),
    (400, PLAIN, b"Bad request: cannot open /srv/app/data\n"),
    (400, PLAIN, b"Bad request: <avro.io.BinaryDecoder object at 0x7f3a2b>\n"),
    (400, {"content-type": "text/html"}, b"Bad request\n"),
    (200, AVRO, answer(b"")[:-1]),
    (200, AVRO, answer(b"") + b"\x00"),
    (200, AVRO, answer(encode(avro.ipc.META_SCHEMA, {}) + b"\x00" + encode(STRING, "x") + b"?")),
    (200, AVRO, error_answer("x" * (avrohttp.responder.MAX_ERROR_CHARS + 1))),
    (200, AVRO, error_answer('Invalid parameters: File "server.py", line 3')),
    (200, PLAIN, answer(b"")),
])
def test_check_answer_rejects_bad_answers(status, headers, body):
    headers = {**headers, "content-length": str(len(body))}
    with pytest.raises(AssertionError):
        check_answer(Response(status, headers, body), b"")


def test_check_answer_accepts_what_the_client_sent_quoted_back(app):
    body = frame(handshake_request() + call_head("/etc/x.py") + encode(STRING, "hi"))
    response = call_app(app, body)
    answer = read_answer(response.body, "echo")
    assert (answer.is_error, answer.datum) == (True, "Unknown message: /etc/x.py")
    assert check_answer(response, body) == "200 system error"


def test_fuzz_fails_on_a_bug(fuzz, monkeypatch):
    class Buggy(server.EchoResponder):
        def respond(self, call_request):
            raise KeyError("bug")

    monkeypatch.setattr(server, "EchoResponder", Buggy)
    with pytest.raises(AssertionError, match="500"):
        fuzz(call_body())


def test_fuzz_fails_on_an_error_logged_for_bad_input(fuzz, monkeypatch):
    class Alarmed(server.EchoResponder):
        def respond(self, call_request):
            logging.getLogger("avrohttp.responder").error("bad input treated as a bug")
            return super().respond(call_request)

    monkeypatch.setattr(server, "EchoResponder", Alarmed)
    with pytest.raises(AssertionError, match="bad input logged as a bug"):
        fuzz(call_body())
