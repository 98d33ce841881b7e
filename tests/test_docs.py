"""docs/ shows what runs: each code excerpt is in its file, and the shop client prints what
docs/your-protocol.md shows."""

import asyncio
import http.client
import re

import pytest

import avrohttp
import server
from avrohttp import hooks
from avrohttp.metrics import ClientMetrics, ServerMetrics
from conftest import ROOT, running, server_class, serving
from protocol import EchoProtocol
from test_example_shop import run_client, shop_server_program
from wire import Answer, call_head, encode, frame, handshake_request, read_answer

DOCS = sorted((ROOT / "docs").glob("*.md"))
EXCERPT = re.compile(r"<!-- excerpt: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
EXCERPTS = [(doc.name, name, code) for doc in DOCS
            for name, code in EXCERPT.findall(doc.read_text())]


def test_your_protocol_has_excerpts_of_each_shop_file():
    assert {name for doc, name, _ in EXCERPTS if doc == "your-protocol.md"} >= {
        "examples/shop/protocol.py", "examples/shop/server.py", "examples/shop/client.py"}


def test_metrics_lists_every_outcome_of_the_server():
    listed = re.findall(r"^\| `(\w+)` \|", (ROOT / "docs" / "metrics.md").read_text(), re.M)
    assert set(hooks.SERVER_OUTCOMES) <= set(listed)


@pytest.mark.parametrize("doc, name, code", EXCERPTS,
                         ids=[f"{doc}:{name}" for doc, name, _ in EXCERPTS])
def test_each_excerpt_is_the_code_that_runs(doc, name, code):
    assert code in (ROOT / name).read_text()


def test_the_shop_client_prints_what_the_doc_shows():
    doc = (ROOT / "docs" / "your-protocol.md").read_text()
    shown = re.search(r"```console\n\$ \.venv/bin/python -m examples.shop.client\n(.*?)```", doc,
                      re.DOTALL).group(1)
    with shop_server_program() as port:
        printed = run_client(port).stdout

    def normalize(text: str) -> str:
        return re.sub(r"Order [0-9a-f]{32}", "Order <id>", text)

    assert normalize(printed) == normalize(shown)


# --- docs/metrics.md: a service's /metrics shows the calls it makes too ------------------------

class ShowInMetrics(avrohttp.CallHook):
    """Shows a ClientMetrics in the server's /metrics. With --metrics, the server makes its
    ServerMetrics when it starts, and installs it among the responder's hooks: this hook
    finds it there at the first call."""

    def __init__(self, responder: avrohttp.Responder, collector: ClientMetrics) -> None:
        self.responder = responder
        self.collector = collector

    def before(self, call: avrohttp.Call) -> None:
        if self.collector is None:  # added already
            return
        for hook in self.responder.hooks.hooks:
            if isinstance(hook, ServerMetrics):
                hook.add(self.collector)
        self.collector = None


class Relay(avrohttp.Responder):
    """AvroEcho, answered by another AvroEcho server, on the asyncio host."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(EchoProtocol)
        downstream = ClientMetrics(EchoProtocol)
        self.other = avrohttp.AsyncClient(EchoProtocol, host, port, call_hooks=[downstream])
        self.hooks.append(ShowInMetrics(self, downstream))

    async def handle_echo(self, query: str) -> str:
        return await self.other.call("echo", query=query)

    async def handle_split(self, query: str) -> str:
        return await self.other.call("split", query=query)


def scrape(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        connection.close()


def test_a_service_shows_the_calls_it_makes_in_its_own_metrics():
    with serving(server.EchoResponder(), "asyncio") as other:
        relay = Relay(*other)
        options = avrohttp.ServerOptions(port=0, metrics=True)  # what --metrics sets
        with running(server_class("asyncio")(options, relay)) as relay_server:
            with avrohttp.Client(EchoProtocol, *relay_server.address, timeout=10) as caller:
                assert caller.call("echo", query="Hello") == "Hello"
                assert caller.call("split", query="Hello") == "He"
                assert caller.call("echo", query="again") == "again"
            lines = scrape(relay_server.address[1]).splitlines()
            # The relay's connections to the other server, closed on the relay's loop.
            asyncio.run_coroutine_threadsafe(relay.other.close(), relay_server._loop).result(10)
    for side in ("server", "client"):  # the calls the relay answered, and those it made
        assert f'avro_{side}_calls_total{{message="echo",outcome="answered"}} 2.0' in lines
        assert f'avro_{side}_calls_total{{message="split",outcome="answered"}} 1.0' in lines


# --- docs/your-protocol.md: the call's context ---------------------------------------------------

class Lookup(avrohttp.Responder):
    """AvroEcho, whose echo reads its call's context."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)

    def handle_echo(self, query: str) -> str:
        call = avrohttp.current_call()
        user = call.request_meta.get("user", b"anyone").decode()  # the metadata holds bytes
        request_id = call.headers.get("x-request-id", "-")  # header names in lower case
        address, port = call.peer
        left = avrohttp.time_left()  # seconds, or None: the caller gave no timeout
        if left is not None and left < 0.05:
            raise avrohttp.RemoteSystemError("not enough time left to look it up")
        call.response_meta["served-by"] = b"replica-1"  # goes back with the answer
        return f"{query}, for {user} at {address} (request {request_id})"

    def handle_split(self, query: str) -> str:
        return query[: len(query) // 2]


class SendUser(avrohttp.CallHook):
    """Sends the user's name with each call; keeps who served the last one."""

    def __init__(self, user: str) -> None:
        self.user = user.encode()
        self.served_by = None

    def before(self, call: avrohttp.Call) -> None:
        call.request_meta["user"] = self.user

    def after(self, call: avrohttp.Call) -> None:
        self.served_by = call.response_meta.get("served-by")


def post_echo(address, meta: dict, headers: dict) -> Answer:
    """An echo call with this call metadata and these HTTP headers, as raw HTTP."""
    body = frame(handshake_request() + call_head("echo", meta)
                 + encode(EchoProtocol.messages["echo"].request, {"query": "hi"}))
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("POST", "/", body, {"Content-Type": "avro/binary", **headers})
        return read_answer(connection.getresponse().read())
    finally:
        connection.close()


def test_the_handler_and_the_hook_that_read_the_calls_context(host):
    user = SendUser("ada")
    with serving(Lookup(), host) as address, \
            avrohttp.Client(EchoProtocol, *address, call_hooks=[user]) as client:
        assert client.call("echo", query="hi") == "hi, for ada at 127.0.0.1 (request -)"
        assert user.served_by == b"replica-1"
        answer = post_echo(address, {}, {"X-Request-Id": "17"})
        assert answer.datum == "hi, for anyone at 127.0.0.1 (request 17)"
        answer = post_echo(address, {"timeout-ms": b"10"}, {})
        assert (answer.is_error, answer.datum) == (True, "not enough time left to look it up")
