"""avrohttp.metrics: GET /metrics after a known set of calls of every outcome, in-process and
from the real program on each host (--loop), in one process and with --workers 2, async def
handlers included; the labels a client cannot grow; the client's metrics; a server without
--metrics; the docs' scrape."""

import http.client
import re
import socket
import subprocess
import sys
import time
from collections import Counter

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

import avrohttp
import server
from avrohttp import codec, hooks
from avrohttp.metrics import ClientMetrics, ServerMetrics
from conftest import ROOT, call_app, serving, server_program
from outcomes_server import OUTCOMES_PROTOCOL, OutcomesResponder
from protocol import EchoProtocol
from wire import call_body, call_head, frame, handshake_request

OUTCOMES_PROGRAM = ROOT / "tests" / "outcomes_server.py"


def scrape_text(text: str) -> dict:
    """The samples of a scrape, as {(name, (sorted label items)): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def the_calls(protocol) -> list:
    """(body, message label, outcome) for calls of every outcome that `protocol`'s server can
    give; the declared error only where the protocol has one (the Outcomes protocol)."""
    ours = dict(protocol=protocol, server_hash=protocol.md5)
    other = OUTCOMES_PROTOCOL if protocol is EchoProtocol else EchoProtocol
    calls = [
        (call_body("echo", "hi", **ours), "echo", hooks.ANSWERED),
        (call_body("echo", "hello", **ours), "echo", hooks.ANSWERED),
        # A client of another protocol that has the same echo, sending its protocol: answered,
        # and its protocol joins the cache.
        (call_body("echo", "hi", protocol=other, server_hash=protocol.md5, send_protocol=True),
         "echo", hooks.ANSWERED),
        (frame(handshake_request(**ours) + call_head("echo") + b"\x10ab"), "echo",
         hooks.SYSTEM_ERROR),
        (frame(handshake_request(**ours) + call_head("nope")), "_other", hooks.UNKNOWN_MESSAGE),
        (frame(handshake_request(**ours) + call_head("\u00e9" * 30)), "_other",
         hooks.UNKNOWN_MESSAGE),
        (frame(handshake_request(**ours) + call_head("")), "_other", hooks.PING),
        # A caller whose time ran out before the call could start.
        (frame(handshake_request(**ours) + call_head("echo", {"timeout-ms": b"0"}) + b"\x04hi"),
         "echo", hooks.DEADLINE_EXCEEDED),
        (frame(handshake_request(**ours, client_hash=b"\x01" * 16)), "_other", hooks.HANDSHAKE),
        (frame(b"\x01"), "_other", hooks.BAD_REQUEST),
        (b"not framed", "_other", hooks.BAD_REQUEST),
    ]
    if protocol is OUTCOMES_PROTOCOL:
        calls += [(call_body("echo", "refuse", **ours), "echo", hooks.DECLARED_ERROR),
                  (call_body("echo", "crash", **ours), "echo", hooks.SYSTEM_ERROR)]
    if protocol is EchoProtocol:
        calls += [(call_body("split", "abcd", **ours), "split", hooks.ANSWERED)]
    return calls


def expected_samples(calls: list, answers: list, prefix: str = "avro_server") -> dict:
    """What a scrape must show for these calls and the answers they got."""
    expected = Counter()
    for (body, message, outcome), answer in zip(calls, answers):
        label = (("message", message),)
        expected[(f"{prefix}_calls_total", (("message", message), ("outcome", outcome)))] += 1
        expected[(f"{prefix}_call_duration_seconds_count", label)] += 1
        expected[(f"{prefix}_call_duration_seconds_bucket", (("le", "+Inf"), *label))] += 1
        expected[(f"{prefix}_request_bytes_count", label)] += 1
        request = len(body) if body == b"not framed" else len(codec.unframe(body))
        expected[(f"{prefix}_request_bytes_sum", label)] += request
        response = len(codec.unframe(answer)) if answer else 0
        expected[(f"{prefix}_response_bytes_sum", label)] += response
    return expected


def check(samples: dict, expected: dict) -> list:
    """The differences between a scrape and what it must show (empty when it matches)."""
    return [(key, samples.get(key), value) for key, value in expected.items()
            if samples.get(key) != value]


def post(port: int, body: bytes, path: str = "/", method: str = "POST",
         content_type: str = "avro/binary") -> tuple:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body, {"Content-Type": content_type})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_in_process_scrape_counts_every_outcome():
    responder = OutcomesResponder()
    metrics = ServerMetrics(responder)
    responder.hooks.append(metrics)
    app = avrohttp.make_application(responder, metrics=metrics)
    calls = the_calls(OUTCOMES_PROTOCOL)
    answers = []
    for body, _, outcome in calls:
        response = call_app(app, body)
        assert response.status == (400 if outcome == hooks.BAD_REQUEST else 200)
        answers.append(response.body if response.status == 200 else b"")
    assert call_app(app, method="GET").status == 405
    assert call_app(app, call_body(), content_type="text/plain").status == 415
    response = call_app(lambda environ, start: app({**environ, "PATH_INFO": "/metrics"}, start),
                        method="GET", content_type=None)
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = scrape_text(response.body.decode())
    expected = expected_samples(calls, answers)
    expected.update({
        ("avro_server_http_responses_total", (("status", "400"),)): 2,
        ("avro_server_http_responses_total", (("status", "405"),)): 1,
        ("avro_server_http_responses_total", (("status", "415"),)): 1,
        ("avro_server_calls_in_flight", ()): 0,
        ("avro_server_protocol_cache_entries", ()): 2,  # ours and the other client's
    })
    assert check(samples, expected) == []
    # Every outcome happened, under labels of the protocol's messages or the fixed one only.
    seen = {dict(labels)["outcome"] for (name, labels), value in samples.items()
            if name == "avro_server_calls_total" and value}
    assert seen == set(hooks.SERVER_OUTCOMES)
    messages = {dict(labels).get("message") for (name, labels) in samples
                if name.startswith("avro_server_call")} - {None}
    assert messages == {"echo", "_other"}
    assert samples[("process_open_fds", ())] > 0  # prometheus_client's process metrics


def test_latency_lands_in_its_bucket():
    metrics = ServerMetrics(server.EchoResponder())
    for seconds in (0.00002, 0.003, 7.0):
        call = hooks.Call("echo")
        call.outcome, call.seconds = hooks.ANSWERED, seconds
        metrics.after(call)
    samples = scrape_text(metrics.exposition()[1].decode())

    def bucket(le):
        return samples[("avro_server_call_duration_seconds_bucket",
                        (("le", le), ("message", "echo")))]
    assert (bucket("1e-05"), bucket("2.5e-05"), bucket("0.0025"), bucket("0.005"),
            bucket("5.0"), bucket("10.0"), bucket("+Inf")) == (0, 1, 1, 2, 2, 3, 3)
    assert samples[("avro_server_call_duration_seconds_sum", (("message", "echo"),))] == \
        pytest.approx(7.00302)


def test_many_made_up_names_add_no_series():
    responder = server.EchoResponder()
    metrics = ServerMetrics(responder)
    responder.hooks.append(metrics)
    app = avrohttp.make_application(responder, metrics=metrics)
    before = scrape_text(metrics.exposition()[1].decode())
    for number in range(200):
        call_app(app, frame(handshake_request() + call_head(f"made-up-{number}")))
    after = metrics.exposition()[1]
    assert scrape_text(after.decode()).keys() == before.keys()  # the same series, no more
    assert b"made-up" not in after
    assert b'avro_server_calls_total{message="_other",outcome="unknown_message"} 200.0' in after


def test_a_client_counts_its_calls_per_message(host):
    metrics = ClientMetrics(EchoProtocol)
    with serving(server.EchoResponder(), host) as (host, port):
        client = avrohttp.Client(EchoProtocol, host, port, call_hooks=[metrics])
        assert client.call("echo", query="hi") == "hi"
        assert client.call("split", query="abcd") == "ab"
        with pytest.raises(avrohttp.CallFailed):  # nobody listens there
            avrohttp.Client(EchoProtocol, host, 1, call_hooks=[metrics]).call("echo", query="x")
        client.close()
    samples = scrape_text(prometheus_client.generate_latest(_registry_of(metrics)).decode())
    expected = {
        ("avro_client_calls_total", (("message", "echo"), ("outcome", "answered"))): 1,
        ("avro_client_calls_total", (("message", "split"), ("outcome", "answered"))): 1,
        ("avro_client_calls_total", (("message", "echo"), ("outcome", "failed"))): 1,
        ("avro_client_call_duration_seconds_count", (("message", "echo"),)): 2,
        ("avro_client_calls_in_flight", ()): 0,
    }
    assert check(samples, expected) == []


def _registry_of(collector):
    registry = prometheus_client.CollectorRegistry()
    registry.register(collector)
    return registry


def slow_body(port: int) -> bytes:
    """A request whose body never comes whole: the server answers 408 after its timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
                     b"Content-Length: 10\r\n\r\nab")
        return sock.recv(100)


@pytest.mark.parametrize("program, protocol, workers, loop, handlers", [
    (ROOT / "server.py", EchoProtocol, 1, "eventlet", "plain"),
    (ROOT / "server.py", EchoProtocol, 1, "asyncio", "plain"),
    (ROOT / "server.py", EchoProtocol, 2, "eventlet", "plain"),
    (OUTCOMES_PROGRAM, OUTCOMES_PROTOCOL, 2, "eventlet", "plain"),
    (OUTCOMES_PROGRAM, OUTCOMES_PROTOCOL, 2, "asyncio", "async"),
], ids=["server.py", "server.py-asyncio", "server.py-workers-2", "outcomes-workers-2",
        "outcomes-asyncio-workers-2-async-handlers"])
def test_the_program_counts_every_call(program, protocol, workers, loop, handlers,
                                       monkeypatch):
    monkeypatch.setenv("OUTCOMES_HANDLERS", handlers)  # for outcomes_server.py
    with server_program("--metrics", "--workers", str(workers), "--max-body-bytes", "4096",
                        "--request-timeout", "1", "--loop", loop, program=program) as running:
        port = running.port
        calls = the_calls(protocol)
        answers = []
        for body, _, outcome in calls:
            status, answer = post(port, body)
            assert status == (400 if outcome == hooks.BAD_REQUEST else 200), answer
            answers.append(answer if status == 200 else b"")
        assert post(port, b"", method="GET")[0] == 405
        assert post(port, call_body(), content_type="text/plain")[0] == 415
        assert post(port, b"x" * 5000)[0] == 413
        assert slow_body(port).startswith(b"HTTP/1.1 408")
        assert post(port, b"", path="/health", method="GET")[0] == 200
        held = []  # connections left open, each after one answer
        for _ in range(2):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/health")
            connection.getresponse().read()
            held.append(connection)
        expected = expected_samples(calls, answers)
        expected.update({
            ("avro_server_http_responses_total", (("status", "400"),)): 2,
            ("avro_server_http_responses_total", (("status", "405"),)): 1,
            ("avro_server_http_responses_total", (("status", "408"),)): 1,
            ("avro_server_http_responses_total", (("status", "413"),)): 1,
            ("avro_server_http_responses_total", (("status", "415"),)): 1,
            ("avro_server_calls_in_flight", ()): 0,
            ("avro_server_connections", ()): 3,  # the two held, and the scrape's own
            # Each worker caches our protocol, and one of them the other client's.
            ("avro_server_protocol_cache_entries", ()): workers + 1,
        })
        # With workers, a scrape shows the other workers' counts as of their last flush
        # (every second), and closed connections take a moment to be counted out.
        deadline = time.monotonic() + 15
        while True:
            status, text = post(port, b"", path="/metrics", method="GET")
            assert status == 200
            samples = scrape_text(text.decode())
            differences = check(samples, expected)
            # 200: the three /health answers and the scrapes before this one.
            answered_200 = samples[("avro_server_http_responses_total", (("status", "200"),))]
            if (not differences and answered_200 >= 3) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        for connection in held:
            connection.close()
        assert differences == []
        assert answered_200 >= 3
        outcomes = {dict(labels)["outcome"] for (name, labels), value in samples.items()
                    if name == "avro_server_calls_total" and value}
        everything = set(hooks.SERVER_OUTCOMES)
        if protocol is EchoProtocol:  # echo and split declare no error
            everything.discard(hooks.DECLARED_ERROR)
        assert outcomes == everything


def test_without_metrics_the_server_serves_no_metrics():
    with server_program() as running:
        status, _ = post(running.port, b"", path="/metrics", method="GET")
        assert status == 405  # /metrics is then just another path of the Avro endpoint
        assert post(running.port, call_body(), path="/metrics")[0] == 200


DOCS = ROOT / "docs" / "metrics.md"


def docs_block(command_start: str) -> list:
    """The output lines that docs/metrics.md shows after the command starting with
    `command_start`, in its code block."""
    lines = DOCS.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"$ {command_start}"))
    block = []
    for line in lines[start + 1:]:
        if line.startswith("```"):
            return block
        block.append(line)
    raise AssertionError(f"no end to the block after {command_start!r}")


def _timing_free(lines: list) -> list:
    """Lines of a scrape, with the figures that depend on the machine's speed left out."""
    return [re.sub(r"(_duration_seconds_(sum|bucket)\S*) \S+$", r"\1 <timing>", line)
            for line in lines]


def test_the_docs_show_the_scrape_that_the_demo_calls_give():
    with server_program("--metrics") as running:
        for message, query in (("echo", "Hello World"), ("split", "Hello World"),
                               ("echo", "Hello again")):
            subprocess.run([sys.executable, "client.py", "--port", str(running.port),
                            f"--{message}", "--query", query], cwd=ROOT, check=True,
                           capture_output=True, timeout=60)
        status, text = post(running.port, b"", path="/metrics", method="GET")
    assert status == 200
    lines = text.decode().splitlines()
    shown = [line for line in lines if line.startswith("avro_") and "_bucket" not in line
             and not line.endswith(" 0.0")]
    assert _timing_free(docs_block("curl -s http://127.0.0.1:8130/metrics | grep '^avro_'")) \
        == _timing_free(shown)
    buckets = [line for line in lines
               if re.match(r'avro_server_call_duration_seconds_bucket\{.*"echo"', line)]
    assert _timing_free(docs_block("curl -s http://127.0.0.1:8130/metrics | grep 'duration")) \
        == _timing_free(buckets)


def test_the_shop_example_is_counted_on_both_sides(host):
    # examples/shop: declared errors, a one-way message, records, maps; the server's hooks
    # and the client's count the same calls the same way.
    from examples.shop import server as shop_server
    from examples.shop.protocol import PROTOCOL_JSON

    client_metrics = ClientMetrics(avrohttp.parse_protocol(PROTOCOL_JSON))
    with serving(shop_server.ShopResponder(), host, metrics=True) as (host, port):
        with avrohttp.Client(PROTOCOL_JSON, host, port, call_hooks=[client_metrics]) as shop:
            shop.call("item", sku="boot")
            for sku in ("hat", "cap"):
                with pytest.raises(avrohttp.DeclaredError):
                    shop.call("item", sku=sku)
            with pytest.raises(avrohttp.DeclaredError):
                shop.call("order", quantities={"boot": 99})
            shop.call("order", quantities={"boot": 1})
            shop.call("visit", page="/")
            assert shop.call("visits") == {"/": 1}
        status, scrape = post(port, b"", path="/metrics", method="GET")
        assert status == 200
    expected = {("item", "answered"): 1, ("item", "declared_error"): 2,
                ("order", "declared_error"): 1, ("order", "answered"): 1,
                ("visit", "answered"): 1, ("visits", "answered"): 1}
    client_scrape = prometheus_client.generate_latest(_registry_of(client_metrics))
    for side, text in (("server", scrape), ("client", client_scrape)):
        samples = scrape_text(text.decode())
        counted = {(dict(labels)["message"], dict(labels)["outcome"]): value
                   for (name, labels), value in samples.items()
                   if name == f"avro_{side}_calls_total" and value}
        assert counted == expected, side
