"""The local processes of a fleet (deploy/fleet.py) or a rollout (deploy/replicas.py): a free
port on this machine, nginx's program, waiting for a process to be ready, and stopping one
with its process group.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

HOST = "127.0.0.1"
STARTUP_SECONDS = 15.0  # for a process to start listening, on a busy machine
STOP_SECONDS = 5.0  # for a process to exit after SIGTERM, before it gets SIGKILL


class FleetError(Exception):
    """nginx or a server would not start."""


def nginx_program() -> Optional[str]:
    # Debian installs it in /usr/sbin, which is not on an ordinary user's PATH.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def stop(process: Optional[subprocess.Popen]) -> None:
    """SIGTERM a process and its process group, wait, and SIGKILL them if they linger."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)  # nginx's workers are in its group
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        process.wait()
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)  # also any worker left behind
    except ProcessLookupError:
        pass
    process.wait()


def wait_for(ready: Callable[[], bool], process: subprocess.Popen, what: str,
             log: Path) -> None:
    """Wait until ready() is true; FleetError, with the end of the process's log, if it
    exits first or is not ready within STARTUP_SECONDS."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise FleetError(f"{what} did not start; its log ends with:\n{tail}")
        time.sleep(0.05)
