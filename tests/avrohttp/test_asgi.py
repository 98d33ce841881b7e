"""The ASGI application and the asyncio host's own pieces: async def handlers (answered, a
declared error, a system error, each seen by the hooks and counted by the metrics), the
eventlet host and make_application refusing them at start-up, and what a blocking plain
handler does to the asyncio host's loop. (Every HTTP rule is tested on both hosts elsewhere:
test_fuzz.py in-process, the end-to-end tests through real sockets.)"""

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

import avrohttp
import avrohttp.asgi
import client as client_module
import server
from avrohttp import hooks
from avrohttp.async_handlers import AsyncHandlers
from conftest import ROOT, call_asgi, read_http_response, server_class, serving
import test_hooks
from outcomes_server import AsyncOutcomesResponder, OutcomesResponder
from test_metrics import post, scrape_text
from wire import call_body, read_answer

OUTCOMES_PROGRAM = ROOT / "tests" / "outcomes_server.py"


class Recorder(test_hooks.Recorder):
    """Notes each call, with what before() and after() saw, and how long it took."""

    def after(self, call):
        self.events.append(("after", call.message, call.outcome, call.seconds))


# --- async def handlers, on the asyncio host ------------------------------------------------

def test_the_asgi_application_answers_a_plain_handler_in_process():
    response = call_asgi(avrohttp.asgi.make_asgi_application(server.EchoResponder()),
                         call_body("split", "abcd"))
    assert (response.status, response.headers["content-type"]) == (200, "avro/binary")
    assert read_answer(response.body, "split").datum == "ab"


def test_an_async_handler_answers_each_outcome_and_the_hooks_see_it(caplog):
    recorder = Recorder()
    responder = AsyncOutcomesResponder(call_hooks=[recorder])
    with serving(responder, "asyncio") as (host, port), \
            avrohttp.Client(str(responder.local_protocol), host, port, timeout=5) as client:
        assert client.call("echo", query="hi") == "hi"
        with pytest.raises(avrohttp.DeclaredError) as declared:
            client.call("echo", query="refuse")
        with pytest.raises(avrohttp.RemoteSystemError) as failed:
            client.call("echo", query="crash")
        assert client.call("echo", query="still fine") == "still fine"
    assert (declared.value.name, declared.value.datum) == ("Refused", {"why": "refused"})
    assert failed.value.message == "Internal error in echo"  # the details stay in the log
    [logged] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert logged.getMessage() == "handler for 'echo' failed"
    assert "a bug in the handler" in caplog.text  # its traceback, in the server's log
    outcomes = [hooks.ANSWERED, hooks.DECLARED_ERROR, hooks.SYSTEM_ERROR, hooks.ANSWERED]
    assert [event[:3] for event in recorder.events] == [
        event for outcome in outcomes
        for event in (("before", "echo", None), ("after", "echo", outcome))]


class SlowAsync(server.EchoResponder):
    """echo awaits SLOW_SECONDS before it answers, as a handler that calls another service
    would: the loop serves others meanwhile."""

    async def handle_echo(self, query: str) -> str:
        await asyncio.sleep(SLOW_SECONDS)
        return query


class SlowBlocking(server.EchoResponder):
    """echo blocks SLOW_SECONDS (time.sleep, or a blocking library's call) before it answers:
    the whole loop waits with it."""

    def handle_echo(self, query: str) -> str:
        time.sleep(SLOW_SECONDS)
        return query


SLOW_SECONDS = 0.3


def test_the_hooks_and_metrics_time_an_async_handler_to_its_answer():
    recorder = Recorder()
    responder = SlowAsync()
    responder.hooks.append(recorder)
    with serving(responder, "asyncio", metrics=True) as (host, port), \
            client_module.EchoClient(host, port, timeout=5) as client:
        assert client.echo("hi") == "hi"
        status, scrape = post(port, b"", path="/metrics", method="GET")
    assert status == 200
    [(_, _, outcome, seconds)] = [event for event in recorder.events if event[0] == "after"]
    assert outcome == hooks.ANSWERED and seconds >= SLOW_SECONDS  # after the await, not before
    samples = scrape_text(scrape.decode())
    echo = (("message", "echo"),)
    assert samples[("avro_server_calls_total", (*echo, ("outcome", "answered")))] == 1
    assert samples[("avro_server_call_duration_seconds_sum", echo)] >= SLOW_SECONDS
    assert samples[("avro_server_calls_in_flight", ())] == 0


# --- ...and refused, at start-up, where there is no event loop -------------------------------

class AsyncInvoke(avrohttp.Responder):
    """A responder whose invoke is an async def, as avro.ipc's style would have it."""

    async def invoke(self, message, request):
        return request["query"]


def test_make_application_refuses_async_handlers():
    with pytest.raises(AsyncHandlers, match=r"^AsyncOutcomesResponder has async def handlers "
                       r"\(handle_echo\), which need an event loop: serve it on the asyncio "
                       r"host \(--loop asyncio\), or make them plain functions$"):
        avrohttp.make_application(AsyncOutcomesResponder())
    with pytest.raises(AsyncHandlers, match=r"^AsyncInvoke has async def handlers \(invoke\)"):
        avrohttp.make_application(AsyncInvoke(server.EchoProtocol))
    avrohttp.make_application(OutcomesResponder())  # plain handlers are fine


def test_the_eventlet_host_refuses_async_handlers_before_it_listens(caplog):
    eventlet_server = server_class("eventlet")(avrohttp.ServerOptions(port=0),
                                               AsyncOutcomesResponder())
    assert eventlet_server.run() == 1
    assert eventlet_server.address is None  # it never listened
    [line] = [record.getMessage() for record in caplog.records if record.name == "avrohttp"]
    assert line == ("cannot serve: AsyncOutcomesResponder has async def handlers (handle_echo), "
                    "which need an event loop: serve it on the asyncio host (--loop asyncio), "
                    "or make them plain functions")


def test_the_program_with_async_handlers_says_so_in_one_line_on_eventlet():
    result = subprocess.run([sys.executable, str(OUTCOMES_PROGRAM), "--port", "0"],
                            env={**os.environ, "OUTCOMES_HANDLERS": "async"}, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.endswith(" avrohttp cannot serve: AsyncOutcomesResponder has async def handlers "
                         "(handle_echo), which need an event loop: serve it on the asyncio host "
                         "(--loop asyncio), or make them plain functions")


# --- A blocking plain handler on the asyncio host -------------------------------------------

def health_seconds_during_a_slow_call(responder) -> float:
    """How long GET /health takes on its own connection, asked while another connection's
    echo call is in its handler."""
    with serving(responder, "asyncio") as address:
        with socket.create_connection(address, timeout=5) as health:
            health.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # connected, warm
            assert read_http_response(health)[0] == "HTTP/1.1 200 OK"
            client = client_module.EchoClient(*address, timeout=5)
            answers = []  # the slow call's, checked here: a failure in the thread is no answer
            call = threading.Thread(target=lambda: answers.append(client.echo("slow")))
            call.start()
            time.sleep(0.05)  # the call is in its handler
            started = time.monotonic()
            health.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_http_response(health)[0] == "HTTP/1.1 200 OK"
            seconds = time.monotonic() - started
            call.join(5)
            client.close()
    assert answers == ["slow"]  # the health check was timed while the call was in its handler
    return seconds


def test_a_blocking_handler_holds_up_every_connection_and_an_async_one_does_not():
    # A plain handler runs on the loop, as it is: while it blocks, nothing else is served,
    # on any connection (docs/asyncio.md says what to do about it: await, or run the blocking
    # call in a thread with asyncio.to_thread).
    assert health_seconds_during_a_slow_call(SlowBlocking()) >= SLOW_SECONDS - 0.1
    assert health_seconds_during_a_slow_call(SlowAsync()) < SLOW_SECONDS / 3
