"""avrohttp.tracing: the spans of a call that goes through two services, on both hosts (their
names, kinds, attributes, parents, order and statuses), the trace context in the call
metadata, a service without OpenTelemetry's SDK in the middle, and the context that the
server's hook makes current, and puts back, wherever after() runs."""

import asyncio
import logging
import threading

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import avrohttp
import server
from avrohttp import hooks
from avrohttp.responder import BadRequest
from avrohttp.tracing import ClientTracing, ServerTracing
from conftest import LocalTransceiver, free_port, serving
from outcomes_server import OUTCOMES_PROTOCOL, OutcomesResponder
from protocol import EchoProtocol
from wire import call_head, handshake_request

ECHO = "rpc.sample.echo.AvroEcho/echo"  # service B's message
OUTCOMES = "test.hooks.Outcomes/echo"  # service A's


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter) -> TracerProvider:
    """A tracer provider of the test's own (not the global one), which keeps every span."""
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class MetaRecorder(avrohttp.CallHook):
    """Notes the metadata of each call request, as the server read it."""

    def __init__(self) -> None:
        self.metas = []

    def before(self, call):
        self.metas.append(dict(call.request_meta))


def service_b(provider, recorder: MetaRecorder) -> avrohttp.Responder:
    """Service B: AvroEcho, traced, whose calls' metadata the recorder notes."""
    responder = server.EchoResponder()
    responder.hooks.append(ServerTracing(EchoProtocol, provider))
    responder.hooks.append(recorder)
    return responder


class ServiceA(OutcomesResponder):
    """Service A: its echo calls B's echo, then answers as OutcomesResponder does ("refuse":
    a declared error; "crash": a bug). Both the server and its client to B are traced."""

    def __init__(self, b_address, provider) -> None:
        super().__init__(call_hooks=[ServerTracing(OUTCOMES_PROTOCOL, provider)])
        self.b_address = b_address
        self.to_b = ClientTracing(EchoProtocol, *b_address, tracer_provider=provider)

    def handle_echo(self, query: str) -> str:
        with avrohttp.Client(EchoProtocol, *self.b_address, timeout=10,
                             call_hooks=[self.to_b]) as b:
            b.call("echo", query=query)
        return super().handle_echo(query)


class AsyncServiceA(ServiceA):
    """The same, with an async def handler that awaits B through AsyncClient: the server's
    hook runs before() in one place, and after() once the handler's awaits are over."""

    async def handle_echo(self, query: str) -> str:
        async with avrohttp.AsyncClient(EchoProtocol, *self.b_address, timeout=10,
                                        call_hooks=[self.to_b]) as b:
            await b.call("echo", query=query)
        return OutcomesResponder.handle_echo(self, query)


@pytest.fixture(params=[("eventlet", ServiceA), ("asyncio", ServiceA),
                        ("asyncio", AsyncServiceA)],
                ids=["eventlet", "asyncio", "asyncio-async-def"])
def hosted(request):
    """A host, and service A's class for it: a plain handler on both hosts, an async def one
    on asyncio (the eventlet host refuses those)."""
    return request.param


def call_a(a_address, provider, query: str) -> object:
    """Call A's echo from a traced client, as the test process's own caller."""
    hook = ClientTracing(OUTCOMES_PROTOCOL, *a_address, tracer_provider=provider)
    with avrohttp.Client(OUTCOMES_PROTOCOL, *a_address, timeout=10, call_hooks=[hook]) as a:
        return a.call("echo", query=query)


def by_kind_and_name(spans) -> dict:
    return {(span.kind, span.name): span for span in spans}


def test_a_call_through_two_services_is_one_trace_of_nested_spans(
        hosted, provider, exporter, caplog):
    host, service_a = hosted
    recorder = MetaRecorder()
    with caplog.at_level(logging.WARNING), serving(service_b(provider, recorder), host) as b, \
            serving(service_a(b, provider), host) as a:
        assert call_a(a, provider, "hi") == "hi"
    spans = exporter.get_finished_spans()
    assert len(spans) == 4
    found = by_kind_and_name(spans)
    client = found[SpanKind.CLIENT, OUTCOMES]
    a_server = found[SpanKind.SERVER, OUTCOMES]
    a_client = found[SpanKind.CLIENT, ECHO]
    b_server = found[SpanKind.SERVER, ECHO]
    nested = [client, a_server, a_client, b_server]

    assert {span.context.trace_id for span in spans} == {client.context.trace_id}
    assert client.parent is None
    for parent, child in zip(nested, nested[1:]):
        assert child.parent.span_id == parent.context.span_id
        assert child.parent.is_remote == (child.kind == SpanKind.SERVER)
        assert parent.start_time < child.start_time and child.end_time < parent.end_time
    assert [span.status.status_code for span in spans] == [StatusCode.UNSET] * 4

    assert dict(client.attributes) == {
        "rpc.system.name": "avro", "rpc.method": OUTCOMES,
        "server.address": a[0], "server.port": a[1]}
    assert dict(a_server.attributes) == {"rpc.system.name": "avro", "rpc.method": OUTCOMES}
    assert dict(a_client.attributes) == {
        "rpc.system.name": "avro", "rpc.method": ECHO,
        "server.address": b[0], "server.port": b[1]}
    assert dict(b_server.attributes) == {"rpc.system.name": "avro", "rpc.method": ECHO}
    assert client.instrumentation_scope.schema_url == "https://opentelemetry.io/schemas/1.44.0"

    # What B read in the call's metadata: W3C's traceparent, naming A's client span.
    [meta] = recorder.metas
    assert meta["traceparent"] == b"00-%032x-%016x-%02x" % (
        client.context.trace_id, a_client.context.span_id, a_client.context.trace_flags)
    # No word from OpenTelemetry: A's hook put back the context it made current, with no
    # "Failed to detach context".
    assert not [record for record in caplog.records if record.name.startswith("opentelemetry")]


@pytest.mark.parametrize("query, outcome, error", [
    ("refuse", hooks.DECLARED_ERROR, avrohttp.DeclaredError),
    ("crash", hooks.SYSTEM_ERROR, avrohttp.RemoteSystemError),
])
def test_an_error_makes_the_spans_of_the_calls_that_ended_with_it_errors(
        hosted, provider, exporter, query, outcome, error):
    host, service_a = hosted
    with serving(service_b(provider, MetaRecorder()), host) as b, \
            serving(service_a(b, provider), host) as a:
        with pytest.raises(error):
            call_a(a, provider, query)
    found = by_kind_and_name(exporter.get_finished_spans())
    for span in found[SpanKind.CLIENT, OUTCOMES], found[SpanKind.SERVER, OUTCOMES]:
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == outcome
    for span in found[SpanKind.CLIENT, ECHO], found[SpanKind.SERVER, ECHO]:  # B answered
        assert span.status.status_code == StatusCode.UNSET
        assert "error.type" not in span.attributes


def test_a_call_that_gets_no_answer_is_a_failed_client_span(hosted, provider, exporter):
    host, service_a = hosted
    nothing_there = ("127.0.0.1", free_port())
    with serving(service_a(nothing_there, provider), host) as a:
        with pytest.raises(avrohttp.RemoteSystemError):  # A's handler failed: CallFailed
            call_a(a, provider, "hi")
    found = by_kind_and_name(exporter.get_finished_spans())
    assert len(found) == 3
    error_types = {key: span.attributes["error.type"] for key, span in found.items()
                   if span.status.status_code == StatusCode.ERROR}
    assert error_types == {(SpanKind.CLIENT, OUTCOMES): hooks.SYSTEM_ERROR,
                           (SpanKind.SERVER, OUTCOMES): hooks.SYSTEM_ERROR,
                           (SpanKind.CLIENT, ECHO): hooks.FAILED}


# In process, without HTTP: a Requestor whose transceiver hands each request to a responder.

def test_a_service_without_the_sdk_passes_the_trace_context_on(provider, exporter):
    recorder = MetaRecorder()
    b = service_b(provider, recorder)
    untraced = trace.NoOpTracerProvider()  # what the global provider is until one is set

    class Middle(OutcomesResponder):
        def handle_echo(self, query: str) -> str:
            to_b = ClientTracing(EchoProtocol, "b", 1, tracer_provider=untraced)
            return avrohttp.Requestor(EchoProtocol, LocalTransceiver(b), [to_b]).request(
                "echo", {"query": query})

    middle = Middle(call_hooks=[ServerTracing(OUTCOMES_PROTOCOL, untraced)])
    caller = ClientTracing(OUTCOMES_PROTOCOL, "a", 1, tracer_provider=provider)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("the caller's own work") as outer:
        requestor = avrohttp.Requestor(OUTCOMES_PROTOCOL, LocalTransceiver(middle), [caller])
        assert requestor.request("echo", {"query": "hi"}) == "hi"
    b_server, client, _ = exporter.get_finished_spans()
    assert client.parent.span_id == outer.get_span_context().span_id
    assert b_server.context.trace_id == outer.get_span_context().trace_id
    assert b_server.parent.span_id == client.context.span_id  # the middle made no span
    assert recorder.metas[0]["traceparent"].startswith(
        b"00-%032x-%016x-" % (client.context.trace_id, client.context.span_id))


UNKNOWN_TO_THE_SERVER = """{
  "protocol": "Outcomes", "namespace": "test.hooks",
  "messages": {"later": {"request": [], "response": "string"}}
}"""


def test_a_message_the_server_lacks_is_other_and_the_handshake_has_no_span(provider,
                                                                          exporter):
    responder = OutcomesResponder(call_hooks=[ServerTracing(OUTCOMES_PROTOCOL, provider)])
    caller = ClientTracing(UNKNOWN_TO_THE_SERVER, "a", 1, tracer_provider=provider)
    requestor = avrohttp.Requestor(UNKNOWN_TO_THE_SERVER, LocalTransceiver(responder),
                                   [caller])
    with pytest.raises(avrohttp.RemoteSystemError):
        requestor.request("later", {})
    # Two requests (the server asked for the client's protocol: NONE), one span each side.
    assert len(requestor.transceiver.sent) == 2
    server_span, client_span = exporter.get_finished_spans()
    assert server_span.name == "avro" and server_span.kind == SpanKind.SERVER
    assert dict(server_span.attributes) == {
        "rpc.system.name": "avro", "rpc.method": "_OTHER", "rpc.method_original": "later",
        "error.type": hooks.UNKNOWN_MESSAGE}
    assert client_span.name == "test.hooks.Outcomes/later"
    assert client_span.attributes["error.type"] == hooks.SYSTEM_ERROR
    assert server_span.parent.span_id == client_span.context.span_id


def test_a_ping_and_a_bad_request_have_no_span(provider, exporter):
    responder = OutcomesResponder(call_hooks=[ServerTracing(OUTCOMES_PROTOCOL, provider)])
    handshake = handshake_request(OUTCOMES_PROTOCOL, server_hash=OUTCOMES_PROTOCOL.md5)
    assert responder.respond(handshake + call_head("")) == b"\x00" * 4  # BOTH, no call
    with pytest.raises(BadRequest):
        responder.respond(b"\x01")
    assert not exporter.get_finished_spans()
    assert not responder.hooks.failures


# The server hook alone: the context it makes current in before(), and puts back in after().

def test_the_server_span_is_current_from_before_to_after(provider):
    hook = ServerTracing(OUTCOMES_PROTOCOL, provider)
    call = hooks.Call("echo")
    outside = context.get_current()
    hook.before(call)
    assert trace.get_current_span().name == OUTCOMES
    call.outcome = hooks.ANSWERED
    hook.after(call)
    assert context.get_current() is outside
    assert not hook.calls


def test_after_puts_the_context_back_in_the_task_after_awaits(provider):
    hook = ServerTracing(OUTCOMES_PROTOCOL, provider)

    async def handle(call: hooks.Call) -> None:
        hook.before(call)
        await asyncio.sleep(0)  # other tasks run, each in its own context
        assert trace.get_current_span().name == OUTCOMES
        await asyncio.sleep(0)
        call.outcome = hooks.ANSWERED
        hook.after(call)
        return context.get_current()

    async def main():
        outside = context.get_current()
        contexts = await asyncio.gather(*(handle(hooks.Call("echo")) for _ in range(3)))
        return outside, contexts

    outside, contexts = asyncio.run(main())
    assert all(current == outside for current in contexts)


def test_after_elsewhere_ends_the_span_and_logs_no_failure(provider, exporter, caplog):
    hook = ServerTracing(OUTCOMES_PROTOCOL, provider)
    call = hooks.Call("echo")
    hook.before(call)
    _, _, token = hook.calls[id(call)]
    call.outcome = hooks.ANSWERED
    with caplog.at_level(logging.WARNING):
        elsewhere = threading.Thread(target=hook.after, args=(call,))
        elsewhere.start()
        elsewhere.join()
    assert not caplog.records  # no "Failed to detach context"
    assert [span.name for span in exporter.get_finished_spans()] == [OUTCOMES]
    context.detach(token)  # where before() ran, for the tests that follow
