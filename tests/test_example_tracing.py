"""docs/tracing.md's server program (examples/tracing/server.py), run as a program: a traced
client's call makes a server span, printed by the SDK's console exporter, in the client's
trace and under its span."""

import json
import re
import signal
import subprocess
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import avrohttp
from avrohttp.tracing import ClientTracing
from conftest import ROOT
from protocol import EchoProtocol


def test_the_traced_server_of_the_docs_prints_the_span_of_a_traced_call():
    server = subprocess.Popen(
        [sys.executable, "-m", "examples.tracing.server", "--port", "0"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for line in iter(server.stderr.readline, ""):
            listening = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
            if listening:
                break
        assert listening, "the traced server did not start"
        port = int(listening.group(1))
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracing = ClientTracing(EchoProtocol, "127.0.0.1", port, tracer_provider=provider)
        with avrohttp.Client(EchoProtocol, "127.0.0.1", port, timeout=10,
                             call_hooks=[tracing]) as client:
            assert client.call("echo", query="traced") == "traced"
        server.send_signal(signal.SIGTERM)  # the batch processor exports what is left
        printed, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0
    [client_span] = exporter.get_finished_spans()
    spans = json.loads("[" + re.sub(r"}\s*{", "},{", printed.strip()) + "]")
    [span] = spans
    assert span["name"] == "rpc.sample.echo.AvroEcho/echo"
    assert span["kind"] == "SpanKind.SERVER"
    assert span["context"]["trace_id"] == f"0x{client_span.context.trace_id:032x}"
    assert span["parent_id"] == f"0x{client_span.context.span_id:016x}"
    assert span["resource"]["attributes"]["service.name"] == "echo"
