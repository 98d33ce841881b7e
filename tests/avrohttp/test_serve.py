"""The server against slow and greedy clients, as a program and in-process, on each host
(eventlet and asyncio): real sockets, and plain threads on the test's side. Its stop under
load is test_serve_stop.py's."""

import asyncio
import concurrent.futures
import logging
import resource
import selectors
import signal
import socket
import threading
import time

import pytest

import client
import server
from conftest import LargeEcho, read_http_response, receive, server_program, serving
from wire import call_body, read_answer

TRICKLERS = 1500  # more than eventlet's default limit of 1,024 connections


@pytest.fixture(autouse=True)
def enough_open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * TRICKLERS + 500  # each trickler's socket, and the server's end of it
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the open-file limit ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class Tricklers:
    """`count` connections that each start a request, then send one more byte of an endless
    header every 0.5 s, until the server ends them; one thread drives them all.

    outcomes: how the server ended each: "408", "closed" (without a word), or "reset".
    """

    def __init__(self, port: int, count: int) -> None:
        self.outcomes = []
        self.sockets = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            sock.setblocking(False)
            self.sockets.append(sock)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for sock in self.sockets:
                selector.register(sock, selectors.EVENT_READ)
            next_byte = time.monotonic() + 0.5
            while selector.get_map():
                for key, _ in selector.select(max(0.0, next_byte - time.monotonic())):
                    try:
                        answer = key.fileobj.recv(1024)
                        outcome = "408" if answer.startswith(b"HTTP/1.1 408 ") else "closed"
                    except OSError:
                        outcome = "reset"
                    self._end(selector, key.fileobj, outcome)
                if time.monotonic() >= next_byte:
                    next_byte += 0.5
                    for key in list(selector.get_map().values()):
                        try:
                            key.fileobj.send(b"x")
                        except OSError:
                            self._end(selector, key.fileobj, "reset")

    def _end(self, selector: selectors.BaseSelector, sock: socket.socket, outcome: str) -> None:
        selector.unregister(sock)
        sock.close()
        self.outcomes.append(outcome)

    def wait(self, timeout: float) -> list:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{len(self.outcomes)} tricklers ended in time"
        return self.outcomes


def read_in_background(stream) -> concurrent.futures.Future:
    """What a server program logs, read as it comes, lest the pipe fill up: its result()."""
    reading = concurrent.futures.Future()
    threading.Thread(target=lambda: reading.set_result(stream.read()), daemon=True).start()
    return reading


def test_many_slow_clients_do_not_stop_real_ones(host):
    with server_program("--loop", host, "--request-timeout", "3") as running:
        log = read_in_background(running.process.stderr)  # a line for each trickler
        tricklers = Tricklers(running.port, TRICKLERS)
        time.sleep(1.0)  # all of them connected, and trickling
        assert tricklers.outcomes == []
        answered = 0
        for n in range(20):  # real clients, each on a new connection, meanwhile
            with client.EchoClient("127.0.0.1", running.port, timeout=2) as echo:
                assert echo.echo(f"real client {n}") == f"real client {n}"
                answered += 1
        started = time.monotonic()
        outcomes = tricklers.wait(timeout=30)
        waited = time.monotonic() - started
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=30)
        log = log.result(timeout=10)
    print(f"\n{host}: {TRICKLERS} trickling connections: {outcomes.count('408')} got 408, "
          f"{outcomes.count('closed')} closed, {outcomes.count('reset')} reset, all within "
          f"{waited + 1:.1f} s of starting; {answered} real calls answered meanwhile")
    assert answered == 20
    assert outcomes.count("408") == TRICKLERS
    assert log.count("the request did not arrive within 3 s") == TRICKLERS  # each once
    assert "Traceback" not in log, log[log.find("Traceback") - 300:log.find("Traceback") + 2500]


def call_request(message: str, query: str) -> bytes:
    """A whole HTTP request that calls message(query)."""
    body = call_body(message, query)
    return (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


class BusyEcho(server.EchoResponder):
    """Echo, taking at least 0.2 ms of the processor per call; keeps the queries in the
    order it answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.served = []

    def handle_echo(self, query: str) -> str:
        self.served.append(query)
        busy_until = time.perf_counter() + 0.0002
        while time.perf_counter() < busy_until:
            pass
        return query


def test_a_connection_with_many_calls_waiting_takes_turns_with_the_others(host):
    # Connection A has 500 calls waiting in the server's socket buffer at once (pipelined),
    # so that the server never has to wait for the next one. B sends one call once the server
    # is on them. Each call takes at least 0.2 ms, so on eventlet a turn
    # (avrohttp.hosting.TURN_SECONDS, 1 ms) holds 6 of A's calls at most, on any machine, and
    # B is served within A's next turn or two. Without turns, B waits for all 500; with turns
    # ten times as long, for 50 or more. On asyncio, each call is a task of its own, and B's
    # goes in the loop's queue between two of A's.
    calls = 500
    responder = BusyEcho()
    with serving(responder, host) as address, \
            socket.create_connection(address, timeout=10) as a, \
            socket.create_connection(address, timeout=10) as b:
        for sock, query in ((a, "a"), (b, "b")):  # both kept alive, past their first request
            sock.sendall(call_request("echo", query))
            assert read_http_response(sock)[0] == "HTTP/1.1 200 OK"
        a.sendall(call_request("echo", "a") * calls)  # about 60 KB: the kernel takes it all
        while len(responder.served) < 5:  # until the server is on them
            time.sleep(0.0005)
        sent_at = len(responder.served)
        b.sendall(call_request("echo", "b"))
        assert read_http_response(b)[0] == "HTTP/1.1 200 OK"
        answers = b""
        while answers.count(b"HTTP/1.1 200 OK") < calls:  # all of A's, before the server stops
            answers += receive(a)
    assert responder.served[:2] == ["a", "b"]
    answered_before_b = responder.served[sent_at:].index("b")
    print(f"\n{host}: A's calls served after B's was sent, before it: "
          f"{answered_before_b} of {calls}")
    assert answered_before_b <= 20  # three turns at most
    assert responder.served.count("a") == calls + 1


def test_a_client_still_sending_when_told_408_may_send_a_moment_more(host):
    # A slow client may be sending when the server answers 408 and closes. Without a
    # lingering close, what it sends next makes the server's kernel answer with a reset, and
    # its next send fails before it has read the 408.
    with serving(server.EchoResponder(), host, request_timeout=0.5) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        # Past the deadline (0.5 s) and its sweep: the 408 is sent. Within the grace period
        # (hosting.GRACE_SECONDS, 1 s) that the server then lingers for.
        time.sleep(0.9)
        for _ in range(3):
            sock.sendall(b"x" * 100)
            time.sleep(0.05)
        assert sock.recv(1024) == (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                                   b"Content-Length: 0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""


def test_a_client_that_never_reads_its_answer_is_let_go(host, caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    size = 64 * 2**20  # far more than the sockets' buffers hold
    with serving(LargeEcho(size), host, socket_timeout=0.5) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(call_request("echo", "big"))  # the whole request; then, nothing read
        started = time.monotonic()
        while "the answer was not read within 0.5 s" not in caplog.text:
            assert time.monotonic() - started < 10, "the server still waits on the client"
            time.sleep(0.1)
        received = 0
        try:
            while chunk := sock.recv(2**20):  # what the buffers held, then the end
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert 0 < received < size
    assert caplog.text.count("the answer was not read within 0.5 s") == 1  # logged once
    assert "Traceback" not in caplog.text


class SlowEcho(server.EchoResponder):
    """Echo, after a second's wait on a backend of its own, say: on eventlet, a green
    thread's wait."""

    def handle_echo(self, query: str) -> str:
        import eventlet  # the eventlet host's handlers run in its green threads

        eventlet.sleep(1.0)
        return query


class AsyncSlowEcho(server.EchoResponder):
    """Echo, after a second's wait on the asyncio host's loop."""

    async def handle_echo(self, query: str) -> str:
        await asyncio.sleep(1.0)
        return query


def test_a_slow_handler_is_not_cut_short_by_the_clients_deadlines(host):
    responder = SlowEcho() if host == "eventlet" else AsyncSlowEcho()
    # Each of the client's deadlines is far shorter than the handler's work.
    with serving(responder, host, request_timeout=0.2, idle_timeout=0.2,
                 socket_timeout=0.2) as address, \
            socket.create_connection(address, timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(call_request("echo", "hello"))
        status, _, payload = read_http_response(sock)
        took = time.monotonic() - started
    assert (status, read_answer(payload).datum) == ("HTTP/1.1 200 OK", "hello")
    assert took >= 0.9  # the handler's wait, not cut short (the loop's clock is coarser)


def test_http_1_0_keep_alive_clients_are_told_the_idle_timeout(host):
    body = call_body()
    with serving(server.EchoResponder(), host, idle_timeout=7) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        status, headers, payload = read_http_response(sock)
        assert read_answer(payload).datum == "Hello World"
        if host == "eventlet":
            assert (status, headers["connection"], headers["keep-alive"]) == (
                "HTTP/1.1 200 OK", "keep-alive", "timeout=7")
        else:  # uvicorn keeps no HTTP/1.0 connection alive: it says so, and closes it
            assert (status, headers["connection"], "keep-alive" in headers) == (
                "HTTP/1.1 200 OK", "close", False)
            assert sock.recv(1) == b""
