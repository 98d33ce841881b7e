"""The benchmark's load generator, h2load: its command line for Avro (HTTP/1.1) and gRPC
(HTTP/2), a short load of a real server, and its output and log read right: the requests,
the errors of each kind, and the latencies' percentiles. h2load_run makes the output of a
run for the report's tests. The load of a real server skips where h2load is not installed.
"""

from types import SimpleNamespace

import pytest

import wire
from bench import run
from bench.load import h2load_command, parse_h2load, percentile, run_load
from bench.protections_server import FixedAnswerResponder
from bench.settings import BenchError
from conftest import serving


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
