"""`server.py --workers N`: N processes on one port, restarted when they die, drained on stop."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import client
from conftest import ROOT, log_messages, server_program


def worker_pids(supervisor: subprocess.Popen) -> set:
    children = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def calls_on_new_connections(port: int, count: int) -> None:
    for n in range(count):
        with client.EchoClient("127.0.0.1", port, timeout=10) as echo:
            assert echo.echo(f"call {n}") == f"call {n}"


def lines_of(log: str, logger: str) -> list:
    """The messages of one logger ("avrohttp" for the supervisor, "avrohttp[PID]" for a
    worker), in order: the access log and the other processes' lines left out."""
    return [message[len(logger) + 1:] for message in log_messages(log)
            if message.startswith(logger + " ")]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def two_workers(host):
    with server_program("--loop", host, "--workers", "2", "--access-log") as running:
        yield running


def test_two_workers_share_the_port_and_both_answer(two_workers):
    assert log_messages(two_workers.startup_line) == [
        f"avrohttp AvroEcho server listening on http://127.0.0.1:{two_workers.port}/ (2 workers)"]
    pids = wait_for(lambda: len(worker_pids(two_workers.process)) == 2
                    and worker_pids(two_workers.process), what="two workers")
    calls_on_new_connections(two_workers.port, 40)  # the kernel spreads new connections
    two_workers.process.send_signal(signal.SIGTERM)
    _, log = two_workers.process.communicate(timeout=15)
    served = {int(pid) for pid in re.findall(r"avrohttp\.access\[(\d+)\] .*\"POST / ", log)}
    assert served == pids
    assert two_workers.process.returncode == 0


def test_a_worker_that_dies_is_replaced(two_workers):
    first, second = wait_for(lambda: len(worker_pids(two_workers.process)) == 2
                             and sorted(worker_pids(two_workers.process)), what="two workers")
    os.kill(first, signal.SIGKILL)
    replaced = wait_for(lambda: (pids := worker_pids(two_workers.process)) - {first, second}
                        and len(pids) == 2 and pids, what="a new worker")
    assert second in replaced and first not in replaced
    calls_on_new_connections(two_workers.port, 10)
    two_workers.process.send_signal(signal.SIGTERM)
    _, log = two_workers.process.communicate(timeout=15)
    assert lines_of(log, "avrohttp") == [
        f"worker {first} exited with status -9; starting another",
        "stopping: the workers answer the calls in flight", "stopped"]
    assert two_workers.process.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_supervisor_drains_every_worker(two_workers, signum):
    pids = wait_for(lambda: len(worker_pids(two_workers.process)) == 2
                    and worker_pids(two_workers.process), what="two workers")
    with client.EchoClient("127.0.0.1", two_workers.port) as echo:
        assert echo.echo("before") == "before"
        two_workers.process.send_signal(signum)
        _, log = two_workers.process.communicate(timeout=15)
    assert two_workers.process.returncode == 0
    assert not any(alive(pid) for pid in pids)
    for pid in pids:  # each worker was told once, so each drained rather than quit at once
        assert lines_of(log, f"avrohttp[{pid}]") == [
            "stopping: answering the calls in flight", "stopped"]
    assert lines_of(log, "avrohttp") == [
        "stopping: the workers answer the calls in flight", "stopped"]
    assert log_messages(log)[-1] == "avrohttp stopped"


def test_workers_stop_when_the_supervisor_is_killed(two_workers):
    pids = wait_for(lambda: len(worker_pids(two_workers.process)) == 2
                    and worker_pids(two_workers.process), what="two workers")
    two_workers.process.kill()
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the workers to stop")


def test_workers_refuse_a_port_in_use_in_one_line(host):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = subprocess.run([sys.executable, "server.py", "--loop", host, "--workers", "2",
                                 "--port", str(port)], cwd=ROOT, capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    assert log_messages(result.stderr) == [
        f"avrohttp cannot listen on 127.0.0.1:{port}: Address already in use"]


def test_workers_must_be_one_or_more():
    result = subprocess.run([sys.executable, "server.py", "--workers", "0"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "server.py: error: argument --workers: 0 is not 1 or more")
