"""Which handlers run at the same time as others, on each host (docs/your-protocol.md, "Which
handlers must be thread-safe"): each server here is a program of its own, so that the eventlet
host is monkey-patched as `python -m avrohttp serve` patches it.

The service counts its calls the careless way: add() reads the count, waits (or not), and
writes it back plus one, so that two calls that overlap lose one of their additions; it also
notes the most calls of add() that ran at once.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import avrohttp
from conftest import ROOT

PROTOCOL = """{"protocol": "Counter", "namespace": "test.threads", "messages": {
    "add": {"request": [{"name": "wait", "type": "double"}], "response": "null"},
    "state": {"request": [], "response": {"type": "map", "values": "int"}}}}"""

SERVICE = f'''\
import asyncio
import threading
import time

import avrohttp

PROTOCOL = """{PROTOCOL}"""


class Counter(avrohttp.Responder):
    def __init__(self):
        super().__init__(PROTOCOL)
        self.count = self.running = self.most = 0
        self.lock = threading.Lock()  # for running and most alone

    def enter(self):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)

    def leave(self):
        with self.lock:
            self.running -= 1

    def handle_add(self, wait):
        self.enter()
        count = self.count
        if wait:
            time.sleep(wait)  # blocking: on eventlet, patched to switch green threads
        self.count = count + 1
        self.leave()

    def handle_state(self):
        return {{"count": self.count, "most": self.most}}


class AsyncCounter(Counter):
    async def handle_add(self, wait):
        self.enter()
        count = self.count
        await asyncio.sleep(wait)
        self.count = count + 1
        self.leave()


class ToThreadCounter(Counter):
    async def handle_add(self, wait):
        await asyncio.to_thread(Counter.handle_add, self, wait)


def serve_on_threads():
    """make_application on the standard library's WSGI server, a thread for each
    connection, as waitress or gunicorn --threads run it."""
    import socketserver
    import sys
    import wsgiref.simple_server

    class ThreadingServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
        daemon_threads = True

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args):
            pass

    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, avrohttp.make_application(Counter()), server_class=ThreadingServer,
        handler_class=Quiet)
    print(f"listening on http://127.0.0.1:{{server.server_address[1]}}/", file=sys.stderr,
          flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve_on_threads()
'''

# Calls of add(): CLIENTS threads, each with its own connection, CALLS_EACH calls apiece.
CLIENTS = 8
CALLS_EACH = 3
# What add() waits for, when it waits: long enough that the clients' calls overlap.
WAIT = 0.05


@pytest.fixture
def service(tmp_path) -> Path:
    (tmp_path / "counter.py").write_text(SERVICE)
    return tmp_path


@contextlib.contextmanager
def serve(service: Path, *command: str) -> Iterator[int]:
    """Run the command (python's arguments) in the service's directory until the end of the
    block: yields its port."""
    process = subprocess.Popen(
        [sys.executable, *command], cwd=service, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = process.stderr.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
        assert match, f"no start-up line: {line!r}"
        yield int(match.group(1))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        process.communicate()


def add_at_once(port: int, wait: float) -> Dict[str, int]:
    """CLIENTS threads call add(wait), CALLS_EACH times each: the service's state then."""
    failures: List[BaseException] = []
    start = threading.Barrier(CLIENTS)

    def client() -> None:
        try:
            with avrohttp.Client(PROTOCOL, "127.0.0.1", port, timeout=30) as counter:
                counter.call("state")  # the handshake, before the calls that count
                start.wait(30)
                for _ in range(CALLS_EACH):
                    counter.call("add", wait=wait)
        except BaseException as e:  # reported below, in the test's thread
            failures.append(e)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures
    with avrohttp.Client(PROTOCOL, "127.0.0.1", port) as counter:
        return counter.call("state")


SERVE = ("-m", "avrohttp", "serve", "--port", "0")
CALLED = CLIENTS * CALLS_EACH


def test_eventlet_runs_one_handler_at_a_time_between_two_waits(service):
    with serve(service, *SERVE, "counter:Counter") as port:
        assert add_at_once(port, 0) == {"count": CALLED, "most": 1}


def test_eventlet_runs_other_handlers_while_one_waits(service):
    with serve(service, *SERVE, "counter:Counter") as port:
        state = add_at_once(port, WAIT)
    assert state["most"] > 1 and state["count"] < CALLED, state


def test_asyncio_runs_plain_handlers_one_at_a_time_even_while_they_wait(service):
    with serve(service, *SERVE, "--loop", "asyncio", "counter:Counter") as port:
        assert add_at_once(port, WAIT) == {"count": CALLED, "most": 1}


def test_asyncio_runs_other_handlers_at_each_await(service):
    with serve(service, *SERVE, "--loop", "asyncio", "counter:AsyncCounter") as port:
        state = add_at_once(port, WAIT)
    assert state["most"] > 1 and state["count"] < CALLED, state


def test_asyncio_to_thread_runs_at_once_on_other_threads(service):
    with serve(service, *SERVE, "--loop", "asyncio", "counter:ToThreadCounter") as port:
        state = add_at_once(port, WAIT)
    assert state["most"] > 1 and state["count"] < CALLED, state


def test_a_wsgi_server_with_threads_runs_handlers_at_once(service):
    with serve(service, "counter.py") as port:
        state = add_at_once(port, WAIT)
    assert state["most"] > 1 and state["count"] < CALLED, state
