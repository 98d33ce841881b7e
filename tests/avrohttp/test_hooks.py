"""Call hooks (avrohttp.hooks): what they are told on the server and on the client, for every
outcome; the metadata they read and write; a hook that fails; no change without a hook."""

import logging

import avro.errors
import pytest

import avrohttp
import server
from avrohttp import codec, hooks
from conftest import LocalTransceiver, call_app
from outcomes_server import OUTCOMES_PROTOCOL, OutcomesResponder
from wire import call_body, call_head, frame, handshake_request

class Recorder(avrohttp.CallHook):
    """Notes each call, with what before() and after() saw."""

    def __init__(self) -> None:
        self.events = []

    def before(self, call):
        self.events.append(("before", call.message, call.outcome))

    def after(self, call):
        self.events.append(("after", call.message, call.outcome))
        self.last = call


def outcomes_body(query: str = "x", message: str = "echo") -> bytes:
    return call_body(message, query, protocol=OUTCOMES_PROTOCOL,
                     server_hash=OUTCOMES_PROTOCOL.md5)


def outcomes_handshake(**options) -> bytes:
    return handshake_request(OUTCOMES_PROTOCOL, server_hash=OUTCOMES_PROTOCOL.md5, **options)


@pytest.fixture
def recorded():
    """An Outcomes application whose responder has a Recorder: yields (app, recorder)."""
    recorder = Recorder()
    return avrohttp.make_application(OutcomesResponder(call_hooks=[recorder])), recorder


@pytest.mark.parametrize("body, message, outcome", [
    (outcomes_body("hi"), "echo", hooks.ANSWERED),
    (outcomes_body("refuse"), "echo", hooks.DECLARED_ERROR),
    (outcomes_body("crash"), "echo", hooks.SYSTEM_ERROR),
    # Parameters that do not decode: a string of 8 bytes that has 2.
    (frame(outcomes_handshake() + call_head("echo") + b"\x10ab"), "echo",
     hooks.SYSTEM_ERROR),
    (frame(outcomes_handshake() + call_head("nope")), "nope",
     hooks.UNKNOWN_MESSAGE),
    (frame(outcomes_handshake() + call_head("")), "", hooks.PING),
    # A client protocol the server does not know, not sent: handshake NONE.
    (frame(outcomes_handshake(client_hash=b"\x01" * 16)), None,
     hooks.HANDSHAKE),
    (frame(b"\x01"), None, hooks.BAD_REQUEST),  # framed, but no handshake in it
    (b"not framed", None, hooks.BAD_REQUEST),
], ids=["answered", "declared", "crash", "bad-parameters", "unknown", "ping", "none",
        "no-handshake", "not-framed"])
def test_each_outcome_is_told_once_after_before(recorded, body, message, outcome):
    app, recorder = recorded
    call_app(app, body)
    assert recorder.events == [("before", message, None), ("after", message, outcome)]
    call = recorder.last
    assert call.seconds > 0
    assert call.request_bytes == (len(body) - 8 if body != b"not framed" else len(body))
    if outcome == hooks.BAD_REQUEST:
        assert call.response_bytes == 0
    else:
        assert call.response_bytes > 0


def test_the_handler_runs_between_before_and_after(recorded):
    app, recorder = recorded
    seen = []
    responder_handle = OutcomesResponder.handle_echo

    def handle_echo(self, query):
        seen.append(list(recorder.events))
        return responder_handle(self, query)

    OutcomesResponder.handle_echo = handle_echo
    try:
        call_app(app, outcomes_body("hi"))
    finally:
        OutcomesResponder.handle_echo = responder_handle
    assert seen == [[("before", "echo", None)]]


# docs/metrics.md shows this one.
class TraceIds(avrohttp.CallHook):
    """Send the client's trace id back with the answer."""

    def before(self, call: avrohttp.Call) -> None:
        call.response_meta["trace-id"] = call.request_meta.get("trace-id", b"")


class ClientTrace(avrohttp.CallHook):
    def before(self, call):
        call.request_meta["trace-id"] = b"abc123"

    def after(self, call):
        self.answer_meta = call.response_meta


def test_metadata_goes_from_client_hook_to_server_hook_and_back():
    responder = OutcomesResponder(call_hooks=[TraceIds()])
    client_hook, client_recorder = ClientTrace(), Recorder()
    requestor = avrohttp.Requestor(OUTCOMES_PROTOCOL, LocalTransceiver(responder),
                                   call_hooks=[client_hook, client_recorder])
    for _ in range(2):  # the first call has the full handshake, the second the short one
        assert requestor.request("echo", {"query": "hi"}) == "hi"
        assert client_hook.answer_meta == {"trace-id": b"abc123"}
    assert client_recorder.last.outcome == hooks.ANSWERED


def test_response_metadata_is_avros_encoding_and_sent_only_when_written():
    plain = OutcomesResponder()
    traced = OutcomesResponder(call_hooks=[TraceIds()])
    request = codec.unframe(outcomes_body("hi"))
    untraced = plain.respond(request)
    answer = traced.respond(request)
    meta = codec.encode_metadata({"trace-id": b""})
    assert meta != codec.EMPTY_META
    # The handshake response BOTH is four zero bytes; then the call response's metadata.
    assert untraced[:5] == b"\x00" * 4 + codec.EMPTY_META
    assert answer == untraced[:4] + meta + untraced[5:]
    assert hooks.CallHook().before(hooks.Call()) is None  # the base hook does nothing


class CannedTransceiver:
    """Answers every call with the same bytes."""

    remote_name = ("canned", 0)

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def transceive(self, request: bytes) -> bytes:
        return self.answer


# Call responses after a BOTH handshake (four zero bytes) and empty metadata: the answer
# "hi"; a system error (the errors union's branch 0, a string); the declared error Refused
# (branch 1, a record of one string). Written by hand, so that the client's reading is
# checked apart from the server's writing.
BOTH = b"\x00" * 4 + codec.EMPTY_META
CANNED = {
    hooks.ANSWERED: BOTH + b"\x00" + b"\x04hi",
    hooks.SYSTEM_ERROR: BOTH + b"\x01" + b"\x00" + b"\x06bug",
    hooks.DECLARED_ERROR: BOTH + b"\x01" + b"\x02" + b"\x0erefused",
}


@pytest.mark.parametrize("outcome", sorted(CANNED))
def test_client_hooks_see_each_outcome(outcome):
    recorder = Recorder()
    requestor = avrohttp.Requestor(OUTCOMES_PROTOCOL, CannedTransceiver(CANNED[outcome]),
                                   call_hooks=[recorder])
    try:
        requestor.request("echo", {"query": "hi"})
    except avro.errors.AvroRemoteException:
        assert outcome != hooks.ANSWERED
    assert recorder.events == [("before", "echo", None), ("after", "echo", outcome)]
    assert recorder.last.request_bytes > 0 and recorder.last.response_bytes > 0


def test_a_client_call_that_gets_no_answer_is_failed():
    recorder = Recorder()
    client = avrohttp.Client(OUTCOMES_PROTOCOL, "127.0.0.1", 1, timeout=1,
                             call_hooks=[recorder])
    with pytest.raises(avrohttp.CallFailed):
        client.call("echo", query="hi")
    assert recorder.events[-1] == ("after", "echo", hooks.FAILED)


class Broken(avrohttp.CallHook):
    def before(self, call):
        raise ValueError("a bug in a hook")

    def after(self, call):
        raise ValueError("another bug in a hook")


def test_a_hook_that_raises_is_logged_once_and_the_calls_go_on(caplog):
    recorder = Recorder()
    responder = server.EchoResponder()
    responder.hooks.append(Broken())
    responder.hooks.append(recorder)
    app = avrohttp.make_application(responder)
    with caplog.at_level(logging.ERROR, logger="avrohttp"):
        for _ in range(3):
            response = call_app(app, call_body("echo", "still here"))
            assert response.status == 200 and b"still here" in response.body
    failures = [r for r in caplog.records if "call hook Broken" in r.getMessage()]
    assert len(failures) == 2  # before and after, once each
    assert responder.hooks.failures == 6
    assert [event[2] for event in recorder.events if event[0] == "after"] == ["answered"] * 3


def test_with_a_hook_the_answers_are_the_same_bytes():
    plain, hooked = server.EchoResponder(), server.EchoResponder()
    hooked.hooks.append(avrohttp.CallHook())
    for body in (call_body("echo", "x" * 100), call_body("split", "abcd"), call_body(""),
                 call_body("echo", send_protocol=True)):
        request = codec.unframe(body)
        assert hooked.respond(request) == plain.respond(request)
