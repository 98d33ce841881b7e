"""`make bench`: how fast the AvroEcho server and client are, next to the limit of their stack
and the servers a user would pick instead.

Every server runs as its own process on a free port. Each must first answer a real echo call
correctly; then h2load loads it with that same call at each number of connections (HTTP/1.1
for the Avro servers and bare uvicorn, HTTP/2 with one stream per connection for gRPC). The
servers take turns at each point, so that a busy moment on a shared machine hits them alike:

- bare eventlet.wsgi with eventlet's defaults, sending fixed bytes (bench/bare_server.py),
  with and without one yield per request: at each number of connections, the faster of the
  two is the limit, and every figure is reported as a ratio to it;
- "our protections, no Avro work": the same fixed bytes through server.py's own start-up
  (avrohttp.cli.main) with a responder that does no Avro work (bench/protections_server.py),
  for the cost of the protections, on each host;
- server.py, as a user runs it, and `server.py --workers N`, on eventlet and on asyncio
  (`--loop asyncio`);
- bare uvicorn (httptools, uvloop) sending the fixed bytes (bench/uvicorn_server.py), in one
  process and with `--workers N`: the asyncio host's limit;
- gRPC Python serving the same echo (bench/echo.proto), sync (bench/grpc_server.py) and
  grpc.aio (bench/grpc_aio_server.py);
- avsc, the Node implementation of Avro (bench/avsc_server.js), in one process and in N
  (Node's cluster), when Node is installed;
- with --with-stdlib, http.server the way Avro's own sample does it (bench/stdlib_server.py).

Then it times the client: EchoClient against a bare http.client loop posting the same bytes,
both calling the bare server. It prints a table, says which of the performance targets are
met, and writes bench/results.json and bench/results.png (`--metrics-cost`, which measures
only what the metrics cost, writes bench/results-metrics-cost.json instead).

Its parts: bench/servers.py starts and checks the servers, bench/load.py runs h2load and
times the client, bench/report.py makes the table and targets, bench/plot.py the plot,
bench/machine.py notes the machine's facts, and bench/settings.py holds the defaults they
share; this module reads the options and drives the run.

Try it: `make bench` (it installs h2load, gRPC, matplotlib and avsc), or
`make bench BENCH_SECONDS=2`; `python bench/run.py --help` lists the options.
"""

import sys
from pathlib import Path

# Run as a script, Python puts bench/ itself on sys.path: the repository's root is needed to
# import the modules beside this one as bench.* (bench.settings then adds tests/ as well).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import json
import os
import resource
import shutil
import tempfile
import time
from typing import Optional

from bench import metrics_cost
from bench.load import make_point, measure_clients, median_points, run_load
from bench.report import (add_ratios, busy_machine_note, comparisons, connections_text,
                          evaluate_targets, format_clients, format_comparisons, format_table,
                          format_targets, machine_facts, plot)
from bench.servers import (check_server, log_tail, missing, rss_bytes, server_specs,
                           start_server, stop_server)
from bench.settings import (BENCH, CLIENT_ROUND_SECONDS, LIMIT_SERVERS, CLIENT_ROUNDS, CONNECTIONS,
                            FD_HEADROOM, LOAD_THREADS, LOAD_TIMEOUT_SECONDS, QUERY, SECONDS,
                            WARMUP_SECONDS, WORKERS, BenchError, Unavailable, progress)


# Servers that answer fixed bytes: each must send exactly server.py's answer.
FIXED_BYTES_SERVERS = (*LIMIT_SERVERS, "protections", "protections_asyncio", "uvicorn",
                       "uvicorn_workers")
# Without these, there is nothing to report.
REQUIRED_SERVERS = (*LIMIT_SERVERS, "server")
# What a run writes in bench/: the full run's results and plot, and those of --metrics-cost.
RESULTS_JSON = "results.json"
RESULTS_PNG = "results.png"
METRICS_COST_JSON = "results-metrics-cost.json"


def raise_fd_limit(connections: int) -> None:
    """Raise the soft limit on open files for h2load and the servers (they inherit it)."""
    wanted = connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < wanted:
            print(f"warning: at most {new} open files (ulimit -Hn): "
                  f"{connections:,} connections may fail", file=sys.stderr)


# --- Main ------------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def connection_list(text: str) -> list:
    try:
        values = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}")
    if values[0] < 1:
        raise argparse.ArgumentTypeError("each number of connections must be at least 1")
    return values


def parse_args(argv: Optional[list]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure AvroEcho's servers with h2load, and its client, against the "
                    "limit of their stack and the servers a user would pick instead.")
    parser.add_argument("--seconds", type=positive_int, default=SECONDS,
                        help="h2load's duration per point, in whole seconds "
                             "(default: %(default)s)")
    parser.add_argument("--connections", type=connection_list,
                        default=list(CONNECTIONS), metavar="N,N,...",
                        help="numbers of connections to measure at (default: 1,50,1000)")
    parser.add_argument("--warmup", type=int, default=WARMUP_SECONDS,
                        help="seconds of load on each server before measuring, 0 for none "
                             "(default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=LOAD_THREADS,
                        help="h2load threads (default: %(default)s)")
    parser.add_argument("--workers", type=positive_int, default=WORKERS,
                        help="worker processes for the `--workers` rows "
                             "(default: %(default)s)")
    parser.add_argument("--only", metavar="NAME,NAME,...",
                        type=lambda text: [name for name in text.split(",") if name],
                        help="measure only these servers (by their names in results.json), "
                             "and the limit and server.py")
    parser.add_argument("--with-stdlib", action="store_true",
                        help="also measure http.server the way Avro's Python sample does it")
    parser.add_argument("--client-rounds", type=positive_int, default=CLIENT_ROUNDS,
                        help="rounds of the client measurement (default: %(default)s)")
    parser.add_argument("--client-seconds", type=float, default=CLIENT_ROUND_SECONDS,
                        help="seconds per client per round (default: %(default)s)")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="runs of each point, in turns; the median run is reported. "
                             "On a busy machine, 3 gives steadier figures (default: 1)")
    parser.add_argument("--no-client", action="store_true",
                        help="skip the client measurement")
    parser.add_argument("--clients-only", action="store_true",
                        help="measure only the clients (EchoClient and AsyncClient against "
                             "their bare loops), print their table and targets, and write "
                             "no files; h2load is not needed")
    parser.add_argument("--metrics-cost", action="store_true",
                        help="measure only what the metrics cost: the limit, server.py "
                             "and server.py --metrics (use with --repeat 10 or more); "
                             f"writes bench/{METRICS_COST_JSON}, and no plot unless --png")
    parser.add_argument("--json", type=Path,
                        help=f"where to write the results (default: bench/{RESULTS_JSON}; "
                             f"with --metrics-cost, bench/{METRICS_COST_JSON})")
    parser.add_argument("--png", type=Path,
                        help=f"where to write the plot (default: bench/{RESULTS_PNG}; with "
                             "--metrics-cost, none)")
    args = parser.parse_args(argv)
    # A run of the metrics' cost alone leaves the full run's results and plot alone.
    if args.json is None:
        args.json = BENCH / (METRICS_COST_JSON if args.metrics_cost else RESULTS_JSON)
    if args.png is None and not args.metrics_cost:
        args.png = BENCH / RESULTS_PNG
    if args.warmup < 0:
        parser.error("argument --warmup: must be 0 or more")
    if not args.client_seconds > 0:
        parser.error("argument --client-seconds: must be more than 0")
    if args.clients_only and (args.no_client or args.metrics_cost):
        parser.error("argument --clients-only: not with --no-client or --metrics-cost")
    return args



def measure_servers(args: argparse.Namespace, log_dir: Path) -> list:
    """Start every server, check it, load it at each point; returns their results."""
    specs = server_specs(args.workers, args.with_stdlib)
    if args.metrics_cost:
        specs = [spec for spec in specs
                 if spec.name in (*REQUIRED_SERVERS, "server-metrics")]
    if args.only:
        specs = [spec for spec in specs if spec.name in (*REQUIRED_SERVERS, *args.only)]
    results = []
    running = []
    try:
        for spec in specs:
            result = {"name": spec.name, "label": spec.label, "available": True,
                      "reason": None, "note": spec.note, "points": []}
            results.append(result)
            reason = missing(spec)
            try:
                if reason:
                    raise Unavailable(reason)
                progress(f"starting {spec.label}")
                server = start_server(spec, log_dir)
                running.append(server)
                check_server(server)
            except (Unavailable, BenchError) as e:
                if spec.name in REQUIRED_SERVERS:  # without these there is no result
                    raise BenchError(f"{spec.label}: {e}\n{log_tail(log_dir, spec)}") from e
                if running and running[-1].spec is spec:
                    stop_server(running.pop().process)
                result.update(available=False, reason=str(e))
                progress(f"  not available: {e}")
                continue
            progress(f"  listening on {server.port}; echo({QUERY!r}) answered correctly")
        servers = {server.spec.name: server for server in running}
        # The fixed bytes must be exactly server.py's answer, or the comparison would be
        # between two different responses.
        for name in FIXED_BYTES_SERVERS:
            if name in servers and servers[name].answer != servers["server"].answer:
                raise BenchError(f"{servers[name].spec.label}'s answer differs from "
                                 f"server.py's: {servers[name].answer!r} != "
                                 f"{servers['server'].answer!r}")

        for server in running:
            server.body_file = log_dir / f"{server.spec.name}.body"
            server.body_file.write_bytes(server.body)
            if args.warmup:
                progress(f"warming up {server.spec.label} ({args.warmup} s)")
                run_load(server, 50, args.warmup, args.threads)

        steps = args.repeat * len(args.connections) * len(running)
        step = 0
        for repeat in range(args.repeat):
            for connections in args.connections:
                for server in metrics_cost.in_turns(running, repeat):
                    step += 1
                    if server.process.poll() is not None:
                        raise BenchError(f"{server.spec.label} exited during the benchmark "
                                         f"(status {server.process.returncode}):\n"
                                         f"{log_tail(log_dir, server.spec)}")
                    progress(f"[{step}/{steps}] {server.spec.label} at "
                             f"{connections_text(connections)}, {args.seconds} s")
                    cpu = metrics_cost.cpu_seconds(server.process.pid)
                    load = run_load(server, connections, args.seconds, args.threads)
                    cpu = metrics_cost.cpu_seconds(server.process.pid) - cpu
                    point = make_point(connections, load, rss_bytes(server.process.pid))
                    point["cpu_us_per_request"] = (
                        round(cpu / point["requests"] * 1e6, 2) if point["requests"] else None)
                    server.points.append(point)
                    progress(f"  {point['requests_per_s']:,.0f} req/s, p50 "
                             f"{point['p50_ms'] or 0:.2f} ms, p99 {point['p99_ms'] or 0:.2f} ms, "
                             f"{point['error_total']} errors, "
                             f"{point['cpu_us_per_request'] or 0:.0f} µs CPU a request")
                    time.sleep(0.5)  # let the closed connections go before the next point
        for server in running:  # still correct after the load?
            result = next(r for r in results if r["name"] == server.spec.name)
            result["points"] = median_points(server.points)
            # Each repeat's figures, in the order run: bench/metrics_cost.py pairs them.
            for key in ("requests_per_s", "cpu_us_per_request"):
                result[f"{key}_by_run"] = {
                    str(count): [p[key] for p in server.points if p["connections"] == count]
                    for count in args.connections}
            try:
                check_server(server, calls=1)
            except BenchError as e:
                result["note"] = f"answered wrongly after the load: {e}"
                progress(f"{server.spec.label} {result['note']}")
    finally:
        for server in running:
            stop_server(server.process)
    add_ratios(results)
    return results


def run(args: argparse.Namespace) -> int:
    if args.clients_only:
        return run_clients(args)
    if shutil.which("h2load") is None:
        raise BenchError("h2load is not installed: `make bench` installs it "
                         "(apt-get install nghttp2-client)")
    raise_fd_limit(max(args.connections))
    facts = machine_facts()
    progress(f"{facts['cores']} cores, load average {facts['load_average_at_start']}, "
             f"Python {facts['python']}, eventlet {facts['eventlet']}, avro {facts['avro']}, "
             f"{facts['h2load']}")
    with tempfile.TemporaryDirectory(prefix="avro-bench-") as log_dir:
        servers = measure_servers(args, Path(log_dir))
        clients = None
        if not args.no_client and not args.metrics_cost:
            clients = measure_client_against_bare(args, Path(log_dir))
    progress("metrics: µs per call in process, with and without")
    cost = metrics_cost.summary(servers, args.connections, metrics_cost.in_process_cost())

    results = {
        "machine": facts,
        "settings": {"seconds": args.seconds, "warmup_seconds": args.warmup,
                     "connections": args.connections, "repeat": args.repeat,
                     "load_generator": "h2load", "load_threads": args.threads,
                     "load_timeout_seconds": LOAD_TIMEOUT_SECONDS, "workers": args.workers,
                     "query": QUERY, "client_rounds": args.client_rounds,
                     "client_round_seconds": args.client_seconds},
        "servers": servers,
        "client": clients,
        "metrics_cost": cost,
    }
    results["targets"] = evaluate_targets(servers, clients) + [metrics_cost.target(cost)]
    results["comparisons"] = comparisons(servers)
    facts["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    print()
    print(format_table(servers))
    if clients:
        print_clients(clients, args)
    print("\nWhat the metrics cost (server.py --metrics, against server.py):")
    print(metrics_cost.format_summary(cost))
    print("\nTargets:")
    print(format_targets(results["targets"]))
    if results["comparisons"]:
        print("\nSide by side, for information:")
        print(format_comparisons(results["comparisons"]))
    busy = busy_machine_note(facts)
    if busy:
        print(f"\nnote: {busy}")

    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {display(args.json)}", end="")
    if args.png is None:  # --metrics-cost: the full run's plot stays as it is
        print()
        return 0
    try:
        plot(results, args.png)
        print(f" and {display(args.png)}")
    except ImportError:
        print("; no plot: matplotlib is not installed "
              "(pip install -r requirements-bench.txt)")
    return 0


def print_clients(clients: dict, args: argparse.Namespace) -> None:
    print(f"\nClient, calling bare eventlet.wsgi (medians of {args.client_rounds} rounds "
          f"of {args.client_seconds:g} s):")
    print(format_clients(clients))


def run_clients(args: argparse.Namespace) -> int:
    """--clients-only: the client rows and their two targets, printed; no files written."""
    with tempfile.TemporaryDirectory(prefix="avro-bench-") as log_dir:
        clients = measure_client_against_bare(args, Path(log_dir))
    print_clients(clients, args)
    print("\nTargets:")
    print(format_targets([target for target in evaluate_targets([], clients)
                          if target["target"].startswith(("EchoClient", "AsyncClient"))]))
    return 0


def measure_client_against_bare(args: argparse.Namespace, log_dir: Path) -> dict:
    """Time the clients against a fresh bare server, with nothing else loading it."""
    progress(f"client: {args.client_rounds} rounds of {args.client_seconds:g} s per client, "
             "against bare eventlet.wsgi")
    spec = next(spec for spec in server_specs(args.workers, False) if spec.name == "bare")
    server = start_server(spec, log_dir)
    try:
        check_server(server, calls=1)
        return measure_clients(server.host, server.port, server.body, args.client_rounds,
                               args.client_seconds, progress)
    finally:
        stop_server(server.process)


def display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def main(argv: Optional[list] = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; the servers were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
