"""A server's life under an orchestrator, on both hosts: the probes (GET /health/live and
/health/ready), the shutdown delay (--shutdown-delay) and the connection age
(--max-connection-age), in-process, as programs, and with --workers."""

import http.client
import logging
import re
import signal
import socket
import threading
import time

import avro.errors
import avro.ipc
import pytest

import avrohttp
import server
from avrohttp.answers import Rules
from conftest import (call_app, log_messages, read_http_response, running, server_class,
                      server_program, serving)
from protocol import EchoProtocol
from test_supervisor import wait_for, worker_pids
from wire import call_body, read_answer


class Readiness(server.EchoResponder):
    """Echo, whose ready() says what `state` says: None (ready), a reason, or an exception to
    raise."""

    def __init__(self) -> None:
        super().__init__()
        self.state = None

    def ready(self):
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def get(address: tuple, path: str, method: str = "GET") -> tuple:
    """One request on a connection of its own: (status, headers, body)."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/health"])
def test_the_probes_answer_ok_while_the_server_serves(host, path):
    with serving(server.EchoResponder(), host) as address:
        status, headers, body = get(address, path)
        assert (status, body) == (200, b"OK\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        status, headers, body = get(address, path, "HEAD")
        assert (status, headers["Content-Length"], body) == (200, "3", b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_probes_take_nothing_but_get_and_head(host, method):
    with serving(server.EchoResponder(), host) as address:
        for path in ("/health/live", "/health/ready"):
            status, headers, _ = get(address, path, method)
            assert (status, headers["Allow"]) == (405, "GET, HEAD")


def test_ready_answers_503_with_the_services_reason(host):
    responder = Readiness()
    with serving(responder, host) as address:
        responder.state = "the database is\nunreachable"
        assert get(address, "/health/ready")[::2] == (503, b"the database is unreachable\n")
        status, headers, body = get(address, "/health/ready", "HEAD")
        assert (status, body) == (503, b"")
        # Alive, and still answering calls: only the balancer is told to send none.
        assert get(address, "/health/live")[::2] == (200, b"OK\n")
        assert get(address, "/health")[::2] == (200, b"OK\n")
        with avrohttp.Client(EchoProtocol, *address, timeout=10) as caller:
            assert caller.call("echo", query="still") == "still"
        responder.state = None
        assert get(address, "/health/ready")[::2] == (200, b"OK\n")


def test_an_exception_in_ready_is_not_ready_and_logged_once(host, caplog):
    responder = Readiness()
    caplog.set_level(logging.INFO, logger="avrohttp")
    with serving(responder, host) as address:
        responder.state = RuntimeError("no connection to db.internal:5432")
        for _ in range(3):  # each probe: 503, without the exception's words
            assert get(address, "/health/ready")[::2] == (
                503, b"the readiness check failed (RuntimeError)\n")
        responder.state = None
        assert get(address, "/health/ready")[0] == 200
        responder.state = RuntimeError("no connection to db.internal:5432")
        assert get(address, "/health/ready")[0] == 503
    failures = [record for record in caplog.records
                if record.getMessage() == "the readiness check failed"]
    assert len(failures) == 2  # once, and once more after it had worked again
    assert all(record.exc_info[0] is RuntimeError for record in failures)


def test_a_responder_without_ready_is_always_ready(app):
    class Plain(avro.ipc.Responder):  # avro.ipc's own, which has no ready()
        def invoke(self, message, request):
            raise avro.errors.AvroRemoteException("no")

    for application in (app, avrohttp.make_application(Plain(EchoProtocol))):
        response = call_app(lambda environ, start: application(
            {**environ, "PATH_INFO": "/health/ready"}, start), method="GET", content_type=None)
        assert (response.status, response.body) == (200, b"OK\n")


def test_ready_answers_503_once_the_server_is_shutting_down():
    rules = Rules(Readiness())
    assert rules.before_body("GET", "/health/ready", None, None, None).status == "200 OK"
    rules.shutting_down = True
    answer = rules.before_body("GET", "/health/ready", None, None, None)
    assert (answer.status, answer.body) == ("503 Service Unavailable", b"shutting down\n")
    assert rules.before_body("GET", "/health/live", None, None, None).status == "200 OK"


def test_the_probes_are_counted_in_the_metrics(host):
    responder = Readiness()
    with serving(responder, host, metrics=True) as address:
        get(address, "/health/ready")
        get(address, "/health/live")
        responder.state = "warming up"
        get(address, "/health/ready")
        get(address, "/health/ready")
        get(address, "/health/ready", "POST")
        metrics = get(address, "/metrics")[2].decode()
    assert 'avro_server_http_responses_total{status="200"} 2.0' in metrics
    assert 'avro_server_http_responses_total{status="503"} 2.0' in metrics
    assert 'avro_server_http_responses_total{status="405"} 1.0' in metrics


# The shutdown delay (--shutdown-delay): SIGTERM, then serving on with /health/ready at 503
# and each answer closing its connection, then the drain.


def call_request(query: str) -> bytes:
    """A whole HTTP/1.1 request that calls echo(query), on a kept-alive connection."""
    body = call_body("echo", query)
    return (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


def echo_on(sock: socket.socket, query: str) -> tuple:
    """Call echo(query) on this connection: (status line, its Connection header, answer)."""
    sock.sendall(call_request(query))
    status, headers, body = read_http_response(sock)
    return status, headers.get("connection"), read_answer(body).datum


def closed_by_the_server(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return False  # cut off rather than closed: an answer might have been lost


class Log:
    """A server program's log, read line by line as it comes, by a thread of its own."""

    def __init__(self, stream) -> None:
        self.lines = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        try:
            for line in stream:
                self.lines.append(line)
        except ValueError:  # closed under it, as server_program ends after a failure
            pass

    def wait_for(self, text: str, count: int = 1) -> None:
        wait_for(lambda: sum(text in line for line in list(self.lines)) >= count, timeout=20,
                 what=f"{text!r} in the log")

    def messages(self) -> list:
        self.thread.join(10)
        return log_messages("".join(self.lines))


def shut_down_in_process(host: str, **options):
    """A real server of `host` in a thread, with these options: see running()."""
    return running(server_class(host)(avrohttp.ServerOptions(port=0, **options),
                                      server.EchoResponder()))


def test_during_the_delay_every_call_is_answered_and_closes_its_connection(host, caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    with shut_down_in_process(host, shutdown_delay=60) as started:
        address = started.address
        kept = socket.create_connection(address, timeout=10)
        in_flight = socket.create_connection(address, timeout=10)
        with kept, in_flight:
            assert echo_on(kept, "before") == ("HTTP/1.1 200 OK", None, "before")
            request = call_request("in flight")
            in_flight.sendall(request[:-10])  # a call in progress as the delay begins
            time.sleep(0.2)  # read by the server, which waits for the rest
            started.shut_down()
            wait_for(lambda: get(address, "/health/ready")[0] == 503, what="ready: 503")
            # New connections are still accepted; the probes say what is going on.
            status, headers, body = get(address, "/health/ready")
            assert (status, headers["Connection"], body) == (503, "close", b"shutting down\n")
            status, headers, body = get(address, "/health/live")
            assert (status, headers["Connection"], body) == (200, "close", b"OK\n")
            # The call in progress, and the next on a kept-alive connection, are answered;
            # each answer closes its connection, so that the client goes elsewhere next.
            in_flight.sendall(request[-10:])
            status, headers, body = read_http_response(in_flight)
            assert (status, headers.get("connection")) == ("HTTP/1.1 200 OK", "close")
            assert read_answer(body).datum == "in flight"
            assert echo_on(kept, "during") == ("HTTP/1.1 200 OK", "close", "during")
            assert closed_by_the_server(kept) and closed_by_the_server(in_flight)
            # A client that keeps calling is answered every time, on a new connection each.
            with avrohttp.Client(EchoProtocol, *address, timeout=10) as caller:
                for n in range(5):
                    assert caller.call("echo", query=f"call {n}") == f"call {n}"
            started.stop()  # ends the delay: the drain begins
            started.listening.clear()
            wait_for(lambda: refused(address), what="the listener to close")
    messages = [record.getMessage() for record in caplog.records if record.name == "avrohttp"]
    assert messages[-3:] == ["shutting down: /health/ready answers 503; still serving for 60 s",
                             "no longer accepting: draining 0 connections", "stopped"]


def refused(address: tuple) -> bool:
    try:
        socket.create_connection(address, timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sigterm_serves_through_the_delay_then_drains_and_exits_0(host):
    with server_program("--loop", host, "--shutdown-delay", "2") as running_server:
        log = Log(running_server.process.stderr)
        address = ("127.0.0.1", running_server.port)
        with avrohttp.Client(EchoProtocol, *address, timeout=10) as caller, \
                socket.create_connection(address, timeout=10) as in_flight:
            assert caller.call("echo", query="before") == "before"
            request = call_request("through the delay")
            in_flight.sendall(request[:-10])  # in flight until the drain
            time.sleep(0.2)
            signalled = time.monotonic()
            running_server.process.send_signal(signal.SIGTERM)
            log.wait_for("shutting down")
            assert get(address, "/health/ready")[::2] == (503, b"shutting down\n")
            assert caller.call("echo", query="during") == "during"  # kept alive till now
            assert caller.call("echo", query="again") == "again"  # on a new connection
            log.wait_for("no longer accepting")
            assert refused(address)
            in_flight.sendall(request[-10:])
            status, headers, body = read_http_response(in_flight)
            assert (status, headers.get("connection")) == ("HTTP/1.1 200 OK", "close")
            assert read_answer(body).datum == "through the delay"
            running_server.process.wait(timeout=30)
            stopped_after = time.monotonic() - signalled
    assert running_server.process.returncode == 0
    assert stopped_after >= 2  # the whole delay
    assert log.messages() == [
        "avrohttp shutting down: /health/ready answers 503; still serving for 2 s",
        "avrohttp no longer accepting: draining 1 connection", "avrohttp stopped"]


def test_ctrl_c_stops_without_the_delay(host):
    with server_program("--loop", host, "--shutdown-delay", "60") as running_server:
        running_server.process.send_signal(signal.SIGINT)
        _, log = running_server.process.communicate(timeout=30)  # not 60 s
    assert running_server.process.returncode == 0
    assert log_messages(log) == ["avrohttp stopping: answering the calls in flight",
                                 "avrohttp stopped"]


def test_a_second_sigterm_ends_the_delay(host):
    with server_program("--loop", host, "--shutdown-delay", "60") as running_server:
        log = Log(running_server.process.stderr)
        running_server.process.send_signal(signal.SIGTERM)
        log.wait_for("shutting down")
        running_server.process.send_signal(signal.SIGTERM)
        running_server.process.wait(timeout=30)  # not 60 s
    assert running_server.process.returncode == 0
    assert log.messages() == [
        "avrohttp shutting down: /health/ready answers 503; still serving for 60 s",
        "avrohttp no longer accepting: draining 0 connections", "avrohttp stopped"]


def test_workers_each_serve_through_the_delay(host):
    with server_program("--loop", host, "--workers", "2",
                        "--shutdown-delay", "2") as running_server:
        supervisor = running_server.process
        log = Log(supervisor.stderr)
        address = ("127.0.0.1", running_server.port)
        pids = wait_for(lambda: len(worker_pids(supervisor)) == 2 and worker_pids(supervisor),
                        what="two workers")
        signalled = time.monotonic()
        supervisor.send_signal(signal.SIGTERM)
        log.wait_for("] shutting down", count=2)  # each worker's line
        for n in range(10):  # new connections, which the kernel spreads over both workers
            status, headers, body = get(address, "/health/ready")
            assert (status, headers["Connection"], body) == (503, "close", b"shutting down\n")
            with avrohttp.Client(EchoProtocol, *address, timeout=10) as caller:
                assert caller.call("echo", query=f"call {n}") == f"call {n}"
        supervisor.wait(timeout=30)
        stopped_after = time.monotonic() - signalled
    assert supervisor.returncode == 0
    assert stopped_after >= 2
    messages = log.messages()
    for pid in pids:
        lines = [message.split(" ", 1)[1] for message in messages
                 if message.startswith(f"avrohttp[{pid}] ")]
        assert lines[0] == "shutting down: /health/ready answers 503; still serving for 2 s"
        assert re.fullmatch(r"no longer accepting: draining \d+ connections?", lines[1])
        assert lines[2:] == ["stopped"]
    assert [message for message in messages if message.startswith("avrohttp ")] == [
        "avrohttp shutting down: the workers' /health/ready answers 503; still serving for 2 s",
        "avrohttp stopping: the workers answer the calls in flight", "avrohttp stopped"]


def test_ctrl_c_stops_workers_without_the_delay(host):
    with server_program("--loop", host, "--workers", "2",
                        "--shutdown-delay", "60") as running_server:
        supervisor = running_server.process
        pids = wait_for(lambda: len(worker_pids(supervisor)) == 2 and worker_pids(supervisor),
                        what="two workers")
        supervisor.send_signal(signal.SIGINT)
        _, log = supervisor.communicate(timeout=30)  # not 60 s
    assert supervisor.returncode == 0
    for pid in pids:
        assert [message for message in log_messages(log)
                if message.startswith(f"avrohttp[{pid}] ")] == [
            f"avrohttp[{pid}] stopping: answering the calls in flight", f"avrohttp[{pid}] stopped"]
