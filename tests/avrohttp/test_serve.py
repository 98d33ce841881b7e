"""server.py against slow clients, as a program and in-process, and stopped under load: real
sockets."""

import logging
import os
import re
import resource
import signal
import socket
import time

import eventlet
import pytest

import avrohttp
import avrohttp.wsgi
import client
from conftest import (echo_app, log_messages, read_http_response, receive, server_program,
                      serving)
from wire import call_body, read_answer

TRICKLERS = 1500  # more than eventlet's default limit of 1,024 connections


@pytest.fixture(autouse=True)
def enough_open_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = TRICKLERS + 500
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the open-file limit ({hard}) is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def trickle(port: int) -> str:
    """Start a request, then send one more byte of an endless header every 0.5 s.

    Returns how the server ended it: "408", "closed" (without a word), or "reset".
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.5)
        while True:
            try:
                answer = sock.recv(1024)
            except socket.timeout:
                try:
                    sock.sendall(b"x")
                except OSError:
                    return "reset"
                continue
            except OSError:
                return "reset"
            return "408" if answer.startswith(b"HTTP/1.1 408 ") else "closed"


def test_many_slow_clients_do_not_stop_real_ones():
    with server_program("--request-timeout", "3") as running:
        # It logs a line for each of them: read those as they come, lest the pipe fill up.
        log = eventlet.spawn(running.process.stderr.read)
        pool = eventlet.GreenPool(TRICKLERS)
        ended = [pool.spawn(trickle, running.port) for _ in range(TRICKLERS)]
        eventlet.sleep(1.0)  # all of them connected, and trickling
        assert not any(thread.dead for thread in ended)
        answered = 0
        for n in range(20):  # real clients, each on a new connection, meanwhile
            with client.EchoClient("127.0.0.1", running.port, timeout=2) as echo:
                assert echo.echo(f"real client {n}") == f"real client {n}"
                answered += 1
        started = time.monotonic()
        outcomes = [thread.wait() for thread in ended]
        waited = time.monotonic() - started
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=30)
        log = log.wait()
    print(f"\n{TRICKLERS} trickling connections: {outcomes.count('408')} got 408, "
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


def start_calls_in_flight(port: int, count: int) -> tuple:
    """Open `count` connections, each with a whole call but for its last 10 bytes."""
    request = call_request("split", "Hello World")
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request[:-10])
        socks.append(sock)
    return socks, request[-10:]


def load(port: int, outcomes: list, stop: list) -> None:
    """Call echo over and over on a keep-alive connection until the server is gone."""
    n = 0
    while True:
        with client.EchoClient("127.0.0.1", port, timeout=10) as echo:
            try:
                while True:
                    n += 1
                    assert echo.echo(f"load {n}") == f"load {n}"
                    outcomes.append(("ok", stop[0]))
            except avrohttp.CallFailed as e:
                outcomes.append((str(e), stop[0]))
                if stop[0]:
                    return


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stop_under_load_answers_every_call_in_flight(workers):
    with server_program("--workers", workers, "--access-log") as running:
        log = eventlet.spawn(running.process.stderr.read)  # lest the pipe fill up
        # Calls in flight: the servers read them before the load starts. (A connection that
        # a server has accepted but not yet read from counts as idle, and a stop closes it;
        # 2 s leaves room for a machine busy with other work.)
        in_flight, rest = start_calls_in_flight(running.port, 16)
        eventlet.sleep(2.0)
        stop = [False]
        outcomes = []
        pool = eventlet.GreenPool()
        for _ in range(8):
            pool.spawn(load, running.port, outcomes, stop)
        eventlet.sleep(0.5)  # a load of calls going on
        stop[0] = True
        running.process.send_signal(signal.SIGTERM)
        eventlet.sleep(0.3)
        answers = []
        for sock in in_flight:
            with sock:
                sock.sendall(rest)
                status, _, payload = read_http_response(sock)
                answers.append((status, read_answer(payload, "split").datum))
        assert pool.waitall() is None
        running.process.wait(timeout=30)
        log = log.wait()
    served = [ok for ok, after_stop in outcomes if ok == "ok"]
    failed = [(error, after_stop) for error, after_stop in outcomes if error != "ok"]
    print(f"\nworkers={workers}: {len(served)} load calls answered, {len(failed)} refused "
          f"after the stop, {len(answers)} calls in flight at the stop all answered")
    assert answers == [("HTTP/1.1 200 OK", "Hello")] * 16
    assert running.process.returncode == 0
    assert served and failed
    # Only new calls fail, once the server has stopped: refused, or cut off as the server
    # closed an idle kept-alive connection; never timed out.
    refused = re.compile(
        rf"cannot reach the server at 127\.0\.0\.1:{running.port}: (\[Errno 111\] \w.*"
        r"|the server closed the connection without an answer \(if the server serves HTTPS, "
        r"call it with TLS\))")
    for error, after_stop in failed:
        assert after_stop and refused.fullmatch(error), error
    assert "Traceback" not in log, log[log.find("Traceback") - 300:log.find("Traceback") + 2500]


def test_a_connection_with_many_calls_waiting_takes_turns_with_the_others():
    # Connection A has 500 calls waiting in the server's socket buffer at once (pipelined),
    # so that its green thread never has to wait for the next one. B sends one call once A's
    # green thread is on them. Each call takes at least 0.2 ms, so a turn
    # (avrohttp.serve.TURN_SECONDS, 1 ms) holds 6 of A's calls at most, on any machine, and
    # B is served within A's next turn or two. Without turns, B waits for all 500; with turns
    # ten times as long, for 50 or more.
    calls = 500
    served = []  # the client port of each call, in the order the server takes them
    echo = echo_app()

    def app(environ, start_response):
        served.append(environ["REMOTE_PORT"])
        busy_until = time.perf_counter() + 0.0002
        while time.perf_counter() < busy_until:
            pass
        return echo(environ, start_response)

    request = call_request("echo", "Hello")
    with serving(app) as address, \
            socket.create_connection(address, timeout=10) as a, \
            socket.create_connection(address, timeout=10) as b:
        a_port, b_port = (str(sock.getsockname()[1]) for sock in (a, b))
        for sock in (a, b):  # both kept alive, past their first request
            sock.sendall(request)
            assert read_http_response(sock)[0] == "HTTP/1.1 200 OK"
        a.sendall(request * calls)  # about 60 KB: the kernel takes it all at once
        while len(served) < 3:  # until A's green thread is on them
            eventlet.sleep(0)
        b.sendall(request)
        assert read_http_response(b)[0] == "HTTP/1.1 200 OK"
        answers = b""
        while answers.count(b"HTTP/1.1 200 OK") < calls:  # all of A's, before the server stops
            answers += receive(a)
    assert served[:2] == [a_port, b_port]
    answered_before_b = served[2:].index(b_port)
    print(f"\nA's calls served before B's one: {answered_before_b} of {calls}")
    assert answered_before_b <= 20  # three turns at most


def test_a_stop_answers_the_call_in_flight_though_the_listeners_descriptor_is_reused():
    # A stop closes the listener. If the accept loop were still waiting on it, a socket opened
    # at that moment (reusing the descriptor, as the kernel does) would make eventlet end the
    # loop by itself, and the SystemExit that stops the server would then land in its wait for
    # the calls in flight, and cut them off. (With two workers, this cut one in three stops.)
    listener = avrohttp.serve.listen("127.0.0.1", 0)
    address, descriptor = listener.getsockname(), listener.fileno()
    reused = []  # (the socket, its descriptor)
    close = listener.close

    def close_and_reuse() -> None:
        listener.close = close  # once
        with socket.socket() as spare:  # made while the descriptor is the listener's
            close()
            os.dup2(spare.fileno(), descriptor)  # a new socket on the listener's descriptor
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=descriptor)
        reused.append((sock, sock.fileno()))

    listener.close = close_and_reuse
    outcome, watching = [], []

    def run() -> None:  # as cli.main does, in a green thread
        try:
            watching.append(avrohttp.serve.stop_gracefully_on(listener, signal.SIGUSR1))
            avrohttp.serve.serve(listener, echo_app())
            outcome.append("returned")
        except BaseException as e:  # SystemExit too: it must not reach pytest
            outcome.append(repr(e))

    request = call_request("split", "Hello World")
    try:
        server = eventlet.spawn(run)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(request[:-10])
            eventlet.sleep(0.2)  # read by the server: a call in flight
            signal.raise_signal(signal.SIGUSR1)
            eventlet.sleep(0.2)
            sock.sendall(request[-10:])
            status, _, payload = read_http_response(sock)
        server.wait()
    finally:
        for thread in watching:
            thread.kill()  # else its drain timeout would stop whatever runs then
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        for sock, _ in reused:
            sock.close()
    assert [fileno for _, fileno in reused] == [descriptor]
    assert (status, read_answer(payload, "split").datum) == ("HTTP/1.1 200 OK", "Hello")
    assert outcome == ["returned"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_drain_timeout_bounds_a_stop(workers):
    with server_program("--workers", workers, "--drain-timeout", "1") as running:
        in_flight, _ = start_calls_in_flight(running.port, 4)  # never finished
        eventlet.sleep(0.3)
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        _, log = running.process.communicate(timeout=30)
        stopped_after = time.monotonic() - started
        for sock in in_flight:
            sock.close()
    assert running.process.returncode == 1
    assert stopped_after < 10  # not the 20 s of --request-timeout, nor forever
    worker_lines = ["stopping: answering the calls in flight",
                    "calls still in flight after 1 s (--drain-timeout): stopping now"]
    messages = log_messages(log)
    if workers == "1":
        assert messages == [f"avrohttp {line}" for line in worker_lines]
    else:  # the two workers' lines interleave
        by_worker = {}
        for pid, line in (re.fullmatch(r"avrohttp\[(\d+)\] (.*)", message).groups()
                          for message in messages if message.startswith("avrohttp[")):
            by_worker.setdefault(pid, []).append(line)
        # The kernel may have given all four calls to one worker: the other then drains at
        # once. At least one worker had calls in flight, and was stopped at the timeout.
        drained = ["stopping: answering the calls in flight", "stopped"]
        assert len(by_worker) == 2 and worker_lines in by_worker.values()
        assert all(lines in (worker_lines, drained) for lines in by_worker.values()), by_worker
        assert [message for message in messages if not message.startswith("avrohttp[")] == [
            "avrohttp stopping: the workers answer the calls in flight", "avrohttp stopped"]


def large_answer(size: int):
    """A WSGI application that answers any request with `size` bytes."""
    payload = b"x" * size

    def application(environ, start_response):
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        return [payload]

    return application


def test_a_client_still_sending_when_told_408_may_send_a_moment_more():
    # A slow client may be sending when the server answers 408 and closes. Without a
    # lingering close (serve.linger()), what it sends next makes the server's kernel answer
    # with a reset, and its next send fails before it has read the 408.
    with serving(echo_app(), request_timeout=0.5) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        # Past the deadline (0.5 s) and its sweep: the 408 is sent. Within the grace period
        # (GRACE_SECONDS, 1 s) that the server then lingers for.
        eventlet.sleep(0.9)
        for _ in range(3):
            sock.sendall(b"x" * 100)
            eventlet.sleep(0.05)
        assert sock.recv(1024) == (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                                   b"Content-Length: 0\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1024) == b""


def test_a_client_that_never_reads_its_answer_is_let_go(caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    size = 64 * 2**20  # far more than the sockets' buffers hold
    with serving(large_answer(size), socket_timeout=0.5) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the whole request; then, nothing
        started = time.monotonic()
        while "the answer was not read within 0.5 s" not in caplog.text:
            assert time.monotonic() - started < 10, "the server still waits on the client"
            eventlet.sleep(0.1)
        received = 0
        try:
            while chunk := sock.recv(2**20):  # what the buffers held, then the end
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert 0 < received < size
    assert caplog.text.count("the answer was not read within 0.5 s") == 1  # logged once
    assert "Traceback" not in caplog.text


def test_a_slow_handler_is_not_cut_short_by_the_clients_deadlines():
    def slow(environ, start_response):  # waits on a backend of its own, say
        body = environ["wsgi.input"].read()
        environ[avrohttp.wsgi.DEADLINE].cancel()  # as make_application does
        eventlet.sleep(1.0)
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    # Each of the client's deadlines is far shorter than the handler's work.
    with serving(slow, request_timeout=0.2, idle_timeout=0.2, socket_timeout=0.2) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        status, _, body = read_http_response(sock)
    assert (status, body) == ("HTTP/1.1 200 OK", b"hello")


def test_http_1_0_keep_alive_clients_are_told_the_idle_timeout():
    with serving(large_answer(10), idle_timeout=7) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = read_http_response(sock)
    assert (status, headers["connection"], headers["keep-alive"]) == (
        "HTTP/1.1 200 OK", "keep-alive", "timeout=7")
