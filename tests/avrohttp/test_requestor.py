"""avrohttp.Requestor's fast path, taken once the handshake is settled: it sends the bytes
that avro.ipc sends, and reads every answer as the general path reads it.

The general path is checked against avro.ipc in test_codec.py; here a call on the fast path
(a requestor's second call and after) is compared with avro.ipc's Requestor through servers
that change under it, and with the general path (a requestor's first call) for answers that
are not a plain BOTH: errors, metadata, and broken bytes.
"""

import json

import avro.errors
import avro.ipc
import avro.protocol
import pytest

import avrohttp
import avrohttp.responder
from avrohttp import codec, hooks
from conftest import AnyResponder, LocalTransceiver, PlainRequestor
from protocol import PROTOCOL_JSON, EchoProtocol


# Both the avro.ipc Requestor and ours, each test with avro.ipc's caches to itself.
pytestmark = pytest.mark.usefixtures("fresh_avro_ipc_caches")


def reversing(protocol: avro.protocol.Protocol) -> avrohttp.responder.Responder:
    responder = AnyResponder(protocol)
    responder.invoke = lambda message, request: request["query"][::-1]
    return responder


def renamed(name: str) -> avro.protocol.Protocol:
    """The echo protocol under another name: another hash, the same messages."""
    return avro.protocol.parse(json.dumps({**json.loads(PROTOCOL_JSON), "protocol": name}))


def test_the_fast_path_sends_avro_ipcs_bytes_as_the_server_changes():
    """BOTH, then a server on another protocol (NONE, a resend, CLIENT), its BOTHs, and a
    server on ours again (CLIENT): every request is avro.ipc's, every answer right."""
    servers = [EchoProtocol, renamed("Other"), EchoProtocol, renamed("Third")]
    queries = ["a", "hé", "x" * 100, ""]
    transcripts = []
    for requestor_class in (avrohttp.Requestor, PlainRequestor):
        transceiver = LocalTransceiver(reversing(servers[0]))
        requestor = requestor_class(EchoProtocol, transceiver)
        answers = []
        for protocol in servers:
            transceiver.responder = reversing(protocol)
            for query in queries:
                answers.append(requestor.request("echo", {"query": query}))
            if requestor_class is avrohttp.Requestor:  # or the test would prove nothing
                assert "echo" in requestor._plain_calls
        assert answers == [query[::-1] for _ in servers for query in queries]
        transcripts.append(transceiver.sent)
    fast, plain = transcripts
    assert len(fast) == len(servers) * len(queries) + 2  # two resends with our protocol
    assert fast == plain


CANNED_JSON = json.dumps({
    "protocol": "Canned",
    "types": [{"type": "error", "name": "Refused", "fields": [{"name": "why", "type": "string"}]}],
    "messages": {
        "echo": {"request": [{"name": "query", "type": "string"}], "response": "string",
                 "errors": ["Refused"]},
        "count": {"request": [], "response": "long"},
        "note": {"request": [{"name": "text", "type": "string"}], "response": "null",
                 "one-way": True},
    },
})
# A BOTH handshake (four zero bytes), then empty metadata: the start of every plain answer.
BOTH = b"\x00" * 4 + codec.EMPTY_META
ANSWERS = {
    "plain": ("echo", BOTH + b"\x00\x04hi"),
    "empty string": ("echo", BOTH + b"\x00\x00"),
    "bytes after the answer": ("echo", BOTH + b"\x00\x04hi" + b"more"),
    "long string": ("echo", BOTH + b"\x00" + codec.encode_long(200) + b"y" * 200),
    "string cut short": ("echo", BOTH + b"\x00\x16abc"),
    "no string at all": ("echo", BOTH + b"\x00"),
    "not UTF-8": ("echo", BOTH + b"\x00\x04\xff\xfe"),
    "negative length": ("echo", BOTH + b"\x00\x03"),
    "system error": ("echo", BOTH + b"\x01\x00\x06bug"),
    "declared error": ("echo", BOTH + b"\x01\x02\x06no!"),
    "error outside the union": ("echo", BOTH + b"\x01\x04\x06no!"),
    "metadata": ("echo", b"\x00" * 4 + codec.encode_metadata({"k": b"v"}) + b"\x00\x04hi"),
    "a long": ("count", BOTH + b"\x00" + codec.encode_long(-12345)),
    "one-way": ("note", BOTH + b"\x00"),
    "empty answer": ("echo", b""),
    "handshake only": ("echo", b"\x00" * 4),
}
PARAMETERS = {"echo": {"query": "hi"}, "count": {}, "note": {"text": "hi"}}


class Canned:
    """Answers each call with the next of these answers."""

    remote_name = ("canned", 0)

    def __init__(self, *answers: bytes) -> None:
        self.answers = list(answers)

    def transceive(self, request: bytes) -> bytes:
        return self.answers.pop(0)


def outcome(requestor: avrohttp.Requestor, message: str) -> tuple:
    try:
        return ("answer", requestor.request(message, PARAMETERS[message]))
    except Exception as e:
        return (type(e), str(e), getattr(e, "name", None), getattr(e, "datum", None))


@pytest.mark.parametrize("with_hooks", [False, True], ids=["no hooks", "hooks"])
@pytest.mark.parametrize("case", ANSWERS)
def test_the_fast_path_reads_every_answer_as_the_general_path_does(case, with_hooks):
    message, answer = ANSWERS[case]
    first = BOTH + b"\x00" + {"echo": b"\x04hi", "count": b"\x02", "note": b""}[message]
    seen = {}
    for path, answers in (("fast", (first, answer)), ("general", (answer,))):
        recorder = Recorder()
        requestor = avrohttp.Requestor(CANNED_JSON, Canned(*answers),
                                       call_hooks=[recorder] if with_hooks else [])
        if path == "fast":
            assert outcome(requestor, message)[0] == "answer"
        seen[path] = (outcome(requestor, message), recorder.seen)
        if path == "fast":  # the second call took it
            assert message in requestor._plain_calls
    assert seen["fast"] == seen["general"]


class Recorder(avrohttp.CallHook):
    """What a hook sees of the last call."""

    seen = None

    def after(self, call: avrohttp.Call) -> None:
        self.seen = (call.message, call.outcome, call.request_bytes, call.response_bytes,
                     call.request_meta, call.response_meta)


class Traced(avrohttp.CallHook):
    def before(self, call: avrohttp.Call) -> None:
        call.request_meta["trace-id"] = b"abc"


def test_metadata_from_a_hook_goes_out_on_every_call():
    """A call with request metadata is not a plain call: the general path writes it."""
    transceiver = LocalTransceiver(reversing(EchoProtocol))
    requestor = avrohttp.Requestor(EchoProtocol, transceiver)
    for _ in range(2):
        assert requestor.request("echo", {"query": "ab"}) == "ba"
    assert "echo" in requestor._plain_calls
    requestor.hooks.append(Traced())
    assert requestor.request("echo", {"query": "ab"}) == "ba"
    meta = codec.encode_metadata({"trace-id": b"abc"})
    assert transceiver.sent[-1] == (transceiver.sent[-2][:16 + 18] + meta
                                    + transceiver.sent[-2][16 + 18 + 1:])


def test_hooks_see_the_same_on_the_fast_path_as_on_the_first_call():
    recorder = Recorder()
    requestor = avrohttp.Requestor(EchoProtocol, LocalTransceiver(reversing(EchoProtocol)),
                                   call_hooks=[recorder])
    seen = []
    for _ in range(3):
        requestor.request("echo", {"query": "same"})
        seen.append(recorder.seen)
    assert "echo" in requestor._plain_calls
    assert seen[0] == seen[1] == seen[2] == ("echo", hooks.ANSWERED, seen[0][2], seen[0][3],
                                             {}, {})


def test_a_message_that_our_protocol_lacks_is_refused_before_anything_is_sent():
    transceiver = LocalTransceiver(reversing(EchoProtocol))
    requestor = avrohttp.Requestor(EchoProtocol, transceiver)
    requestor.request("echo", {"query": "a"})
    requestor.request("echo", {"query": "a"})
    with pytest.raises(avro.errors.AvroException, match="^Unknown message: shout$"):
        requestor.request("shout", {"query": "a"})
    assert len(transceiver.sent) == 2


def test_a_plain_call_is_taken_only_once_settled_and_without_hooks():
    """Requestor.request takes PlainCall only when the general path would send the same
    bytes; a NONE answer to it (SEND_AGAIN) is sent again with our protocol."""
    transceiver = LocalTransceiver(reversing(EchoProtocol))
    requestor = avrohttp.Requestor(EchoProtocol, transceiver)
    assert requestor.plain_call("echo") is None  # no answer yet: nothing is settled
    assert requestor.request("echo", {"query": "ab"}) == "ba"
    plain = requestor.plain_call("echo")
    assert plain.request({"query": "ab"}) == transceiver.sent[-1]
    requestor.hooks.append(avrohttp.CallHook())
    assert requestor.plain_call("echo") is None  # a call with hooks takes the general path
    requestor.hooks.hooks.clear()
    other = reversing(renamed("Other"))
    none = other.respond(plain.request({"query": "ab"}))
    assert plain.answer(none) is avrohttp.requestor.SEND_AGAIN
    assert requestor.plain_call("echo") is None  # the handshake is open again
    transceiver.responder = other
    assert requestor.request("echo", {"query": "ab"}) == "ba"
    assert b'"protocol"' in transceiver.sent[-1]  # our protocol went with it
