"""What all of the benchmark's modules share: paths, defaults, targets, errors, progress.

Importing it also puts the repository's root and tests/ on sys.path, for client.py,
protocol.py and wire.py.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
# client.py and protocol.py are in the repository's root; wire.py (which builds and reads
# Avro bodies byte by byte) is in tests/.
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CONNECTIONS = (1, 50, 1000)
SECONDS = 5  # per point, as in the figures
WARMUP_SECONDS = 1
# The load generator's threads: two, one per core of the machine the targets were set on
# (with wrk, one thread held avsc about 6% below what two get out of it). h2load refuses
# more threads than connections, so 1 connection gets 1 thread.
LOAD_THREADS = 2
# Long enough that a timeout is a real failure to answer, not a slow moment of the machine:
# h2load drops a connection that has seen nothing for this long, and counts its request.
LOAD_TIMEOUT_SECONDS = 10
WORKERS = 2
QUERY = "Hello World"
CONTENT_TYPE = "avro/binary"
START_TIMEOUT_SECONDS = 30  # two cores shared with other work: importing eventlet can be slow
STOP_TIMEOUT_SECONDS = 5
CLIENT_ROUNDS = 10
CLIENT_ROUND_SECONDS = 0.5
# More file descriptors than the most connections, for h2load and the servers (which inherit
# them).
FD_HEADROOM = 256
LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)/")

# The targets of the performance issue, read off the results; `make bench` reports them, it
# does not fail on them. The limit, at each number of connections, is the faster of bare
# eventlet.wsgi with and without one yield per request, both answering fixed bytes.
TARGET_LIMIT_RATIO = 0.90  # server.py at 50 connections, of the limit's req/s...
STRETCH_LIMIT_RATIO = 0.95  # ...and what would be better still
TARGET_ONE_CONNECTION_RATIO = 0.90  # server.py at 1 connection, of bare eventlet.wsgi's req/s
TARGET_P99_RATIO = 1.5  # server.py at 1,000 connections, of the limit's p99 (and no errors)
TARGET_WORKERS_P99_MS = 50.0  # `server.py --workers 2` at 50 connections
TARGET_WORKERS_RATIO = 0.90  # `server.py --workers 2` at 50 connections, of avsc's req/s in
STRETCH_WORKERS_RATIO = 1.0  # as many processes (Node's cluster)
TARGET_CLIENT_RATIO = 0.95  # EchoClient's calls/s, of a bare http.client loop's
# The servers whose better req/s, at each number of connections, is the limit.
LIMIT_SERVERS = ("bare", "bare_yield")

# The asyncio host (`server.py --loop asyncio`), against bare uvicorn answering fixed bytes
# (bench/uvicorn_server.py) in the same run: its limit.
TARGET_ASYNCIO_RATIO = 0.80  # req/s at 50 connections, of bare uvicorn's...
STRETCH_ASYNCIO_RATIO = 0.90  # ...and what would be better still
TARGET_ASYNCIO_P99_RATIO = 1.5  # at 1,000 connections, of bare uvicorn's p99 (and no errors)
TARGET_ASYNCIO_WORKERS_RATIO = 0.80  # --workers 2 at 50 connections, of bare uvicorn's with 2
TARGET_ASYNCIO_WORKERS_P99_MS = 50.0  # and its p99 there
TARGET_ASYNC_CLIENT_RATIO = 0.95  # AsyncClient's calls/s, of a bare loop of its HTTP library


class BenchError(Exception):
    """Something that stops the benchmark, with a message for the user."""


class Unavailable(Exception):
    """A server that cannot run here; its row says why."""


def progress(message: str) -> None:
    print(message, flush=True)
