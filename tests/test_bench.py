"""The benchmark's own parts (bench/), without matplotlib: `make bench` needs that.

Its figures are not checked here (timings in tests would only measure the machine's mood);
what is checked is that each server it starts answers correctly, that the fixed-bytes servers
send exactly server.py's answer, that h2load's output is read right, and that the table,
ratios and targets are computed right. The peers that need requirements-bench.txt (gRPC) or
h2load skip, saying so, where those are not installed.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import avro.ipc
import avro.protocol
import avrohttp
import avrohttp.requestor
import avrohttp.responder
import server
import wire
from bench import fixed_bytes, grpc_echo, instructions, run
from bench.protections_server import FixedAnswerResponder
from bench.load import (ASYNC_CLIENTS, BARE_ASYNC_LOOP, CLIENTS, asyncio_streams_loop,
                        calls_per_second, client_results, h2load_command, make_point,
                        median_points, parse_h2load, percentile, run_load)
from bench.report import (add_ratios, busy_machine_note, comparisons, evaluate_targets,
                          format_clients, format_comparisons, format_table, limit_points)
from bench.servers import (ServerSpec, avsc_missing, check_server, descendants, grpc_missing,
                           handshake_call, missing, rss_bytes, server_specs, start_server,
                           stop_server)
from bench.settings import BenchError, Unavailable
from conftest import ROOT, call_app, echo_app, free_port, serving
from protocol import PROTOCOL_JSON, EchoProtocol


def test_fixed_bytes_are_exactly_what_server_answers():
    body = wire.call_body()
    answer = fixed_bytes.answer_in_process(echo_app(), body)
    fixed = call_app(fixed_bytes.make_fixed_application(answer), body)
    real = call_app(echo_app(), body)
    assert fixed == real
    # What bench/uvicorn_server.py sends, computed without server.py (nor eventlet).
    assert fixed_bytes.echo_answer(body) == answer
    assert wire.read_answer(fixed.body) == wire.Answer({"match": "BOTH", "serverProtocol": None,
                                                        "serverHash": None, "meta": None},
                                                       True, False, "Hello World")


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path


def started(spec: ServerSpec, log_dir):
    """Start a server as the benchmark does, and check it as the benchmark does."""
    running = start_server(spec, log_dir)
    try:
        check_server(running)
    except BaseException:
        stop_server(running.process)
        raise
    return running


def spec_named(name: str) -> ServerSpec:
    return next(spec for spec in server_specs(2, with_stdlib=True) if spec.name == name)


@pytest.mark.parametrize("name", ["bare", "bare_yield", "protections", "protections_asyncio",
                                  "uvicorn", "uvicorn_workers"])
def test_fixed_bytes_programs_answer_like_server_py(log_dir, name):
    spec = spec_named(name)
    if missing(spec):
        pytest.skip(f"{missing(spec)}: {spec.label} cannot run")
    fixed = started(spec, log_dir)
    try:
        assert fixed.body == wire.call_body()
        assert fixed.answer == call_app(echo_app(), fixed.body).body
    finally:
        stop_server(fixed.process)
    assert fixed.process.returncode is not None


@pytest.mark.parametrize("name", ["server_asyncio", "workers_asyncio"])
def test_asyncio_host_answers_a_call(log_dir, name):
    host = started(spec_named(name), log_dir)
    stop_server(host.process)
    assert host.body == wire.call_body()
    assert host.answer == call_app(echo_app(), host.body).body


@pytest.mark.parametrize("name", ["grpc", "grpc_aio"])
def test_grpc_server_answers_the_call_that_h2load_sends(log_dir, name):
    missing = grpc_missing()
    if missing:
        pytest.skip(f"{missing}: the gRPC benchmark servers cannot run")
    peer = started(spec_named(name), log_dir)
    stop_server(peer.process)
    echo_pb2, _ = grpc_echo.echo_modules()
    request = grpc_echo.unframe(peer.body)
    assert echo_pb2.EchoRequest.FromString(request).query == "Hello World"
    assert echo_pb2.EchoReply.FromString(peer.answer).answer == "Hello World"
    # h2load's body is the message behind gRPC's 5 bytes: not compressed, and its length.
    assert peer.body == b"\x00" + len(request).to_bytes(4, "big") + request


def test_stdlib_server_answers_a_call(log_dir):
    stdlib = started(spec_named("stdlib"), log_dir)
    stop_server(stdlib.process)
    assert wire.read_answer(stdlib.answer).datum == "Hello World"


@pytest.mark.parametrize("name", ["avsc", "avsc_workers"])
def test_avsc_server_answers_a_call_after_the_full_handshake(log_dir, name):
    missing = avsc_missing()
    if missing:
        pytest.skip(f"{missing}: the avsc benchmark server cannot run")
    avsc = started(spec_named(name), log_dir)
    stop_server(avsc.process)
    # avsc hashes its protocol's JSON text its own way, so the call that the benchmark
    # settles on names avsc's hash, not ours.
    assert avsc.body != wire.call_body()
    assert wire.read_answer(avsc.answer).handshake["match"] == "BOTH"


def test_handshake_goes_through_none_and_client_to_both():
    # A server whose protocol has one more message: another hash, and it does not know ours.
    extended = avro.protocol.parse(PROTOCOL_JSON.replace(
        '"messages": {', '"messages": {"shout": {"request": [], "response": "string"},', 1))
    assert extended.md5 != EchoProtocol.md5

    class ExtendedResponder(server.EchoResponder):
        def __init__(self):
            avrohttp.responder.Responder.__init__(self, extended)

        def handle_shout(self):
            return "HELLO"

    with serving(ExtendedResponder()) as (host, port):
        body, answer = handshake_call(host, port)
    assert body == wire.call_body(server_hash=extended.md5)
    assert wire.read_answer(answer).handshake["match"] == "BOTH"


def test_wrong_answer_is_an_error():
    class WrongAnswer(server.EchoResponder):
        def respond(self, call_request: bytes) -> bytes:
            handshake = wire.encode(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA, {"match": "BOTH"})
            no_meta_no_error = b"\x00\x00"
            return handshake + no_meta_no_error + wire.encode(wire.STRING, "Hi")

    with serving(WrongAnswer()) as (host, port):
        with pytest.raises(BenchError, match="answered 'Hi'"):
            handshake_call(host, port)


def test_server_without_a_flag_is_unavailable_with_the_reason(log_dir):
    spec = ServerSpec("workers", "server.py --no-such-flag",
                      lambda: [sys.executable, str(ROOT / "server.py"), "--port", "0",
                               "--no-such-flag"])
    with pytest.raises(Unavailable, match="status 2: .*unrecognized arguments"):
        start_server(spec, log_dir)


def test_rss_counts_children_and_is_none_once_gone():
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in descendants(os.getpid())

        def resident() -> int:
            status = Path(f"/proc/{child.pid}/status").read_text()
            [resident_kib] = re.findall(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
            return int(resident_kib) * 1024

        # Just started, sleep may still be loading: compare once its memory stays put.
        for _ in range(100):
            before, measured, after = resident(), rss_bytes(child.pid), resident()
            if before == after:
                break
            time.sleep(0.01)
        assert measured == before  # sleep has no children
    finally:
        child.kill()
        child.wait()
    assert child.pid not in descendants(os.getpid())
    assert rss_bytes(child.pid) is None


def test_h2load_gets_no_more_threads_than_connections(tmp_path):
    one = h2load_command("http://127.0.0.1:1/", tmp_path / "body", 1, 5, tmp_path / "log",
                         threads=2)
    many = h2load_command("http://127.0.0.1:1/", tmp_path / "body", 50, 5, tmp_path / "log",
                          threads=2)
    assert "--threads=1" in one and "--threads=2" in many


def test_h2load_speaks_http_1_1_to_avro_and_http_2_to_grpc(tmp_path):
    avro_load = h2load_command("http://127.0.0.1:1/", tmp_path / "body", 50, 5,
                               tmp_path / "log")
    assert "--h1" in avro_load and "--header=content-type: avro/binary" in avro_load
    assert avro_load[-1] == "http://127.0.0.1:1/"
    grpc_load = h2load_command("http://127.0.0.1:1/", tmp_path / "body", 50, 5,
                               tmp_path / "log", grpc=True)
    assert "--h1" not in grpc_load
    assert {"--max-concurrent-streams=1", "--header=content-type: application/grpc",
            "--header=te: trailers", f"--data={tmp_path / 'body'}"} <= set(grpc_load)
    assert grpc_load[-1] == "http://127.0.0.1:1/bench.Echo/Echo"


def test_h2load_loads_a_real_server_and_its_log_starts_afresh(tmp_path):
    if run.shutil.which("h2load") is None:
        pytest.skip("h2load is not installed (apt-get install nghttp2-client)")
    body = wire.call_body()
    with serving(FixedAnswerResponder()) as (host, port):
        running = SimpleNamespace(host=host, port=port, body_file=tmp_path / "x.body",
                                  spec=SimpleNamespace(kind="avro"), process=None)
        running.body_file.write_bytes(body)
        # A log left by an earlier run: h2load would add to it, and count it twice.
        (tmp_path / "x.h2load.log").write_text("1\t200\t999999999\n" * 1000)
        load = run_load(running, 2, 1, threads=1)
    assert load["requests"] > 0 and load["error_total"] == 0
    assert load["latency_ms"]["max"] < 999_999
    assert not (tmp_path / "x.h2load.log").exists()


def test_each_client_loop_makes_calls(monkeypatch):
    # avro.ipc's own Requestor remembers servers in module-level dicts: keep those to this
    # test (tests/avrohttp/test_client.py checks that the project's client leaves them empty).
    monkeypatch.setattr(avro.ipc, "REMOTE_HASHES", {})
    monkeypatch.setattr(avro.ipc, "REMOTE_PROTOCOLS", {})
    body = wire.call_body()
    with serving(FixedAnswerResponder()) as (host, port):
        # AsyncClient's bare loop is there whether AsyncClient is or not.
        for name, make_call in {**CLIENTS, **ASYNC_CLIENTS,
                                BARE_ASYNC_LOOP: asyncio_streams_loop}.items():
            assert calls_per_second(make_call, host, port, body, 0.05) > 0, name


@pytest.mark.parametrize("make_call", [*CLIENTS.values(), asyncio_streams_loop])
def test_a_client_that_cannot_connect_is_a_bench_error(make_call):
    with pytest.raises(BenchError, match="failed"):
        calls_per_second(make_call, "127.0.0.1", free_port(), wire.call_body(), 0.05)


def h2load_run(requests: int, p50_us: int, p99_us: int, timeouts: int = 0) -> dict:
    """parse_h2load's reading of what h2load prints for a 5 s run, and of its log, whose 100
    lines give p50_us as the 50th latency and p99_us as the 99th."""
    output = (
        "starting benchmark...\nApplication protocol: http/1.1\n\n"
        f"finished in 5.00s, {requests / 5:.2f} req/s, 1.35MB/s\n"
        f"requests: {requests} total, {requests + 50} started, {requests + timeouts} done, "
        f"{requests} succeeded, {timeouts} failed, 0 errored, {timeouts} timeout\n"
        f"status codes: {requests} 2xx, 0 3xx, 0 4xx, 0 5xx\n"
        "traffic: 4.04MB (4236360) total, 2.26MB (2364624) headers (space savings 0.00%)\n")
    log = "".join(f"1796541631777995\t200\t{latency}\n"
                  for latency in [p50_us] * 50 + [p99_us] * 50)
    return parse_h2load(output, log)


def sample_results() -> list:
    def server(name, points):
        return {"name": name, "label": name, "available": True, "reason": None, "note": "",
                "points": [make_point(connections, load, rss_mib * 2**20)
                           for connections, load, rss_mib in points]}

    # Requests in 5 s: bare is the limit at 1 connection, bare + yield at 50 and 1,000.
    servers = [
        server("bare", [(1, h2load_run(10_000, 400, 800), 40),
                        (50, h2load_run(50_000, 4_000, 8_000), 40),
                        (1000, h2load_run(40_000, 100_000, 200_000), 60)]),
        server("bare_yield", [(1, h2load_run(9_000, 450, 900), 40),
                              (50, h2load_run(60_000, 4_000, 5_000), 40),
                              (1000, h2load_run(42_000, 100_000, 150_000), 60)]),
        server("server", [(1, h2load_run(9_500, 420, 850), 50),
                          (50, h2load_run(54_000, 5_000, 10_000), 50),
                          (1000, h2load_run(30_000, 200_000, 210_000, timeouts=3), 60)]),
        server("workers", [(50, h2load_run(70_000, 1_000, 60_000), 100)]),
        server("avsc_workers", [(50, h2load_run(75_000, 1_000, 20_000), 100)]),
        server("avsc", []),
        # The asyncio host at 0.85 of bare uvicorn at 50 connections, and a p99 1.4 times
        # bare uvicorn's at 1,000; with two workers, 0.76 of bare uvicorn with two.
        server("uvicorn", [(50, h2load_run(200_000, 1_000, 3_000), 30),
                           (1000, h2load_run(180_000, 50_000, 100_000), 40)]),
        server("server_asyncio", [(50, h2load_run(170_000, 1_200, 4_000), 35),
                                  (1000, h2load_run(150_000, 60_000, 140_000), 45)]),
        server("uvicorn_workers", [(50, h2load_run(250_000, 800, 5_000), 70)]),
        server("workers_asyncio", [(50, h2load_run(190_000, 900, 45_000), 80)]),
        server("grpc", [(50, h2load_run(40_000, 6_000, 12_000), 50)]),
        server("grpc_aio", [(50, h2load_run(55_000, 4_500, 6_000), 50)]),
    ]
    servers[5].update(available=False, reason="node is not installed")
    add_ratios(servers)
    return servers


def test_the_limit_is_the_faster_bare_server_at_each_point():
    limits = limit_points(sample_results())
    assert {count: label for count, (label, _) in limits.items()} == {
        1: "bare", 50: "bare_yield", 1000: "bare_yield"}


def test_points_and_ratios_from_h2load_output():
    bare, _, ours, *_ = sample_results()
    assert bare["points"][1]["requests_per_s"] == 10_000
    point = ours["points"][1]
    assert (point["requests_per_s"], point["p50_ms"], point["p99_ms"]) == (10_800, 5.0, 10.0)
    assert point["ratio_to_limit"] == {"requests_per_s": 0.9, "p50_ms": 1.25,
                                       "p99_ms": 2.0, "rss_bytes": 1.25}
    assert ours["points"][0]["ratio_to_limit"]["requests_per_s"] == 0.95  # of bare, there
    assert ours["points"][2]["error_total"] == 3
    assert ours["points"][2]["ratio_to_limit"]["p99_ms"] == 1.4


def test_table_shows_ratios_errors_and_missing_servers():
    table = format_table(sample_results())
    assert "10,800 (0.90)" in table
    assert "10.00 (2.00)" in table
    assert "note: server at 1,000 connections: 3 errors (timeout 3)" in table
    assert "avsc: not available: node is not installed" in table
    assert "1 connection: bare, 50 connections: bare_yield" in table


def test_targets_met_missed_or_not_measured():
    servers = sample_results()
    # Per round, EchoClient makes 0.96, 0.95 and 0.5 as many calls as the bare loop.
    clients = client_results({"http.client loop": [100, 200, 400],
                              "EchoClient": [96, 190, 200],
                              "avro.ipc.Requestor": [90, 100, 100]})
    assert clients["median_calls_per_s"]["EchoClient"] == 190
    assert clients["ratio_to_http_client"]["EchoClient"] == 0.95
    targets = evaluate_targets(servers, clients)
    verdicts = {target["target"].split(":")[0] + ": " + target["target"].split(": ")[1]:
                target["met"] for target in targets}
    assert list(verdicts.values()) == [
        True,  # server.py at 50 connections: 0.90 of the limit...
        False,  # ...but not the stretch, 0.95
        True,  # at 1 connection: 0.95 of bare
        False,  # at 1,000: p99 1.4 x the limit's, but 3 timeouts
        False,  # --workers p99: 60 ms
        True,  # --workers: 0.93 of avsc in as many processes...
        False,  # ...but not the stretch, 1.0
        True,  # the asyncio host at 50 connections: 0.85 of bare uvicorn...
        False,  # ...but not the stretch, 0.90
        True,  # at 1,000: no errors, p99 1.4 x bare uvicorn's
        False,  # --loop asyncio --workers 2: 0.76 of bare uvicorn --workers 2
        True,  # and its p99, 45 ms
        True,  # EchoClient: 0.95 of the http.client loop
        None,  # AsyncClient: not measured here
    ]
    assert targets[9]["measured"] == "0 errors, p99 140.0 ms against 100.0 ms (1.40)"
    assert targets[10]["measured"] == "38,000 against 50,000 (0.76)"
    assert [t["met"] for t in evaluate_targets(servers, None)][-2:] == [None, None]
    # AsyncClient, per round 0.97, 0.90 and 0.96 of the bare loop of its HTTP library.
    clients = client_results({"http.client loop": [100, 200, 400], "EchoClient": [96, 190, 200],
                              "asyncio streams loop": [200, 300, 500],
                              "AsyncClient": [194, 270, 480]})
    assert clients["ratio_to_bare_async_loop"] == 0.96
    assert evaluate_targets(servers, clients)[-1]["met"] is True
    assert "AsyncClient: 0.96 of the bare loop of its HTTP library" in format_clients(clients)
    without_avsc = [s for s in servers if s["name"] != "avsc_workers"]
    assert [t["met"] for t in evaluate_targets(without_avsc, clients)][5:7] == [None, None]
    without_uvicorn = [s for s in servers if s["name"] != "uvicorn"]
    targets = evaluate_targets(without_uvicorn, clients)
    assert [t["met"] for t in targets][7:10] == [None, None, None]
    assert targets[7]["measured"] == "not measured (bare uvicorn not available)"


def test_the_asyncio_host_is_compared_with_eventlet_and_the_faster_grpc_server():
    found = comparisons(sample_results())
    assert [(c["against"], c["ratio"]) for c in found] == [("server", 3.148),
                                                          ("grpc_aio", 3.091)]
    assert format_comparisons(found).splitlines()[1] == (
        "  server_asyncio at 50 connections: 3.09 x grpc_aio (34,000 against 11,000 req/s)")
    without_host = [s for s in sample_results() if s["name"] != "server_asyncio"]
    assert comparisons(without_host) == []


def test_repeated_runs_keep_the_median_run_whole():
    runs = [make_point(50, h2load_run(requests, 1_000, p99), 1)
            for requests, p99 in ((500, 9_000), (1_500, 7_000), (1_000, 8_000))]
    runs.append(make_point(1, h2load_run(50, 1_000, 2_000), 1))
    one, fifty = median_points(runs)
    assert (one["connections"], one["requests_per_s"]) == (1, 10)
    assert "requests_per_s_of_runs" not in one
    assert (fifty["requests_per_s"], fifty["p99_ms"]) == (200, 8.0)
    assert fifty["requests_per_s_of_runs"] == [100, 200, 300]


@pytest.mark.parametrize("load, busy", [(0.9, False), (1.1, True)])
def test_busy_machine_is_noted(load, busy):
    note = busy_machine_note({"cores": 2, "load_average_at_start": [load, 0, 0]})
    assert note == (f"the machine was busy when the run started (load average {load:g} on 2 "
                    "cores): the figures are noisier than usual; run it again when the machine "
                    "is quiet" if busy else None)


def test_h2load_output_without_a_result_is_an_error():
    with pytest.raises(BenchError, match="h2load printed no result"):
        parse_h2load("connect to 127.0.0.1:1 failed: Connection refused\n", "")


def test_h2load_counts_errors_and_reads_percentiles_from_its_log():
    output = ("finished in 2.00s, 150.00 req/s, 1.00KB/s\n"
              "requests: 310 total, 360 started, 310 done, 300 succeeded, 10 failed, "
              "4 errored, 1 timeout\n"
              "status codes: 300 2xx, 0 3xx, 5 4xx, 1 5xx\n")
    log = "".join(f"1\t200\t{latency}\n" for latency in range(1000, 0, -1))
    load = parse_h2load(output, log)
    assert (load["requests"], load["seconds"], load["requests_per_s"]) == (300, 2.0, 150.0)
    assert load["errors"] == {"errored": 4, "timeout": 1, "4xx": 5, "5xx": 1}
    assert load["error_total"] == 10  # h2load's failed counts the others in
    assert load["latency_ms"] == {"p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
    assert percentile([1, 2, 3], 0.5) == 2 and percentile([7], 0.99) == 7


def test_bad_connections_are_refused(capsys):
    with pytest.raises(SystemExit) as exited:
        run.parse_args(["--connections", "1,x"])
    assert exited.value.code == 2
    # argparse names the program after sys.argv[0], which is pytest's here.
    _, error = capsys.readouterr().err.splitlines()[-1].split(": ", 1)
    assert error == "error: argument --connections: not a comma-separated list of numbers: '1,x'"


def test_missing_h2load_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(run.shutil, "which", lambda name: None)
    assert run.main(["--seconds", "1", "--no-client"]) == 1
    assert capsys.readouterr().err == (
        "bench: error: h2load is not installed: `make bench` installs it "
        "(apt-get install nghttp2-client)\n")


def test_instruction_counts_and_what_each_layer_adds(tmp_path):
    dump = tmp_path / "server.callgrind.1234.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nsummary: 5400000\n"
                    "fl=(1) x.c\nfn=(1) main\n1 5400000\ntotals: 5400000\n")
    assert instructions.instructions_in(dump) == 5_400_000
    (tmp_path / "empty.1").write_text("")
    with pytest.raises(BenchError, match="no instruction count"):
        instructions.instructions_in(tmp_path / "empty.1")
    counts = [{"name": name, "label": name, "requests": 1_000, "instructions_per_request": n}
              for name, n in (("bare", 480_000), ("bare_yield", 500_000),
                              ("protections", 510_000), ("server", 540_000))]
    text = instructions.format_counts(counts)
    assert ("our protections, against bare eventlet.wsgi + yield: +10,000 (+2.0%) "
            "instructions per request") in text
    assert "the Avro work, server.py against our protections: +30,000 (+5.9%)" in text
    assert "Avro work" not in instructions.format_counts(counts[:3])
