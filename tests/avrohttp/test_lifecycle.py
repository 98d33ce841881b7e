"""A server's life under an orchestrator, on both hosts: the shutdown delay
(--shutdown-delay) and the connection age (--max-connection-age), in-process, as programs,
and with --workers. The probes themselves are test_probes.py's."""

import logging
import math
import re
import signal
import socket
import threading
import time

import pytest

import avrohttp
import server
from avrohttp import cli, hosting
from conftest import (log_messages, read_http_response, running, server_class,
                      server_program, serving)
from protocol import EchoProtocol
from test_probes import get
from test_supervisor import wait_for, worker_pids
from wire import call_body, read_answer


@pytest.mark.parametrize("option, value, error", [
    ("--shutdown-delay", "-1", "must be 0 seconds or more, and finite"),
    ("--shutdown-delay", "inf", "must be 0 seconds or more, and finite"),
    ("--max-connection-age", "0", "must be more than 0 seconds"),
    ("--max-connection-age", "nan", "must be more than 0 seconds")])
def test_the_options_refuse_a_duration_that_makes_no_sense(capsys, option, value, error):
    with pytest.raises(SystemExit):
        cli.parse_options([option, value], prog="server.py")
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"server.py: error: argument {option}: {error}")


def test_the_options_by_default_and_as_given():
    options, _, _ = cli.parse_options([])
    assert (options.shutdown_delay, options.max_connection_age) == (0, None)
    options, _, _ = cli.parse_options(["--shutdown-delay", "5", "--max-connection-age", "300"])
    assert (options.shutdown_delay, options.max_connection_age) == (5, 300)


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


@pytest.mark.parametrize("access_log", [False, True])  # on asyncio, True takes the ASGI path
def test_during_the_delay_every_call_is_answered_and_closes_its_connection(host, access_log,
                                                                           caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    options = avrohttp.ServerOptions(port=0, shutdown_delay=60, access_log=access_log)
    with running(server_class(host)(options, server.EchoResponder())) as started:
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


# The connection age (--max-connection-age): a kept-alive connection's first answer past its
# age closes it.


def test_each_connection_gets_its_own_age_within_a_tenth_of_the_setting():
    lifetimes = [hosting.connection_lifetime(10.0) for _ in range(1000)]
    assert all(9.0 <= lifetime <= 11.0 for lifetime in lifetimes)
    # Spread over the whole range, so that connections opened together close apart.
    assert min(lifetimes) < 9.2 and max(lifetimes) > 10.8
    assert hosting.connection_lifetime(None) == math.inf


def test_a_kept_alive_client_is_moved_to_a_new_connection_once_its_own_is_old(host):
    with serving(server.EchoResponder(), host, max_connection_age=0.5) as address, \
            avrohttp.Client(EchoProtocol, *address, timeout=10) as caller:
        calls = [0]  # the calls on each connection of the client, the last one still open
        ends = time.monotonic() + 2.5
        while time.monotonic() < ends:
            assert caller.call("echo", query="hi") == "hi"  # never fails
            calls[-1] += 1
            if caller.transceiver.conn.sock is None:  # the answer said "Connection: close"
                calls.append(0)
            time.sleep(0.05)
    # Each closed after an answer once half a second old (give or take a tenth), so at most
    # 2.5 / 0.45 times, and never after its first answer, however slow the machine.
    closed = calls[:-1]
    assert 2 <= len(closed) <= 6, calls
    assert min(closed) >= 2, calls


@pytest.mark.parametrize("access_log", [False, True])  # on asyncio, True takes the ASGI path
def test_an_idle_connection_is_left_open_past_its_age_and_its_next_answer_closes_it(
        host, access_log):
    with serving(server.EchoResponder(), host, max_connection_age=0.2,
                 access_log=access_log) as address, \
            socket.create_connection(address, timeout=10) as sock:
        assert echo_on(sock, "young") == ("HTTP/1.1 200 OK", None, "young")
        time.sleep(1.0)  # idle, and old
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # neither closed nor reset: nothing to read
            sock.recv(1)
        sock.setblocking(True)
        assert echo_on(sock, "old") == ("HTTP/1.1 200 OK", "close", "old")
        assert closed_by_the_server(sock)


def test_workers_close_old_connections(host):
    with server_program("--loop", host, "--workers", "2",
                        "--max-connection-age", "0.3") as running_server, \
            avrohttp.Client(EchoProtocol, "127.0.0.1", running_server.port,
                            timeout=10) as caller:
        closes = 0
        ends = time.monotonic() + 1.5
        while time.monotonic() < ends:
            assert caller.call("echo", query="hi") == "hi"
            closes += caller.transceiver.conn.sock is None
            time.sleep(0.05)
        running_server.process.send_signal(signal.SIGTERM)
        running_server.process.wait(timeout=30)
    assert closes >= 2
    assert running_server.process.returncode == 0
