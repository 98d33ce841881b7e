"""The call's context (avrohttp.context) on both hosts, through real sockets: what a handler
reads of its call and the response metadata it writes; the caller's deadline (timeout-ms);
each concurrent call's own context; hooks that refuse a call; and a Responder whose
handlers do not fit its protocol."""

import asyncio
import http.client
import io
import os
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import avro.io
import avro.ipc
import pytest
import trustme

import avrohttp
import server
from avrohttp import hooks
from avrohttp.context import current_call, time_left
from avrohttp.errors import HandlersMismatch
from conftest import ROOT, serving
from outcomes_server import OUTCOMES_PROTOCOL, OutcomesResponder
from protocol import EchoProtocol
from test_metrics import post, scrape_text
from wire import call_head, encode, frame, handshake_request


def post_call(address, query: str = "hi", meta=None, headers=None, ssl_context=None) -> tuple:
    """One echo call, as raw HTTP: (response metadata, is_error, datum, the client's own
    (address, port))."""
    body = frame(handshake_request() + call_head("echo", meta)
                 + encode(EchoProtocol.messages["echo"].request, {"query": query}))
    connection = (http.client.HTTPConnection(*address, timeout=10) if ssl_context is None
                  else http.client.HTTPSConnection(*address, timeout=10, context=ssl_context))
    try:
        connection.request("POST", "/", body, {"Content-Type": "avro/binary", **(headers or {})})
        ours = connection.sock.getsockname()[:2]
        response = connection.getresponse()
        assert response.status == 200
        answer = response.read()
    finally:
        connection.close()
    decoder = avro.io.BinaryDecoder(
        io.BytesIO(avro.ipc.FramedReader(io.BytesIO(answer)).read_framed_message()))
    avro.io.DatumReader(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA).read(decoder)
    response_meta = avro.io.DatumReader(avro.ipc.META_SCHEMA).read(decoder)
    is_error = decoder.read_boolean()
    schema = avro.ipc.SYSTEM_ERROR_SCHEMA if is_error else EchoProtocol.messages["echo"].response
    return response_meta, is_error, avro.io.DatumReader(schema).read(decoder), ours


class Seer(server.EchoResponder):
    """echo notes what its call's context shows, and writes response metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = []

    def handle_echo(self, query: str) -> str:
        call = current_call()
        self.seen.append({
            "call": call, "message": call.message, "request_meta": dict(call.request_meta),
            "headers": call.headers, "peer": call.peer, "certificate": call.peer_certificate,
            "deadline": call.deadline, "time_left": time_left(), "now": time.monotonic()})
        if query == "slow":  # time.sleep is not patched here: the whole host waits with it
            time.sleep(0.4)
        self.seen[-1]["time_left_after"] = call.time_left()
        call.response_meta["seen-by"] = b"seer"
        return query


class SendMeta(avrohttp.CallHook):
    """Sends this metadata (on a client); keeps the last call, and its response metadata."""

    def __init__(self, **meta: bytes) -> None:
        self.meta = meta

    def before(self, call: avrohttp.Call) -> None:
        call.request_meta.update(self.meta)
        self.call = call

    def after(self, call: avrohttp.Call) -> None:
        self.response_meta = call.response_meta


@pytest.mark.parametrize("with_hooks", [False, True])
def test_a_handler_reads_its_calls_context_and_writes_response_meta(host, with_hooks):
    responder, on_server, on_client = Seer(), SendMeta(), SendMeta(user=b"grace")
    if with_hooks:  # the server then answers through its hooks' path
        responder.hooks.append(on_server)
    with serving(responder, host) as address:
        meta, is_error, datum, ours = post_call(address, "hi", {"user": b"ada"},
                                                {"X-Request-Id": "r-17"})
        with avrohttp.Client(EchoProtocol, *address, timeout=5, call_hooks=[on_client]) as client:
            assert client.call("echo", query="one") == "one"
    assert (is_error, datum, meta) == (False, "hi", {"seen-by": b"seer"})
    seen, by_client = responder.seen
    assert (seen["message"], seen["request_meta"]) == ("echo", {"user": b"ada"})
    assert seen["headers"]["x-request-id"] == "r-17"  # names in lower case
    assert seen["headers"]["content-type"] == "avro/binary"
    assert seen["peer"] == ours
    assert seen["certificate"] is None  # no TLS
    assert (seen["deadline"], seen["time_left"]) == (None, None)  # no timeout-ms sent
    if with_hooks:  # the handler's call is the one that the hooks see
        assert by_client["call"] is on_server.call
    assert by_client["request_meta"]["user"] == b"grace"
    assert on_client.response_meta == {"seen-by": b"seer"}


def test_current_call_and_time_left_are_none_outside_a_handler():
    assert (current_call(), time_left()) == (None, None)


# --- Deadlines -------------------------------------------------------------------------------

def calls_counted(address, outcome: str) -> float:
    """The server's count of echo calls with this outcome, from its /metrics."""
    return scrape_text(post(address[1], b"", path="/metrics", method="GET")[1].decode()).get(
        ("avro_server_calls_total", (("message", "echo"), ("outcome", outcome))), 0)


# Not whole milliseconds up to a day: taken as no deadline at all.
NO_DEADLINE = [b"soon", b"-5", b"1.5", b"86400001", b""]


def test_a_plain_handler_has_the_time_its_caller_gave_and_is_not_interrupted(host):
    responder = Seer()
    with serving(responder, host, metrics=True) as address:
        for _ in range(2):  # the second call's start is remembered: its deadline is its own
            assert post_call(address, meta={"timeout-ms": b"3000"})[1:3] == (False, "hi")
            time.sleep(0.3)
        assert post_call(address, "slow", {"timeout-ms": b"100"})[1:3] == (False, "slow")
        not_started = post_call(address, "none left", {"timeout-ms": b"0"})
        counted = calls_counted(address, "deadline_exceeded")
        for value in NO_DEADLINE:
            assert post_call(address, meta={"timeout-ms": value})[1:3] == (False, "hi")
    assert not_started[1:3] == (True, "Deadline exceeded: echo was not started, as its "
                                      "caller's time had run out")
    assert counted == 1
    first, second, slow, *no_deadline = responder.seen  # "none left" did not run
    for seen in first, second:
        assert 2.5 < seen["time_left"] <= 3.0
        assert seen["deadline"] - seen["now"] == pytest.approx(seen["time_left"], abs=0.05)
    assert slow["time_left"] <= 0.1 and slow["time_left_after"] < -0.2
    assert [seen["time_left"] for seen in no_deadline] == [None] * len(NO_DEADLINE)


class SlowAsync(server.EchoResponder):
    """echo awaits `query` seconds, noting whether it was cancelled meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.events = []

    async def handle_echo(self, query: str) -> str:
        self.events.append(("started", time_left()))
        try:
            await asyncio.sleep(float(query))
        except asyncio.CancelledError:
            self.events.append(("cancelled", time_left()))
            raise
        self.events.append(("finished", time_left()))
        return query


def test_an_async_handler_is_cancelled_at_its_callers_deadline():
    responder = SlowAsync()
    with serving(responder, "asyncio", metrics=True) as address:
        assert post_call(address, "0.1", {"timeout-ms": b"2000"})[1:3] == (False, "0.1")
        started = time.monotonic()
        _, is_error, datum, _ = post_call(address, "3", {"timeout-ms": b"200"})
        waited = time.monotonic() - started
        counted = calls_counted(address, "deadline_exceeded")
    assert (is_error, datum) == (True, "Deadline exceeded: echo was stopped at its caller's "
                                       "deadline")
    # uvloop's clock is read once per turn of the loop, so the cancellation may come a few
    # milliseconds before the deadline on a busy machine: the bounds leave room for that.
    assert 0.15 <= waited < 2
    assert [event for event, _ in responder.events] == [
        "started", "finished", "started", "cancelled"]
    assert responder.events[-1][1] <= 0.05 and counted == 1


# --- Each call its own context ----------------------------------------------------------------

class Overlapping(server.EchoResponder):
    """echo reads its call's metadata, gives way to the other calls, reads it again, and
    answers with what it read each time; most_in_flight counts the calls that overlapped."""

    in_flight = most_in_flight = 0

    def first(self) -> bytes:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return current_call().request_meta["n"]

    def then(self, first: bytes) -> str:
        self.in_flight -= 1
        call = current_call()
        call.response_meta["n"] = call.request_meta["n"]
        return f"{first.decode()} {call.request_meta['n'].decode()}"


class GreenOverlapping(Overlapping):
    def handle_echo(self, query: str) -> str:
        import eventlet
        first = self.first()
        eventlet.sleep(0.2)  # the hub runs the other green threads meanwhile
        return self.then(first)


class AsyncOverlapping(Overlapping):
    async def handle_echo(self, query: str) -> str:
        first = self.first()
        await asyncio.sleep(0.2)
        return self.then(first)


def test_concurrent_calls_each_see_their_own_context(host):
    responder = GreenOverlapping() if host == "eventlet" else AsyncOverlapping()
    sent = [SendMeta(n=b"%d" % n) for n in range(6)]

    def call(hook: SendMeta) -> str:
        with avrohttp.Client(EchoProtocol, *address, timeout=10, call_hooks=[hook]) as client:
            return client.call("echo", query="x")

    with serving(responder, host) as address, ThreadPoolExecutor(len(sent)) as threads:
        answers = list(threads.map(call, sent))
    assert responder.most_in_flight >= 3  # they did overlap
    assert answers == [f"{n} {n}" for n in range(6)]
    assert [hook.response_meta for hook in sent] == [{"n": b"%d" % n} for n in range(6)]


# --- Mutual TLS: the client's certificate ------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway CA (trustme), a server certificate for 127.0.0.1, and a client's one."""
    directory = tmp_path_factory.mktemp("context-pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(directory / "ca.pem")
    for name, identity, common_name in (("server", "127.0.0.1", None),
                                        ("client", "client.example", "ada")):
        issued = ca.issue_cert(identity, common_name=common_name)
        issued.cert_chain_pems[0].write_to_path(directory / f"{name}-cert.pem")
        issued.private_key_pem.write_to_path(directory / f"{name}-key.pem")
    return directory


@pytest.mark.parametrize("mutual", [True, False])
def test_a_handler_sees_the_client_certificate_with_client_ca(pki, host, mutual):
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if mutual:
        context.load_cert_chain(str(pki / "client-cert.pem"), str(pki / "client-key.pem"))
    responder = Seer()
    with serving(responder, host, certfile=str(pki / "server-cert.pem"),
                 keyfile=str(pki / "server-key.pem"),
                 client_ca=str(pki / "ca.pem") if mutual else None) as address:
        assert post_call(address, ssl_context=context)[1:3] == (False, "hi")
    certificate = responder.seen[0]["certificate"]
    assert (certificate is not None) == mutual  # without --client-ca, there is none
    if mutual:
        assert (("commonName", "ada"),) in certificate["subject"]
        assert certificate["subjectAltName"] == (("DNS", "client.example"),)


# --- Hooks that refuse a call -----------------------------------------------------------------

class Refuse(avrohttp.CallHook):
    """Refuses the calls whose `refuse` metadata names its kind; notes what it saw."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.events = []

    def before(self, call: avrohttp.Call) -> None:
        self.events.append(("before", current_call() is call))
        if self.kind.encode() in call.request_meta.get("refuse", b"").split(b","):
            if self.kind == "declared":
                raise avrohttp.DeclaredError("Refused", {"why": "no entry"})
            raise avrohttp.RemoteSystemError(f"refused by the {self.kind} hook")

    def after(self, call: avrohttp.Call) -> None:
        self.events.append(("after", call.outcome))


class Counting(OutcomesResponder):
    calls = 0

    def handle_echo(self, query: str) -> str:
        self.calls += 1
        return super().handle_echo(query)


DECLARED = (avrohttp.DeclaredError, "Refused: {'why': 'no entry'}", hooks.DECLARED_ERROR)
SYSTEM = (avrohttp.RemoteSystemError, "refused by the system hook", hooks.SYSTEM_ERROR)


@pytest.mark.parametrize("kinds, error", [("declared", DECLARED), ("system", SYSTEM),
                                          ("system,declared", DECLARED)])
def test_a_hook_refuses_a_call_and_the_handler_does_not_run(host, kinds, error):
    # In this order: when both refuse, the first refusal (the declared error) wins.
    server_hooks = [Refuse("declared"), Refuse("system"), Refuse("other")]
    responder = Counting(call_hooks=server_hooks)
    protocol = str(OUTCOMES_PROTOCOL)
    with serving(responder, host, metrics=True) as address:
        with avrohttp.Client(protocol, *address, timeout=5) as plain:
            assert plain.call("echo", query="hi") == "hi"
        with avrohttp.Client(protocol, *address, timeout=5,
                             call_hooks=[SendMeta(refuse=kinds.encode())]) as refused:
            with pytest.raises(error[0]) as raised:
                refused.call("echo", query="hi")
        counted = calls_counted(address, error[2])
    assert str(raised.value) == error[1]
    assert responder.calls == 1  # the first call only
    for hook in server_hooks:  # every hook's before() ran, and its after() saw the outcome
        assert hook.events == [("before", True), ("after", hooks.ANSWERED),
                               ("before", True), ("after", error[2])]
    assert counted == 1


# --- Handlers that do not fit the protocol ----------------------------------------------------

def test_a_responder_that_overrides_invoke_is_not_checked():
    class Dispatcher(avrohttp.Responder):
        def invoke(self, message, request):
            return request["query"].upper()

        def handle_nothing(self) -> None:  # not a handler here: invoke dispatches
            pass

    with serving(Dispatcher(EchoProtocol)) as address:
        assert post_call(address)[1:3] == (False, "HI")


MISMATCHED = """\
import avrohttp
from protocol import EchoProtocol


class Typo(avrohttp.Responder):
    def __init__(self):
        super().__init__(EchoProtocol)

    def handle_echo(self, query):
        return query

    handle_splt = handle_echo
"""


@pytest.fixture
def mismatched(tmp_path, monkeypatch):
    """A module with a Responder whose handle_splt is a typo, and a program that serves it
    with avrohttp.cli.main: yields their directory, put on sys.path."""
    (tmp_path / "mismatched.py").write_text(MISMATCHED)
    (tmp_path / "serve_mismatched.py").write_text(
        "from avrohttp import cli\nfrom mismatched import Typo\nraise SystemExit(cli.main(Typo))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("mismatched", None)


MISMATCH = ("Typo does not fit the protocol AvroEcho: no handle_split for the message split; "
            "handle_splt answers no message of the protocol (its messages: echo, split)")


def test_a_missing_handler_and_a_typo_are_named_when_the_responder_is_made(mismatched):
    from mismatched import Typo
    with pytest.raises(HandlersMismatch) as raised:
        Typo()
    assert str(raised.value) == MISMATCH
    assert isinstance(raised.value, TypeError)


def run_in(directory, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args, "--port", "0"], cwd=directory,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{directory}:{ROOT}"})


def test_serve_says_in_one_line_that_the_handlers_do_not_fit(mismatched):
    result = run_in(mismatched, "-m", "avrohttp", "serve", "mismatched:Typo")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("python -m avrohttp serve: error: mismatched:Typo() failed: "
                           f"HandlersMismatch: {MISMATCH}")


def test_cli_main_says_in_one_line_that_the_handlers_do_not_fit(mismatched):
    result = run_in(mismatched, "serve_mismatched.py")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.endswith(f" avrohttp cannot serve: {MISMATCH}")
