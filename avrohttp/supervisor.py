"""`--workers N`: N server processes on one port, under a small supervisor.

Each worker is the same program (`server.py`, say) run again, and binds the port with
SO_REUSEPORT; the kernel spreads new connections across them, so N workers use N cores. The
supervisor serves nothing itself. It starts the workers and waits until each one listens; it
starts a new worker when one dies; and it passes SIGTERM and SIGINT on, so that every worker
stops accepting and answers its calls in flight (after its shutdown delay, for SIGTERM), and
it exits when they all have.
"""

import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator, List, Optional

from avrohttp import hosting
from avrohttp.options import METRICS_DIR_ENV, ServerOptions

log = logging.getLogger("avrohttp")

# How long a worker may take from start to listening.
READY_TIMEOUT = 15.0
# A worker that dies sooner than this after its start is restarted only this long after it
# started, so that a worker that cannot start does not become a busy loop.
RESTART_INTERVAL = 1.0
# Seconds past the workers' drain timeout after which the supervisor kills a worker.
KILL_GRACE = 5.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Hold the port for the workers: bound with SO_REUSEPORT, never listening.

    A port in use is an error, as without workers: the check binds without SO_REUSEPORT
    first, which fails if any socket holds the port. Port 0 picks a free port, and holding it
    keeps it ours while workers come and go.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as eventlet.listen
        probe.bind((host, port))
        port = probe.getsockname()[1]
    reservation = socket.socket(family)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.bind((host, port))
    return reservation


class Supervisor:
    """Keeps `count` workers running `command`, each told to report on a pipe when ready."""

    def __init__(self, command: List[str], count: int, drain_timeout: float,
                 metrics_dir: Optional[str] = None, shutdown_delay: float = 0.0) -> None:
        self.command = command
        self.metrics_dir = metrics_dir
        self.count = count
        self.drain_timeout = drain_timeout
        self.shutdown_delay = shutdown_delay
        self.workers: List[Optional[subprocess.Popen]] = []  # None: a worker that did not start
        self.started: List[float] = []
        # From the start, so that a signal while the workers start is not lost.
        self.signals: List[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: self.signals.append(signum))

    def _start(self) -> Optional[subprocess.Popen]:
        """Start a worker and wait until it listens; None if it could not start."""
        ready, ready_writer = os.pipe()
        try:
            # Its own process group: Ctrl-C in a terminal reaches the supervisor alone, which
            # passes it on once. (Two signals would make a worker stop without draining.)
            env = None
            if self.metrics_dir is not None:  # where the workers add up their metrics
                env = {**os.environ, METRICS_DIR_ENV: self.metrics_dir}
            worker = subprocess.Popen([*self.command, "--ready-fd", str(ready_writer)],
                                      pass_fds=(ready_writer,), process_group=0, env=env)
        finally:
            os.close(ready_writer)
        with os.fdopen(ready, "rb") as pipe:
            readable, _, _ = select.select([pipe], [], [], READY_TIMEOUT)
            if readable and pipe.read(1) == b"1":
                return worker
        worker.kill()
        worker.wait()
        return None

    def start(self) -> bool:
        for _ in range(self.count):
            worker = self._start()
            if worker is None:
                log.error("a worker did not start; stopping")
                self._stop_all()
                return False
            self.workers.append(worker)
            self.started.append(time.monotonic())
        return True

    def run(self) -> int:
        """Supervise until a signal stops the workers; the exit status is 0 if all drained.

        Each worker is told what the supervisor was: SIGTERM makes it wait for its shutdown
        delay first, SIGINT (Ctrl-C) not. A second signal during the delay ends it, as it
        does in each worker; any other stops the workers at once.
        """
        delayed = None  # when the shutdown delay ends, once SIGTERM began one
        stopping = None  # when the workers stop accepting and drain
        while not ((delayed or stopping) and not self._running()):
            if self.signals:
                signum = self.signals.pop(0)
                if not (delayed or stopping):
                    if signum == signal.SIGTERM and self.shutdown_delay > 0:
                        log.info("shutting down: the workers' /health/ready answers 503; "
                                 "still serving for %g s", self.shutdown_delay)
                        delayed = time.monotonic() + self.shutdown_delay
                    else:
                        log.info("stopping: the workers answer the calls in flight")
                        stopping = time.monotonic()
                    self._signal_all(signum)
                elif delayed and not stopping:  # the delay, cut short
                    log.info("stopping: the workers answer the calls in flight")
                    stopping = time.monotonic()
                    self._signal_all(signal.SIGTERM)
                else:
                    log.warning("stopping now, without waiting for the calls in flight")
                    self._signal_all(signal.SIGTERM)  # a worker's second one stops it at once
            if delayed and not stopping and time.monotonic() >= delayed:
                log.info("stopping: the workers answer the calls in flight")
                stopping = delayed  # as each worker's own delay ends, and its drain begins
            # Each worker keeps to its drain timeout; this is for one that hangs regardless.
            if stopping and time.monotonic() > stopping + self.drain_timeout + KILL_GRACE:
                for hung in self._running():
                    log.error("worker %d did not stop in time; killing it", hung.pid)
                    hung.kill()
                    hung.wait()
            for slot, worker in enumerate(self.workers):
                if not (delayed or stopping) and (worker is None or worker.poll() is not None):
                    self._replace(slot)
            time.sleep(0.1)
        return 0 if all(w is not None and w.returncode == 0 for w in self.workers) else 1

    def _running(self) -> List[subprocess.Popen]:
        return [w for w in self.workers if w is not None and w.poll() is None]

    def _replace(self, slot: int) -> None:
        dead = self.workers[slot]
        if dead is not None:
            log.warning("worker %d exited with status %d; starting another",
                        dead.pid, dead.returncode)
            if self.metrics_dir is not None:
                from avrohttp import metrics  # here: without --metrics, prometheus_client
                metrics.forget_worker_gauges(self.metrics_dir, dead.pid)  # is never imported
        wait = self.started[slot] + RESTART_INTERVAL - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.workers[slot] = self._start()
        self.started[slot] = time.monotonic()
        if self.workers[slot] is None:
            log.error("the new worker did not start; trying again")

    def _signal_all(self, signum: int) -> None:
        for worker in self._running():
            worker.send_signal(signum)

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        for worker in self.workers:
            if worker is not None:
                worker.wait()


def run(program: List[str], argv: List[str], options: ServerOptions, name: str) -> int:
    """Serve with options.workers workers, each `program` run with these arguments: the exit
    status. `name` is the protocol's, for the start-up line."""
    if options.certfile:
        try:  # here, before any worker starts, so that a bad file is reported once
            hosting.tls_context(options.certfile, options.keyfile, options.client_ca)
        except hosting.CannotServeTLS as e:
            log.error("cannot serve HTTPS: %s", e)
            return 1
    try:
        reservation = reserve_port(options.host, options.port)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", options.host, options.port, e.strerror or e)
        return 1
    with reservation, _metrics_dir(options.metrics) as metrics_dir:
        port = reservation.getsockname()[1]
        # argparse keeps the last of a repeated option, so these override the user's.
        command = [*program, *argv, "--workers", "1", "--port", str(port)]
        supervisor = Supervisor(command, options.workers, options.drain_timeout, metrics_dir,
                                options.shutdown_delay)
        if not supervisor.start():
            return 1
        log.info("%s server listening on %s://%s:%d/ (%d workers)", name, options.scheme,
                 options.host, port, options.workers)
        status = supervisor.run()
    log.info("stopped")
    return status


@contextlib.contextmanager
def _metrics_dir(wanted: bool) -> Iterator[Optional[str]]:
    """A new, empty directory for the workers' metrics files (avrohttp.metrics), removed at
    the end: counts start from zero with each start of the server, as in one process."""
    if not wanted:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="avrohttp-metrics-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
