"""In-process tests of the Responder, through the WSGI application: the two messages and
the handler dispatch, the handshake, Avro system errors, and the protocol cache. No sockets."""

import json
import logging
import re

import avro.errors
import avro.ipc
import avro.protocol
import avro.schema
import pytest
from hypothesis import given, strategies as st

import avrohttp
import avrohttp.responder
import server
from conftest import AnyResponder, LocalTransceiver, call_app, echo_app
from protocol import PROTOCOL_JSON, EchoProtocol
from wire import (STRING, Answer, call_body, call_head, call_request, encode, frame,
                  handshake_request, read_answer)


def protocol_with(**changes) -> avro.protocol.Protocol:
    """A client protocol derived from AvroEcho: `changes` are merged into its JSON."""
    data = json.loads(PROTOCOL_JSON)
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return avro.protocol.parse(json.dumps(data))


def another_protocol(n: int = 0) -> avro.protocol.Protocol:
    """A client protocol with its own hash. (A new doc would not do: avro's hash skips docs.)"""
    return protocol_with(types=[{"type": "fixed", "name": f"Unused{n}", "size": 1}])


SHOUT = {"doc": "Not in AvroEcho.", "request": [{"name": "query", "type": "string"}],
         "response": "string"}
WITH_SHOUT = protocol_with(messages={"shout": SHOUT})


# --- The two messages ----------------------------------------------------------------------

@pytest.mark.parametrize("message, query, expected", [
    ("echo", "Hello World", "Hello World"),
    ("split", "Hello World", "Hello"),
    ("split", "héllo wörld!", "héllo "),  # half of the characters, not of the bytes
    ("echo", "", ""),
    ("split", "", ""),
    ("split", "a", ""),
])
def test_answers_echo_and_split(app, message, query, expected):
    response = call_app(app, call_body(message, query))
    assert response.status == 200
    assert response.headers["content-type"] == "avro/binary"
    answer = read_answer(response.body, message)
    assert answer.handshake["match"] == "BOTH"
    assert (answer.is_error, answer.datum) == (False, expected)


@given(query=st.text(max_size=300))
def test_echo_and_split_for_any_text(query):
    app = echo_app()
    assert read_answer(call_app(app, call_body("echo", query)).body, "echo").datum == query
    half = read_answer(call_app(app, call_body("split", query)).body, "split").datum
    assert half == query[: len(query) // 2]


def test_responder_is_an_avro_ipc_responder():
    responder = server.EchoResponder()
    assert isinstance(responder, avro.ipc.Responder)
    # It keeps avro.ipc's interface: avro's own requestor gets its answers.
    requestor = avro.ipc.Requestor(EchoProtocol, LocalTransceiver(responder))
    assert requestor.request("echo", {"query": "Hello World"}) == "Hello World"
    assert requestor.request("split", {"query": "Hello World"}) == "Hello"


# --- The handshake -------------------------------------------------------------------------

def test_unknown_client_protocol_gets_none_and_no_call_response(app):
    client = another_protocol()
    response = call_app(app, call_body(protocol=client))
    assert read_answer(response.body) == Answer(
        {"match": "NONE", "serverProtocol": str(EchoProtocol), "serverHash": EchoProtocol.md5,
         "meta": None}, has_call_response=False)


def test_client_that_sends_its_protocol_gets_an_answer_and_is_remembered(app):
    client = another_protocol()
    first = read_answer(call_app(app, call_body(protocol=client, send_protocol=True)).body)
    assert (first.handshake["match"], first.datum) == ("BOTH", "Hello World")
    again = read_answer(call_app(app, call_body(protocol=client)).body)  # protocol not resent
    assert (again.handshake["match"], again.datum) == ("BOTH", "Hello World")


def test_wrong_guess_of_the_server_hash_gets_client_and_the_server_protocol(app):
    answer = read_answer(call_app(app, call_body(server_hash=b"\x00" * 16)).body)
    assert answer == Answer(
        {"match": "CLIENT", "serverProtocol": str(EchoProtocol), "serverHash": EchoProtocol.md5,
         "meta": None}, has_call_response=True, is_error=False, datum="Hello World")


def test_schema_resolution_skips_a_request_field_the_server_does_not_know(app):
    fields = [{"name": "query", "type": "string"},
              {"name": "loud", "type": "boolean", "default": False}]
    client = protocol_with(messages={"split": {"request": fields, "response": "string"}})
    body = frame(handshake_request(client, send_protocol=True)
                 + call_request("split", {"query": "Hello World", "loud": True}, client))
    answer = read_answer(call_app(app, body).body, "split")
    assert (answer.handshake["match"], answer.is_error, answer.datum) == ("BOTH", False, "Hello")


def test_ping_gets_the_handshake_alone(app):
    assert read_answer(call_app(app, call_body("")).body) == Answer(
        {"match": "BOTH", "serverProtocol": None, "serverHash": None, "meta": None},
        has_call_response=False)


# --- Avro errors: 200, the error flag, then the "string" branch -----------------------------

def logged(caplog) -> list:
    """Each log record: (logger, level, message, exception type, exception text)."""
    return [(record.name, record.levelno, record.getMessage(), record.exc_info[0],
             str(record.exc_info[1])) for record in caplog.records]


def system_error(app, body: bytes, message: str = "echo") -> str:
    response = call_app(app, body)
    assert response.status == 200
    answer = read_answer(response.body, message)
    assert answer.has_call_response and answer.is_error
    return answer.datum


def test_unknown_message_is_a_system_error(app):
    body = call_body("shout", protocol=WITH_SHOUT, send_protocol=True)
    assert system_error(app, body, "shout") == "Unknown message: shout"


@pytest.mark.parametrize("protocol_text", ['{"protocol": "Empty"}',
                                           '{"protocol": "Empty", "messages": {}}'])
def test_client_protocol_without_messages_gets_unknown_message(app, protocol_text):
    # Valid per the spec ("messages" is optional); avro leaves its messages as None.
    body = call_body(protocol_text=protocol_text,
                     client_hash=avro.protocol.parse(protocol_text).md5)
    assert system_error(app, body) == "Unknown message: echo"


def test_system_errors_quoting_the_client_stay_short(app):
    name = "x" * 10_000
    shouting = protocol_with(messages={name: SHOUT})
    error = system_error(app, call_body(name, protocol=shouting, send_protocol=True), name)
    assert error == f"Unknown message: {name}"[: avrohttp.responder.MAX_ERROR_CHARS]
    not_json = call_body(protocol_text="{" * 5000, client_hash=b"\x02" * 16)
    assert system_error(app, not_json) == (
        "Invalid client protocol: Error parsing JSON: " + "{" * 5000
    )[: avrohttp.responder.MAX_ERROR_CHARS]


def test_truncated_parameters_are_a_system_error(app):
    body = frame(handshake_request() + call_request("echo", {"query": "Hello World"})[:-4])
    assert system_error(app, body) == (
        "Invalid parameters for echo: Read 7 bytes, expected 11 bytes")


def test_invalid_utf8_in_parameters_is_a_system_error(app):
    params = encode(avro.schema.parse('"bytes"'), b"\xff\xfe")  # same wire form as a string
    body = frame(handshake_request() + call_head("echo") + params)
    assert system_error(app, body) == ("Invalid parameters for echo: 'utf-8' codec can't decode "
                                       "byte 0xff in position 0: invalid start byte")


def test_deeply_nested_parameters_are_a_system_error(app):
    # A client type may be recursive; a few kB of data then nest deeper than Python's stack.
    node = {"type": "record", "name": "Node", "fields": [{"name": "next",
                                                          "type": ["null", "Node"]}]}
    request = [{"name": "query", "type": "string"}, {"name": "tail", "type": ["null", node]}]
    client = protocol_with(messages={"echo": {"request": request, "response": "string"}})
    params = encode(STRING, "Hello World") + b"\x02" * 5000 + b"\x00"  # 5000 levels deep
    body = frame(handshake_request(client, send_protocol=True) + call_head("echo") + params)
    # Python words its RecursionError after the place where the stack runs out.
    assert re.fullmatch(r"Invalid parameters for echo: maximum recursion depth exceeded"
                        r"( in comparison| while calling a Python object)?",
                        system_error(app, body))
    shallow = encode(STRING, "Hello World") + b"\x02" * 10 + b"\x00"
    body = frame(handshake_request(client, send_protocol=True) + call_head("echo") + shallow)
    assert read_answer(call_app(app, body).body).datum == "Hello World"


def varint(n: int) -> bytes:
    return encode(avro.schema.parse('"long"'), n)


def test_many_zero_byte_elements_are_a_system_error(monkeypatch, app):
    # A client's own field, unknown to the server and so skipped: arrays of arrays of nulls.
    # Without the lower limit, these few kB would keep the server busy for over a second.
    monkeypatch.delenv("AVRO_MAX_COLLECTION_ITEMS", raising=False)
    nulls = {"type": "array", "items": {"type": "array", "items": "null"}}
    request = [{"name": "junk", "type": nulls}, {"name": "query", "type": "string"}]
    client = protocol_with(messages={"echo": {"request": request, "response": "string"}})
    junk = varint(1000) + (varint(10_000_000) + varint(0)) * 1000 + varint(0)
    params = junk + encode(STRING, "Hello World")
    body = frame(handshake_request(client, send_protocol=True) + call_head("echo") + params)
    assert system_error(app, body) == (
        "Invalid parameters for echo: Cannot read more than 100000 zero-byte collection elements"
        " in a single datum (reached 10000000); raise the AVRO_MAX_COLLECTION_ITEMS limit if"
        " this is legitimate.")
    few = varint(2) + (varint(3) + varint(0)) * 2 + varint(0) + encode(STRING, "Hello World")
    body = frame(handshake_request(client, send_protocol=True) + call_head("echo") + few)
    assert read_answer(call_app(app, body).body).datum == "Hello World"


def test_truncated_call_request_is_a_system_error(app):
    body = frame(handshake_request() + b"\x02")  # metadata map says one entry, then nothing
    assert system_error(app, body) == "Invalid call request: Read 0 bytes, expected 1 bytes"


def test_the_2010_protocol_with_errors_string_is_a_system_error(app):
    # The original tutorial declared "errors": ["string"], which avro 1.12 cannot parse.
    data = json.loads(PROTOCOL_JSON)
    for message in data["messages"].values():
        message["errors"] = ["string"]
    body = call_body(protocol_text=json.dumps(data), client_hash=b"\x01" * 16)
    assert system_error(app, body) == "Invalid client protocol: string type already in Union"


def test_handler_exception_is_a_short_system_error_and_a_logged_traceback(caplog):
    class Broken(server.EchoResponder):
        def handle_echo(self, query):
            raise RuntimeError("secret detail at /srv/app/server.py")

    app = avrohttp.make_application(Broken())
    with caplog.at_level(logging.ERROR, logger="avrohttp.responder"):
        assert system_error(app, call_body()) == "Internal error in echo"
    assert logged(caplog) == [("avrohttp.responder", logging.ERROR, "handler for 'echo' failed",
                               RuntimeError, "secret detail at /srv/app/server.py")]


def test_handler_returning_the_wrong_type_is_a_system_error(caplog):
    class Wrong(server.EchoResponder):
        def handle_split(self, query):
            return len(query)

    with caplog.at_level(logging.ERROR, logger="avrohttp.responder"):
        assert system_error(avrohttp.make_application(Wrong()), call_body("split"),
                            "split") == "Internal error in split"
    # avro's own message for it is the repr of a schema object: only the log gets it.
    [(name, level, message, error_type, _)] = logged(caplog)
    assert (name, level, message, error_type) == (
        "avrohttp.responder", logging.ERROR, "handler for 'split' failed",
        avro.errors.AvroTypeException)


def test_avro_remote_exception_from_a_handler_keeps_its_message():
    class Refusing(server.EchoResponder):
        def handle_echo(self, query):
            raise avro.errors.AvroRemoteException("no echo today")

    assert system_error(avrohttp.make_application(Refusing()), call_body()) == "no echo today"


def test_plain_avro_ipc_responder_still_drops_the_error():
    """Why avrohttp.Responder exists: if avro fixes this, this test fails and the fix can go."""

    class Plain(avro.ipc.Responder):
        def invoke(self, message, request):
            return request["query"]

    payload = Plain(EchoProtocol).respond(handshake_request(WITH_SHOUT, send_protocol=True)
                                          + call_request("shout", {"query": "hi"}, WITH_SHOUT))
    answer = read_answer(frame(payload))
    assert not answer.has_call_response  # a bare handshake: the system error was lost


# --- The protocol cache ---------------------------------------------------------------------

def test_protocol_cache_is_bounded():
    responder = AnyResponder(EchoProtocol, max_cached_protocols=50)
    app = avrohttp.make_application(responder)
    for n in range(500):
        client = another_protocol(n)
        answer = read_answer(call_app(app, call_body(protocol=client, send_protocol=True)).body)
        assert answer.handshake["match"] == "BOTH"
        assert len(responder.protocol_cache) <= 50
    assert len(responder.protocol_cache) == 50


def test_server_protocol_is_known_even_after_the_cache_is_flooded():
    responder = AnyResponder(EchoProtocol, max_cached_protocols=5)
    app = avrohttp.make_application(responder)
    for n in range(20):
        call_app(app, call_body(protocol=another_protocol(n), send_protocol=True))
    assert read_answer(call_app(app, call_body()).body).handshake["match"] == "BOTH"


def test_a_protocol_is_cached_only_under_its_own_hash(app):
    # A client may claim another client's hash for a protocol of its own.
    victim = another_protocol()
    planted = call_body(protocol=WITH_SHOUT, send_protocol=True, client_hash=victim.md5)
    call_app(app, planted)
    answer = read_answer(call_app(app, call_body(protocol=victim)).body)
    assert answer.handshake["match"] == "NONE"  # nothing was cached under the victim's hash
