"""AsyncClient with endpoints= (avrohttp.async_balancing): test_endpoints.py's main cases,
on asyncio. Each test runs its own event loop (asyncio.run); the servers run in threads of
their own, as in test_endpoints.py.
"""

import asyncio
import collections
import contextlib
import socket
import time

import avrohttp
from avrohttp.endpoints import Backoff, Endpoints
from conftest import free_port, serving
from protocol import EchoProtocol
from test_client import scripted_server
from test_endpoints import (CLOSED, Named, fails_with, frozen, localhost, servers, tls_server,
                            where)


def async_calls(address_list, count: int, gather: bool = False, **options):
    """Make `count` echo calls with an AsyncClient of these endpoints, one after another or
    all at once: which server answered how many."""

    async def run():
        async with avrohttp.AsyncClient(EchoProtocol, endpoints=address_list,
                                        **{"timeout": 5, **options}) as client:
            if gather:
                answers = await asyncio.gather(*[client.call("echo", query="hi")
                                                 for _ in range(count)])
            else:
                answers = [await client.call("echo", query="hi") for _ in range(count)]
        return collections.Counter(answers)

    return asyncio.run(run())


def test_the_async_client_spreads_calls_evenly_over_three_servers(host):
    with servers(host, "a", "b", "c") as addresses:
        assert async_calls(addresses, 30) == {"a": 10, "b": 10, "c": 10}
        assert async_calls(addresses, 30, gather=True) == {"a": 10, "b": 10, "c": 10}


def test_the_async_client_sends_no_more_calls_to_a_stopped_server(host):
    async def run(a, c, stop_b, b):
        async with avrohttp.AsyncClient(EchoProtocol, endpoints=[a, b, c],
                                        timeout=5) as client:
            first = [await client.call("echo", query="hi") for _ in range(6)]
            stop_b()
            then = [await client.call("echo", query="hi") for _ in range(30)]
        return collections.Counter(first), collections.Counter(then)

    with serving(Named("a"), host) as a, serving(Named("c"), host) as c:
        with contextlib.ExitStack() as stack:
            b = stack.enter_context(serving(Named("b"), host))
            first, then = asyncio.run(run(a, c, stack.close, b))
    assert first == {"a": 2, "b": 2, "c": 2}
    assert set(then) == {"a", "c"} and sum(then.values()) == 30


def test_the_async_client_passes_over_a_refused_endpoint(host):
    refused = ("127.0.0.1", free_port())
    with servers(host, "a", "b") as [a, b]:
        for gather in (False, True):
            answered = async_calls([a, refused, b], 20, gather)
            assert set(answered) == {"a", "b"} and sum(answered.values()) == 20


def test_the_async_client_sends_a_call_cut_off_to_another_endpoint_only_with_retry():
    with scripted_server((0, "close")) as (closer, counts), serving(Named("good")) as good:
        with fails_with(f"cannot reach the server at {where(closer)}: {CLOSED}"):
            async_calls([closer, good], 1)
        assert counts.requests == 1
        assert async_calls(frozen([closer, good]), 5, retry=True) == {"good": 5}
        assert counts.requests == 2  # the first call, then the closer is set aside


def test_the_async_client_fails_in_one_line_when_every_endpoint_is_down():
    down = [("127.0.0.1", free_port()) for _ in range(2)]
    endpoints = Endpoints(down, backoff=Backoff(random=lambda: 1.0))
    with fails_with("cannot reach any of the 2 servers: "
                    + "; ".join(f"{where(address)}: [Errno 111] Connection refused"
                                for address in down)):
        async_calls(endpoints, 1, timeout=0.3)


def test_the_async_client_looks_a_name_up_once_before_its_first_calls(host, monkeypatch):
    asked = []
    lookup = socket.getaddrinfo

    def getaddrinfo(name, *args, **kwargs):  # what a connection would look up itself
        asked.append(name)
        return lookup(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with servers(host, "a", "b") as [a, b]:
        looked_up = []

        def resolve(name, port):
            looked_up.append(name)
            time.sleep(0.2)  # a slow name server: the calls made meanwhile wait for it
            return [a, b]

        endpoints = Endpoints(["replicas.test:8130"], resolve=resolve)
        assert async_calls(endpoints, 10, gather=True) == {"a": 5, "b": 5}
    assert looked_up == ["replicas.test"]
    assert "replicas.test" not in asked


def test_the_async_client_calls_the_addresses_of_a_name_over_tls_as_that_name(host,
                                                                              tmp_path):
    with tls_server(host, tmp_path) as (port, context):
        assert async_calls(localhost(port), 2, ssl_context=context) == {"tls": 2}
