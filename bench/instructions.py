"""Instructions per request, counted by valgrind: the benchmark's measure that other work on
a shared machine does not disturb.

`make bench` measures time, and on a machine shared with other work its req/s move by 10 to
30% from one run to the next. This counts the work instead. Each server that answers in one
process (bare eventlet.wsgi with and without one yield per request, our protections with no
Avro work, server.py; and on asyncio, bare uvicorn, our protections, server.py --loop asyncio)
runs under callgrind; h2load loads it for a warm-up, the counters are
zeroed, h2load loads it again, and the instructions counted are divided by the requests that
h2load saw answered. What one row costs more than another is then read off directly: the
protections (our protections against bare eventlet.wsgi + yield) and the Avro work
(server.py against our protections).

Under valgrind a server runs some 50 times slower, so it takes its turns differently from a
real run (a green thread finds its client's next request already there): the counts compare
the work per request, not the scheduling.

Try it: `python bench/instructions.py` (it needs valgrind and h2load; a few minutes).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import re
import shutil
import subprocess
import tempfile
from typing import Optional

from bench.load import run_load
from bench.servers import ServerSpec, check_server, server_specs, start_server, stop_server
from bench.settings import WORKERS, BenchError, Unavailable, progress

SERVERS = ("bare", "bare_yield", "protections", "server",
           "uvicorn", "protections_asyncio", "server_asyncio")
# Python under valgrind takes tens of seconds to start.
START_TIMEOUT_SECONDS = 180
TOTALS = re.compile(r"^(?:totals|summary): (\d+)", re.MULTILINE)


def under_callgrind(spec: ServerSpec, out_prefix: Path) -> ServerSpec:
    return ServerSpec(spec.name, spec.label, lambda: [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={out_prefix}.%p",
        *spec.command()])


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True,
                   timeout=60)


def instructions_in(dump: Path) -> int:
    match = TOTALS.search(dump.read_text(errors="replace"))
    if not match:
        raise BenchError(f"no instruction count in {dump}")
    return int(match.group(1))


def count(spec: ServerSpec, log_dir: Path, connections: int, seconds: int) -> dict:
    """Instructions per request of one server, at this many connections."""
    out_prefix = log_dir / f"{spec.name}.callgrind"
    running = start_server(under_callgrind(spec, out_prefix), log_dir, START_TIMEOUT_SECONDS)
    try:
        check_server(running, calls=1)
        running.body_file = log_dir / f"{spec.name}.body"
        running.body_file.write_bytes(running.body)
        run_load(running, connections, 3, threads=1)  # warm-up
        callgrind_control("--zero", running.process.pid)
        load = run_load(running, connections, seconds, threads=1)
        callgrind_control("--dump", running.process.pid)
        dump = Path(f"{out_prefix}.{running.process.pid}.1")
        instructions = instructions_in(dump)
    finally:
        stop_server(running.process)
    return {"name": spec.name, "label": spec.label, "requests": load["requests"],
            "instructions_per_request": round(instructions / max(load["requests"], 1))}


def format_counts(counts: list) -> str:
    by_name = {row["name"]: row for row in counts}
    lines = [f"{'server':<32} {'requests':>9} {'instructions/request':>21}"]
    for row in counts:
        lines.append(f"{row['label']:<32} {row['requests']:>9,} "
                     f"{row['instructions_per_request']:>21,}")

    def more(name: str, than: str) -> Optional[str]:
        if name not in by_name or than not in by_name:
            return None
        extra = (by_name[name]["instructions_per_request"]
                 - by_name[than]["instructions_per_request"])
        share = extra / by_name[than]["instructions_per_request"]
        return f"{extra:+,} ({share:+.1%})"

    for text, name, than in (("our protections, against bare eventlet.wsgi + yield",
                              "protections", "bare_yield"),
                             ("the Avro work, server.py against our protections",
                              "server", "protections"),
                             ("on asyncio, our protections against bare uvicorn",
                              "protections_asyncio", "uvicorn"),
                             ("on asyncio, the Avro work",
                              "server_asyncio", "protections_asyncio")):
        difference = more(name, than)
        if difference:
            lines.append(f"{text}: {difference} instructions per request")
    return "\n".join(lines)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Count the instructions per request of the "
                                                 "benchmark's one-process servers.")
    parser.add_argument("--connections", type=int, default=50,
                        help="h2load's connections (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=10,
                        help="seconds of counted load per server (default: %(default)s)")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            print(f"instructions: error: {tool} is not installed", file=sys.stderr)
            return 1
    specs = {spec.name: spec for spec in server_specs(WORKERS, with_stdlib=False)}
    counts = []
    try:
        with tempfile.TemporaryDirectory(prefix="avro-instructions-") as log_dir:
            for name in SERVERS:
                progress(f"{specs[name].label}, under callgrind")
                counts.append(count(specs[name], Path(log_dir), args.connections,
                                    args.seconds))
                progress(f"  {counts[-1]['instructions_per_request']:,} instructions per "
                         f"request ({counts[-1]['requests']:,} requests)")
    except (BenchError, Unavailable, subprocess.SubprocessError) as e:
        print(f"instructions: error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_counts(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
