"""examples/relay: handlers that call another service, on the asyncio host (async def,
awaiting AsyncClient) and on eventlet's asyncio hub (plain, through spawn_for_awaitable)."""

import subprocess
import sys

import pytest

import client
import server
from conftest import ROOT, server_program, serving


class Upstream(server.EchoResponder):
    """The service the relay calls: it answers in capitals, and notes each query."""

    def __init__(self) -> None:
        super().__init__()
        self.queries = []

    def handle_echo(self, query: str) -> str:
        self.queries.append(query)
        return query.upper()


@pytest.mark.parametrize("program", ["examples.relay.server", "examples.relay.on_eventlet_hub"])
def test_the_relay_answers_with_the_upstreams_answers(program, monkeypatch):
    upstream = Upstream()
    with serving(upstream, "asyncio") as (host, port):
        monkeypatch.setenv("UPSTREAM", f"{host}:{port}")
        with server_program(program=("-m", program)) as relay, \
                client.EchoClient("127.0.0.1", relay.port) as echo_client:
            answers = [echo_client.echo(f"call {n}") for n in range(3)]
            assert echo_client.split("Hello World") == "Hello"
    assert answers == ["CALL 0", "CALL 1", "CALL 2"]
    assert upstream.queries == ["call 0", "call 1", "call 2"]


def test_the_async_relay_is_refused_by_the_eventlet_host_when_it_starts():
    # As docs/asyncio.md shows it.
    refused = subprocess.run(
        [sys.executable, "-m", "examples.relay.server", "--loop", "eventlet", "--port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert [line.split(" ", 2)[2] for line in refused.stderr.splitlines()] == [
        "avrohttp cannot serve: RelayResponder has async def handlers (handle_echo, "
        "handle_split), which need an event loop: serve it on the asyncio host "
        "(--loop asyncio), or make them plain functions"]
