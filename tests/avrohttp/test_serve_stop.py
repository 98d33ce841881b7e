"""The server stopped under load, as a program and in-process, on each host (eventlet and
asyncio), with one process and with --workers 2: every call in flight is answered, within
--drain-timeout; real sockets, and plain threads on the test's side."""

import concurrent.futures
import os
import re
import signal
import socket
import threading
import time

import pytest

import avrohttp
import avrohttp.hosting
import client
import server
from conftest import log_messages, read_http_response, server_class, server_program
from test_serve import call_request, read_in_background
from wire import read_answer


def start_calls_in_flight(port: int, count: int) -> tuple:
    """Open `count` connections, each with a whole call but for its last 10 bytes."""
    request = call_request("split", "Hello World")
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request[:-10])
        socks.append(sock)
    return socks, request[-10:]


def load(port: int, outcomes: list, stop: threading.Event) -> None:
    """Call echo over and over on a keep-alive connection until the server is gone."""
    n = 0
    while True:
        with client.EchoClient("127.0.0.1", port, timeout=10) as echo:
            try:
                while True:
                    n += 1
                    assert echo.echo(f"load {n}") == f"load {n}"
                    outcomes.append(("ok", stop.is_set()))
            except avrohttp.CallFailed as e:
                outcomes.append((str(e), stop.is_set()))
                if stop.is_set():
                    return


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_stop_under_load_answers_every_call_in_flight(host, workers):
    with server_program("--loop", host, "--workers", workers, "--access-log") as running, \
            concurrent.futures.ThreadPoolExecutor(8) as pool:
        log = read_in_background(running.process.stderr)
        # Calls in flight: the servers read them before the load starts. (A connection that
        # a server has accepted but not yet read from counts as idle, and a stop closes it;
        # 2 s leaves room for a machine busy with other work.)
        in_flight, rest = start_calls_in_flight(running.port, 16)
        time.sleep(2.0)
        stop = threading.Event()
        outcomes = []
        loads = [pool.submit(load, running.port, outcomes, stop) for _ in range(8)]
        time.sleep(0.5)  # a load of calls going on
        stop.set()
        running.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        answers = []
        for sock in in_flight:
            with sock:
                sock.sendall(rest)
                status, _, payload = read_http_response(sock)
                answers.append((status, read_answer(payload, "split").datum))
        for loaded in loads:
            loaded.result(timeout=30)  # each load's own assertions, and its end
        running.process.wait(timeout=30)
        log = log.result(timeout=10)
    served = [ok for ok, after_stop in outcomes if ok == "ok"]
    failed = [(error, after_stop) for error, after_stop in outcomes if error != "ok"]
    print(f"\n{host}, workers={workers}: {len(served)} load calls answered, {len(failed)} "
          f"refused after the stop, {len(answers)} calls in flight at the stop all answered")
    assert answers == [("HTTP/1.1 200 OK", "Hello")] * 16
    assert running.process.returncode == 0
    assert served and failed
    # Only new calls fail, once the server has stopped: refused, or cut off as the server
    # closed an idle kept-alive connection (one that had answered: no TLS hint), or a new one
    # it had accepted; never timed out.
    refused = re.compile(
        rf"cannot reach the server at 127\.0\.0\.1:{running.port}: (\[Errno 111\] \w.*"
        r"|the server closed the connection without an answer \(if the server serves HTTPS, "
        r"call it with TLS\))"
        rf"|the server at 127\.0\.0\.1:{running.port} closed the connection before answering")
    for error, after_stop in failed:
        assert after_stop and refused.fullmatch(error), error
    assert "Traceback" not in log, log[log.find("Traceback") - 300:log.find("Traceback") + 2500]


def test_a_stop_answers_the_call_in_flight_though_the_listeners_descriptor_is_reused(
        monkeypatch):
    # eventlet's own: a stop closes the listener. If the accept loop were still waiting on it,
    # a socket opened at that moment (reusing the descriptor, as the kernel does) would make
    # eventlet end the loop by itself, and the SystemExit that stops the server would then
    # land in its wait for the calls in flight, and cut them off. (With two workers, this cut
    # one in three stops.) asyncio's loop has no such wait on the listener.
    reused = []  # (the socket, its descriptor)

    class Listener(socket.socket):
        def close(self) -> None:
            if reused:  # closed before: its descriptor is the new socket's now
                self.detach()
                return
            descriptor = self.fileno()
            with socket.socket() as spare:  # made while the descriptor is the listener's
                super().close()
                os.dup2(spare.fileno(), descriptor)  # a new socket on the listener's descriptor
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, fileno=descriptor)
            reused.append((sock, sock.fileno()))

    def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
        listener = Listener()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen()
        return listener

    monkeypatch.setattr(avrohttp.hosting, "listen", listen)
    the_server = server_class("eventlet")(avrohttp.ServerOptions(port=0),
                                          server.EchoResponder())
    status = []
    thread = threading.Thread(target=lambda: status.append(the_server.run()), daemon=True)
    thread.start()
    request = call_request("split", "Hello World")
    try:
        assert the_server.listening.wait(10)
        with socket.create_connection(the_server.address, timeout=10) as sock:
            sock.sendall(request[:-10])
            time.sleep(0.2)  # read by the server: a call in flight
            the_server.stop()
            time.sleep(0.2)
            sock.sendall(request[-10:])
            status_line, _, payload = read_http_response(sock)
        thread.join(10)
    finally:
        if thread.is_alive():
            the_server.stop(now=True)
            thread.join(10)
        for sock, _ in reused:
            sock.close()
    assert len(reused) == 1
    assert (status_line, read_answer(payload, "split").datum) == ("HTTP/1.1 200 OK", "Hello")
    assert status == [0]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_drain_timeout_bounds_a_stop(host, workers):
    with server_program("--loop", host, "--workers", workers,
                        "--drain-timeout", "1") as running:
        in_flight, _ = start_calls_in_flight(running.port, 4)  # never finished
        time.sleep(0.3)
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
