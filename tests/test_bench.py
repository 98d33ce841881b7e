"""The benchmark's own parts (bench/), without matplotlib: `make bench` needs that. Here: the
servers and client loops that it runs, and its command line. h2load's command line and output
are test_bench_h2load.py's, the report's figures test_bench_report.py's.

Its figures are not checked here (timings in tests would only measure the machine's mood):
what is checked is that each server it starts answers correctly, that the fixed-bytes servers
send exactly server.py's answer, and that each client loop makes calls. The peers that need
requirements-bench.txt (gRPC) skip, saying so, where those are not installed.
"""


import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import avro.ipc
import avro.protocol
import avrohttp
import avrohttp.requestor
import avrohttp.responder
import server
import wire
from bench import fixed_bytes, grpc_echo, run
from bench.protections_server import FixedAnswerResponder
from bench.load import (ASYNC_CLIENTS, BARE_ASYNC_LOOP, CLIENTS, asyncio_streams_loop,
                        calls_per_second)
from bench.servers import (ServerSpec, avsc_missing, check_server, descendants, grpc_missing,
                           handshake_call, missing, rss_bytes, server_specs, start_server,
                           stop_server)
from bench.settings import BenchError, Unavailable
from conftest import ROOT, call_app, echo_app, free_port, serving
from protocol import PROTOCOL_JSON, EchoProtocol
from test_bench_h2load import h2load_run as h2load_run  # still importable from here


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
