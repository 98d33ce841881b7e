"""A client that knows several endpoints (avrohttp.endpoints): Client with endpoints=, against
real servers of each host, and raw-socket servers (test_client's scripted_server) that close
without answering or never answer; test_async_endpoints.py does the same for AsyncClient.
Each server answers echo with its name, so that a test sees where each call went. The
backoff's clock is a FakeClock where a test needs an endpoint set aside until it says so.
"""

import collections
import contextlib
import re
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import trustme

import avrohttp
import server
from avrohttp import hooks
from avrohttp.endpoints import Backoff, Endpoints, parse_endpoint
from client import EchoClient
from conftest import ROOT, free_port, running, server_class, serving
from protocol import EchoProtocol
from test_client import scripted_server
import test_deadlines as deadlines
from test_hooks import Recorder

CLOSED = ("the server closed the connection without an answer "
          "(if the server serves HTTPS, call it with TLS)")


class Named(server.EchoResponder):
    """Echo that answers with the server's name, whatever the query."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def handle_echo(self, query: str) -> str:
        return self.name


class FakeClock:
    """The backoff's clock: it moves only when a test moves it (clock.now += 0.5)."""

    now = 1000.0

    def __call__(self) -> float:
        return self.now


def frozen(addresses: list) -> Endpoints:
    """Endpoints whose clock stands still: one set aside stays aside, whatever the time."""
    return Endpoints(addresses, clock=FakeClock(), backoff=Backoff(random=lambda: 1.0))


def fails_with(message: str):
    """pytest.raises for a CallFailed whose message is exactly `message`."""
    return pytest.raises(avrohttp.CallFailed, match=f"^{re.escape(message)}$")


def where(address) -> str:
    return f"{address[0]}:{address[1]}"


def calls(client: avrohttp.Client, count: int) -> collections.Counter:
    """Make `count` echo calls, one after another: which server answered how many."""
    return collections.Counter(client.call("echo", query="hi") for _ in range(count))


@contextlib.contextmanager
def servers(host: str, *names: str):
    """A real server of `host` per name, each answering with its name: yields their
    addresses, in order."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serving(Named(name), host)) for name in names]


def test_calls_are_spread_evenly_over_three_servers(host):
    with servers(host, "a", "b", "c") as addresses, \
            avrohttp.Client(EchoProtocol, endpoints=addresses, timeout=5) as client:
        assert calls(client, 30) == {"a": 10, "b": 10, "c": 10}
        # One keep-alive connection each, kept for the next calls.
        socks = [endpoint.client[0].conn.sock for endpoint in client.balancer.endpoints.all]
        assert None not in socks
        assert calls(client, 3) == {"a": 1, "b": 1, "c": 1}
        assert [endpoint.client[0].conn.sock
                for endpoint in client.balancer.endpoints.all] == socks


def test_the_echo_client_takes_endpoints_too_written_as_pairs_or_strings():
    with servers("eventlet", "a", "b") as [a, b], \
            EchoClient(endpoints=[a, where(b)], timeout=5) as echo:
        assert [echo.echo("hi") for _ in range(4)] == ["a", "b", "a", "b"]
        assert echo.split("hi") == "h"


def test_a_stopped_server_gets_no_more_calls_and_no_call_fails(host):
    # Without retry: a server that stops closes its idle connections, and the client sees
    # that before it sends a call on one; then its connections are refused.
    with serving(Named("a"), host) as a, serving(Named("c"), host) as c:
        with serving(Named("b"), host) as b:
            client = avrohttp.Client(EchoProtocol, endpoints=[a, b, c], timeout=5)
            assert calls(client, 6) == {"a": 2, "b": 2, "c": 2}
        with client:
            answered = calls(client, 30)
            assert set(answered) == {"a", "c"} and sum(answered.values()) == 30
            [stopped] = [endpoint for endpoint in client.balancer.endpoints.all
                         if endpoint.address == b]
            assert stopped.failures >= 1
            assert stopped.why == "[Errno 111] Connection refused"


def test_a_server_that_comes_back_gets_calls_again_after_its_backoff(host):
    clock = FakeClock()
    with serving(Named("a"), host) as a, serving(Named("c"), host) as c:
        with serving(Named("b"), host) as b:
            endpoints = Endpoints([a, b, c], clock=clock, backoff=Backoff(random=lambda: 1.0))
            client = avrohttp.Client(EchoProtocol, endpoints=endpoints, timeout=5)
            assert calls(client, 3) == {"a": 1, "b": 1, "c": 1}
        with client:
            assert calls(client, 6) == {"a": 3, "c": 3}  # b is set aside for 0.5 s
            options = avrohttp.ServerOptions(host=b[0], port=b[1])
            with running(server_class(host)(options, Named("b"))):
                assert calls(client, 4) == {"a": 2, "c": 2}  # back, but still set aside
                clock.now += 0.5
                assert calls(client, 9) == {"a": 3, "b": 3, "c": 3}


def test_a_refused_endpoint_among_good_ones_costs_no_failed_call(host):
    refused = ("127.0.0.1", free_port())
    with servers(host, "a", "b") as [a, b], \
            avrohttp.Client(EchoProtocol, endpoints=[a, refused, b], timeout=5) as client:
        answered = calls(client, 20)
        assert set(answered) == {"a", "b"} and sum(answered.values()) == 20
        [endpoint] = [e for e in client.balancer.endpoints.all if e.address == refused]
        assert endpoint.why == "[Errno 111] Connection refused"


def test_a_call_cut_off_goes_to_another_endpoint_only_with_retry():
    # The scripted server reads each call, and closes the connection without an answer.
    with scripted_server((0, "close")) as (closer, counts), \
            serving(Named("good")) as good:
        with avrohttp.Client(EchoProtocol, endpoints=[closer, good], timeout=5) as client:
            with fails_with(f"cannot reach the server at {where(closer)}: {CLOSED}"):
                client.call("echo", query="hi")  # its turn: the closer
        assert counts.requests == 1
        with avrohttp.Client(EchoProtocol, endpoints=frozen([closer, good]), timeout=5,
                             retry=True) as client:
            assert client.call("echo", query="hi") == "good"  # sent twice
            assert counts.requests == 2
            assert calls(client, 4) == {"good": 4}  # the closer is set aside


def test_a_call_that_times_out_is_not_sent_again():
    with scripted_server((0, "hang")) as (hangs, counts), serving(Named("good")) as good, \
            avrohttp.Client(EchoProtocol, endpoints=[hangs, good], timeout=0.3,
                            retry=True) as client:
        with fails_with(f"the server at {where(hangs)} sent no answer within 0.3 s"):
            client.call("echo", query="hi")
        assert counts.requests == 1
        assert client.call("echo", query="hi") == "good"  # the next in turn


def test_a_retry_sends_the_time_that_is_left():
    sent = []

    class Timeouts(server.EchoResponder):
        def handle_echo(self, query):
            sent.append(int(avrohttp.current_call().request_meta["timeout-ms"]))
            return query

    with scripted_server((0, "close")) as (closer, counts), serving(Timeouts()) as good, \
            avrohttp.Client(EchoProtocol, endpoints=frozen([closer, good]), timeout=5,
                            retry=True) as client:
        assert client.call("echo", query="one") == "one"  # cut off, then sent to good
        assert client.call("echo", query="two") == "two"  # to good at once: its own timeout
    assert 4000 < sent[0] < 5000 and sent[1] == 5000


def test_when_every_endpoint_is_down_the_call_fails_in_one_line_naming_each():
    down = [("127.0.0.1", free_port()) for _ in range(3)]
    # Each is set aside for 0.5 s, longer than the call has: it fails at once.
    endpoints = frozen(down)
    refused = "[Errno 111] Connection refused"
    with avrohttp.Client(EchoProtocol, endpoints=endpoints, timeout=0.3) as client:
        for _ in range(2):  # tried, then each still set aside
            with fails_with("cannot reach any of the 3 servers: "
                            + "; ".join(f"{where(address)}: {refused}" for address in down)):
                client.call("echo", query="hi")
    assert [endpoint.failures for endpoint in endpoints.all] == [1, 1, 1]


def test_a_call_waits_for_an_endpoint_to_come_back_within_its_time():
    port = free_port()
    endpoints = Endpoints([("127.0.0.1", port)], backoff=Backoff(random=lambda: 1.0))
    answers = []
    with avrohttp.Client(EchoProtocol, endpoints=endpoints, timeout=30) as client:
        caller = threading.Thread(target=lambda: answers.append(client.call("echo",
                                                                            query="hi")))
        caller.start()
        waited = time.monotonic()
        while endpoints.all[0].failures == 0:  # refused, and set aside: it waits
            assert time.monotonic() - waited < 30, "the call never tried the endpoint"
            time.sleep(0.01)
        options = avrohttp.ServerOptions(port=port)
        with running(server_class("eventlet")(options, Named("back"))):
            caller.join(30)
    assert answers == ["back"]
    assert endpoints.all[0].failures == 0


def test_a_name_stands_for_all_its_addresses_looked_up_again_from_time_to_time(host):
    clock = FakeClock()
    with servers(host, "a", "b", "c") as [a, b, c]:
        replicas = [[a, b]]  # what the name resolves to, now

        def resolve(name, port):
            assert (name, port) == ("replicas.test", 8130)
            if not replicas[0]:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return replicas[0]

        endpoints = Endpoints(["replicas.test:8130"], clock=clock, resolve=resolve)
        with avrohttp.Client(EchoProtocol, endpoints=endpoints, timeout=5) as client:
            assert calls(client, 4) == {"a": 2, "b": 2}
            [first, second] = endpoints.all
            assert (first.name, str(first)) == ("replicas.test", f"{where(a)} (replicas.test)")
            replicas[0] = [b, c]
            assert calls(client, 2) == {"a": 1, "b": 1}  # not looked up again yet
            clock.now += 30
            assert calls(client, 4) == {"b": 2, "c": 2}
            assert first.gone and first.client[0].conn.sock is None  # its connection closed
            assert endpoints.all[0] is second  # b keeps its connection and its state
            replicas[0] = []  # the name no longer resolves: its addresses stay
            clock.now += 30
            assert calls(client, 2) == {"b": 1, "c": 1}


def test_a_name_is_looked_up_with_getaddrinfo(live_server):
    host, port = live_server
    endpoints = Endpoints([f"localhost:{port}"])
    with avrohttp.Client(EchoProtocol, endpoints=endpoints, timeout=5) as client:
        for _ in range(4):  # ::1 too, if localhost has it: refused, and set aside
            assert client.call("echo", query="hi") == "hi"
    assert ("127.0.0.1", port) in [endpoint.address for endpoint in endpoints.all]
    assert {endpoint.name for endpoint in endpoints.all} == {"localhost"}


def test_an_endpoint_back_from_being_set_aside_is_tried_by_one_call_at_a_time():
    endpoints = frozen(["10.0.0.1:8130", "10.0.0.2:8130"])
    clock = endpoints.clock
    first, second = endpoints.all
    assert [endpoints.pick(), endpoints.pick(), endpoints.pick()] == [first, second, first]
    endpoints.set_aside(first, "[Errno 111] Connection refused")
    assert [endpoints.pick(), endpoints.pick()] == [second, second]
    assert first.back_at == clock.now + 0.5
    clock.now += 0.5
    assert endpoints.pick() is first  # back: one call tries it...
    assert [endpoints.pick(), endpoints.pick()] == [second, second]  # ...the others wait
    endpoints.release(first)  # it connected
    assert [endpoints.pick(), endpoints.pick()] == [first, second]
    assert first.failures == 1  # until it answers a call


class Relay(deadlines.Relay):
    """test_deadlines' Relay, whose upstream is a list of endpoints."""

    def handle_echo(self, query: str) -> str:
        with avrohttp.Client(EchoProtocol, endpoints=self.upstream, timeout=10) as upstream:
            try:
                return upstream.call("echo", query=query)
            except avrohttp.DeadlineExceeded as e:
                raise avrohttp.RemoteSystemError(f"upstream: {e}") from e


def test_a_call_inside_a_handler_has_its_callers_time_left_for_all_its_endpoints():
    down = ("127.0.0.1", free_port())
    slow = deadlines.Seen(sleep=1.0)
    with serving(slow) as up, serving(Relay([down, up])) as relay, \
            avrohttp.Client(EchoProtocol, *relay, timeout=5) as client:
        client.requestor.timeout = 0.4  # the relay's caller gives it 0.4 s
        with pytest.raises(avrohttp.RemoteSystemError) as raised:
            client.call("echo", query="hi")
    assert raised.value.message.startswith(f"upstream: the server at {where(up)} did not "
                                           "answer echo within the time its caller had left")
    [left] = slow.time_left  # refused by the first endpoint, then sent to the second
    assert 0 < left < 0.4


@contextlib.contextmanager
def tls_server(host: str, directory):
    """A server of `host` over HTTPS, whose certificate names localhost only (checked against
    127.0.0.1, it would fail): yields its port, and a client context that trusts it."""
    ca = trustme.CA()
    issued = ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    issued.private_key_pem.write_to_path(directory / "key.pem")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with serving(Named("tls"), host, certfile=str(directory / "cert.pem"),
                 keyfile=str(directory / "key.pem")) as (_, port):
        yield port, context


def localhost(port: int) -> Endpoints:
    """localhost, as a name whose one address is 127.0.0.1."""
    return Endpoints([f"localhost:{port}"], resolve=lambda name, port: [("127.0.0.1", port)])


def test_the_addresses_of_a_name_are_called_over_tls_as_that_name(host, tmp_path):
    with tls_server(host, tmp_path) as (port, context), \
            avrohttp.Client(EchoProtocol, endpoints=localhost(port), ssl_context=context,
                            timeout=5) as client:
        assert calls(client, 2) == {"tls": 2}


def test_hooks_see_one_call_per_call_whatever_its_attempts():
    record = Recorder()
    down = ("127.0.0.1", free_port())
    with scripted_server((0, "close")) as (closer, counts), serving(Named("good")) as good, \
            avrohttp.Client(EchoProtocol, endpoints=[down, closer, good], timeout=5,
                            retry=True, call_hooks=[record]) as client:
        # Refused by the first, cut off by the second, answered by the third.
        assert client.call("echo", query="hi") == "good"
        assert counts.requests == 1
    assert record.events == [("before", "echo", None), ("after", "echo", hooks.ANSWERED)]
    record.events.clear()
    endpoints = Endpoints([down], backoff=Backoff(random=lambda: 1.0))
    with avrohttp.Client(EchoProtocol, endpoints=endpoints, timeout=0.3,
                         call_hooks=[record]) as client:
        with pytest.raises(avrohttp.CallFailed):
            client.call("echo", query="hi")
    assert record.events == [("before", "echo", None), ("after", "echo", hooks.FAILED)]


def test_the_backoff_doubles_from_half_a_second_to_thirty_with_full_jitter():
    backoff = Backoff()
    assert [backoff.ceiling(n) for n in range(9)] == [0, 0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.ceiling(10_000) == 30  # no overflow
    assert Backoff(random=lambda: 0.0).wait(5) == 0
    assert Backoff(random=lambda: 0.5).wait(3) == 1.0
    assert Backoff(random=lambda: 0.999).wait(1) < 0.5
    assert backoff.wait(0) == 0  # none before the first failure
    waits = [backoff.wait(4) for _ in range(1000)]
    assert all(0 <= wait < 4 for wait in waits)
    assert len(set(waits)) > 900  # jittered: hardly two alike


@pytest.mark.parametrize("endpoint, address", [
    ("10.0.0.1:8130", ("10.0.0.1", 8130)),
    (("10.0.0.2", 8131), ("10.0.0.2", 8131)),
    ("[::1]:8130", ("::1", 8130)),
    ("echo.shop.svc.cluster.local:80", ("echo.shop.svc.cluster.local", 80)),
])
def test_an_endpoint_is_host_and_port(endpoint, address):
    assert parse_endpoint(endpoint) == address


@pytest.mark.parametrize("endpoints, error", [
    (["10.0.0.1"], "endpoint '10.0.0.1' is not host:port"),
    (["::1:8130"], "endpoint '::1:8130': write an IPv6 address in brackets, as [::1]:8130"),
    ([("10.0.0.1", 0)], "endpoint ('10.0.0.1', 0): the port must be 1 to 65535"),
    ([":8130"], "endpoint ':8130' has no host"),
    ([], "endpoints: give at least one"),
    ("10.0.0.1:8130", "endpoints: give a list of endpoints, not one string"),
])
def test_endpoints_that_do_not_parse_are_refused_in_one_line(endpoints, error):
    with pytest.raises(ValueError, match=f"^{re.escape(error)}$"):
        avrohttp.Client(EchoProtocol, endpoints=endpoints)


def test_host_and_port_or_endpoints_not_both():
    with pytest.raises(ValueError, match="^give host and port, or endpoints, not both$"):
        avrohttp.Client(EchoProtocol, "10.0.0.1", 8130, endpoints=["10.0.0.2:8130"])


def test_a_client_of_one_host_and_port_is_as_it_was(live_server):
    # One endpoint, connected to as given (a name is resolved by the connection itself, to
    # its first address that answers), with no balancing, and none of its modules loaded.
    port = live_server[1]
    with avrohttp.Client(EchoProtocol, "localhost", port, timeout=5) as client:
        assert client.balancer is None
        assert client.transceiver.remote_name == ("localhost", port)
        assert client.call("echo", query="hi") == "hi"
        assert client.transceiver.conn.sock.getpeername()[1] == port
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, avrohttp\n"
         "client = avrohttp.Client('{\"protocol\": \"P\", \"messages\": {}}', 'localhost', 1)\n"
         "print(sorted(m for m in sys.modules if m.endswith(('endpoints', 'balancing'))))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert loaded == "[]\n"
