"""Calls through nginx, as a fleet (deploy/fleet.py) or a rollout (deploy/rollout.py) makes
them: clients calling echo and split, each in its own thread, on its own kept-alive
connection, and checking every answer.
"""

import threading
import time
from typing import NamedTuple, Optional

import avro.errors

from avrohttp import CallFailed
from client import EchoClient
from deploy.processes import HOST


class LoadResult(NamedTuple):
    made: int
    failed: int
    errors: list  # the first few failures, as text


class Load:
    """Clients calling echo and split through nginx, each in its own thread, each on its own
    keep-alive connection, and checking every answer. A context manager: the calls go on
    until the block ends, or until `calls` have been made."""

    MAX_ERRORS_KEPT = 10

    def __init__(self, port: int, clients: int = 8, calls: Optional[int] = None) -> None:
        self.port = port
        self.clients = clients
        self.calls = calls
        self.made = 0
        self.failed = 0
        self.errors: list = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(clients)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join()

    def wait(self, made: int, timeout: float = 60.0) -> None:
        """Wait until this many calls have been made in all."""
        deadline = time.monotonic() + timeout
        while self.made < made:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.made} of {made} calls made in {timeout} s")
            time.sleep(0.01)

    def result(self) -> LoadResult:
        with self._lock:
            return LoadResult(self.made, self.failed, list(self.errors))

    def _take_a_call(self) -> bool:
        with self._lock:
            if self._done.is_set() or (self.calls is not None and self.made >= self.calls):
                return False
            self.made += 1
            return True

    def _client(self, n: int) -> None:
        with EchoClient(HOST, self.port, timeout=10) as client:
            call = 0
            while self._take_a_call():
                query = f"client {n}, call {call}"
                message, wanted = (("echo", query) if call % 2 == 0
                                   else ("split", query[: len(query) // 2]))
                call += 1
                try:
                    answer = getattr(client, message)(query)
                    error = None if answer == wanted else f"{message}: wrong answer {answer!r}"
                except (CallFailed, avro.errors.AvroRemoteException) as e:
                    error = f"{message}: {e}"
                if error:
                    with self._lock:
                        self.failed += 1
                        if len(self.errors) < self.MAX_ERRORS_KEPT:
                            self.errors.append(error)
