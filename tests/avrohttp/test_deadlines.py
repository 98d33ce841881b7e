"""Deadlines travel (avrohttp.context): each client sends its timeout with every call, and a
call made inside a handler sends, and waits for, the smaller of its own timeout and the time
its caller has left; with none left, it is not sent. Also the client's errors for arguments
that do not fit (avrohttp.BadArguments), and a message parameter named `message`."""

import asyncio
import time

import pytest

import avrohttp
import server
import wire
from avrohttp import codec, context
from conftest import serving
from protocol import EchoProtocol


class Seen(server.EchoResponder):
    """Echo, noting the time left of each call it answers (None without a deadline), and
    sleeping first for `sleep` seconds."""

    def __init__(self, sleep: float = 0.0) -> None:
        super().__init__()
        self.time_left = []
        self.sleep = sleep

    def handle_echo(self, query: str) -> str:
        self.time_left.append(avrohttp.time_left())
        time.sleep(self.sleep)
        return query


class Relay(server.EchoResponder):
    """Echo, which asks the service at `upstream` for its answer, with a Client whose own
    timeout is 10 s; after sleeping for `sleep` seconds first."""

    def __init__(self, upstream: tuple, sleep: float = 0.0) -> None:
        super().__init__()
        self.upstream = upstream
        self.sleep = sleep

    def handle_echo(self, query: str) -> str:
        time.sleep(self.sleep)
        with avrohttp.Client(EchoProtocol, *self.upstream, timeout=10) as upstream:
            try:
                return upstream.call("echo", query=query)
            except avrohttp.DeadlineExceeded as e:
                raise avrohttp.RemoteSystemError(f"upstream: {e}") from e


def test_a_client_sends_its_timeout_and_the_handler_sees_the_time_left(host):
    seen = Seen()
    with serving(seen, host) as address:
        with avrohttp.Client(EchoProtocol, *address, timeout=2.5) as client:
            assert client.call("echo", query="one") == "one"
            assert client.call("echo", query="two") == "two"  # the fast path sends it too
        with avrohttp.Client(EchoProtocol, *address, timeout=7) as other:
            assert other.call("echo", query="three") == "three"
    first, second, third = seen.time_left
    assert 2.0 < first <= 2.5 and 2.0 < second <= 2.5
    assert 6.5 < third <= 7


def test_outside_a_handler_there_is_no_call_and_no_time_left():
    assert avrohttp.current_call() is None
    assert avrohttp.time_left() is None


def test_a_call_inside_a_handler_takes_its_callers_time_left(host):
    upstream = Seen()
    with serving(upstream, host) as up, serving(Relay(up), host) as relay:
        with avrohttp.Client(EchoProtocol, *relay, timeout=1.5) as client:
            assert client.call("echo", query="hi") == "hi"
        with avrohttp.Client(EchoProtocol, *relay, timeout=30) as client:
            assert client.call("echo", query="hi") == "hi"
    less, own = upstream.time_left
    assert 1.0 < less < 1.5  # the caller's 1.5 s, less what the relay took
    assert 9.5 < own <= 10  # the relay's client's own timeout, which is shorter


def test_a_call_inside_a_handler_with_no_time_left_is_not_sent(host):
    upstream = Seen()
    with serving(upstream, host) as up, serving(Relay(up, sleep=0.4), host) as relay:
        with avrohttp.Client(EchoProtocol, *relay, timeout=0.3) as client:
            with pytest.raises(avrohttp.CallFailed):  # the client gives up at 0.3 s
                client.call("echo", query="hi")
        time.sleep(0.3)  # the relay's handler has gone on, and found no time left
    assert upstream.time_left == []


def test_a_call_inside_a_handler_waits_only_for_the_time_its_caller_has_left(host):
    with serving(Seen(sleep=1.0), host) as up, serving(Relay(up), host) as relay:
        with avrohttp.Client(EchoProtocol, *relay, timeout=5) as client:
            # The relay's caller gave it 0.4 s: the relay's call upstream gives up then, and
            # the relay answers its caller with the error, in time.
            client.requestor.timeout = 0.4
            started = time.monotonic()
            with pytest.raises(avrohttp.RemoteSystemError) as raised:
                client.call("echo", query="hi")
            took = time.monotonic() - started
    assert 0.4 <= took < 0.9
    assert raised.value.message.startswith(f"upstream: the server at {up[0]}:{up[1]} did not "
                                           "answer echo within the time its caller had left")


def test_an_async_handler_passes_its_time_left_on_to_the_async_client():
    upstream = Seen()

    class AsyncRelay(server.EchoResponder):
        def __init__(self, address):
            super().__init__()
            self.address = address

        async def handle_echo(self, query: str) -> str:
            await asyncio.sleep(0.01)
            async with avrohttp.AsyncClient(EchoProtocol, *self.address, timeout=10) as up:
                return await up.call("echo", query=query)

    with serving(upstream, "asyncio") as up, serving(AsyncRelay(up), "asyncio") as relay:
        with avrohttp.Client(EchoProtocol, *relay, timeout=1.5) as client:
            assert client.call("echo", query="hi") == "hi"
    [left] = upstream.time_left
    assert 1.0 < left < 1.5


# --- arguments that do not fit ------------------------------------------------------------

def test_a_client_raises_bad_arguments_in_one_line_and_sends_nothing(live_server):
    with avrohttp.Client(EchoProtocol, *live_server, timeout=5) as client:
        for _ in range(2):  # before the handshake is settled, then on the fast path
            with pytest.raises(avrohttp.BadArguments) as raised:
                client.call("echo", query=5)
            assert str(raised.value) == "echo: query: expected a string (str), got 5 (int)"
            assert isinstance(raised.value, TypeError)
            with pytest.raises(avrohttp.BadArguments, match='no parameter "qurey"'):
                client.call("echo", qurey="hi")
            with pytest.raises(avrohttp.BadArguments, match="query: missing"):
                client.call("echo")
            assert client.call("echo", query="still fine") == "still fine"


@pytest.mark.parametrize("host", ["asyncio"])
def test_the_async_client_raises_bad_arguments_and_keeps_its_connection(live_server):
    async def calls():
        client = avrohttp.AsyncClient(EchoProtocol, *live_server, timeout=5)
        try:
            assert await client.call("echo", query="hi") == "hi"
            with pytest.raises(avrohttp.BadArguments, match="echo: query: expected a string"):
                await client.call("echo", query=b"bytes")
            assert await client.call("echo", query="again") == "again"
            return len(client._connections)
        finally:
            await client.close()
    assert asyncio.run(calls()) == 1


def test_a_message_may_have_a_parameter_named_message(host):
    protocol = avrohttp.parse_protocol("""{"protocol": "Notes", "messages": {"note": {
        "request": [{"name": "message", "type": "string"}], "response": "string"}}}""")

    class Notes(avrohttp.Responder):
        def __init__(self):
            super().__init__(protocol)

        def handle_note(self, message: str) -> str:
            return message.upper()

    with serving(Notes(), host) as address:
        with avrohttp.Client(protocol, *address, timeout=5) as client:
            assert client.call("note", message="hi") == "HI"


def test_an_async_handler_cancelled_still_ends_its_call_for_the_hooks():
    seen = []

    class Recorder(avrohttp.CallHook):
        def after(self, call):
            seen.append(call.outcome)

    class Waits(server.EchoResponder):
        async def handle_echo(self, query: str) -> str:
            await asyncio.sleep(60)
            return query

    responder = Waits()
    responder.hooks.append(Recorder())

    async def cancelled() -> None:
        pending = responder.respond(codec.unframe(wire.call_body()))
        task = asyncio.ensure_future(pending.answer())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    assert seen == ["system_error"]  # so the metrics' in-flight gauge goes down again


def test_the_async_client_waits_no_longer_than_the_time_left_after_a_longer_call():
    # The connection's timer, set by a call with the client's own 10 s, must not let a later
    # call with 0.3 s left wait for those 10 s.
    class SlowOnAsk(server.EchoResponder):
        def handle_echo(self, query: str) -> str:
            time.sleep(2 if query == "slow" else 0)
            return query

    async def calls(address) -> float:
        async with avrohttp.AsyncClient(EchoProtocol, *address, timeout=10) as client:
            assert await client.call("echo", query="quick") == "quick"  # the timer: at 10 s
            here = context.holder()
            here.slot = [None, "relay", {}, None, time.monotonic() + 0.3]  # as in a handler
            started = time.monotonic()
            try:
                with pytest.raises(avrohttp.DeadlineExceeded):
                    await client.call("echo", query="slow")
            finally:
                here.slot = None
            return time.monotonic() - started

    with serving(SlowOnAsk(), "eventlet") as address:
        assert asyncio.run(calls(address)) < 1.5
