"""The command lines: client.py's exact output and error exits, server.py's start-up line
and clean stop, and protocol.py's JSON."""

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import client
import server
import avrohttp
import avrohttp.serve
from conftest import ROOT, free_port, log_messages, read_http_response, server_program, serving
from protocol import PROTOCOL_JSON
from wire import call_body, read_answer

TOOK = re.compile(r"\(took \d+\.\d{4} s\)")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("flags, expected", [
    (["--echo", "--query", "Hello World"], [">>> Echo: Hello World"]),
    (["-e", "-q", "Hello World"], [">>> Echo: Hello World"]),
    (["--split", "--query", "Hello World"], [">>> Split: Hello"]),
    (["-s", "-q", "héllo wörld!"], [">>> Split: héllo "]),
    (["-e", "-s", "-q", "Hello World"], [">>> Echo: Hello World", ">>> Split: Hello"]),
])
def test_client_prints_the_answer_and_the_time(server_process, flags, expected):
    result = run("client.py", "--port", str(server_process), *flags)
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert lines[0::2] == expected
    assert all(TOOK.fullmatch(line) for line in lines[1::2]), lines


@pytest.mark.parametrize("flags, message", [
    ([], "client.py: error: the following arguments are required: -q/--query (see --help)"),
    (["-q", "hi"], "client.py: error: choose a message: --echo, --split, or both (see --help)"),
    (["-e", "-q", "hi", "--port", "x"],
     "client.py: error: argument --port: invalid int value: 'x' (see --help)"),
    (["-e", "-q", "hi", "--port", "99999"],
     "client.py: error: argument --port: 99999 is not a port number (1 to 65535) (see --help)"),
    (["-e", "-q", "hi", "--timeout", "0"], "client.py: error: argument --timeout: "
     "must be more than 0 seconds, and at most a day (see --help)"),
    (["-e", "-q", "hi", "--timeout", "1e300"], "client.py: error: argument --timeout: "
     "must be more than 0 seconds, and at most a day (see --help)"),
    (["-e", "-q", "hi", "--connect-timeout", "nan"], "client.py: error: argument "
     "--connect-timeout: must be more than 0 seconds, and at most a day (see --help)"),
    (["-e", "-q", "\udcff"], "client.py: error: argument -q/--query: not valid UTF-8 (see --help)"),
])
def test_client_usage_errors_are_one_line(flags, message):
    result = run("client.py", *flags)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", message + "\n")


def test_client_says_in_one_line_when_the_server_is_unreachable():
    port = free_port()
    result = run("client.py", "--port", str(port), "-e", "-q", "hi")
    assert result.returncode == 1
    assert result.stderr == (f"client.py: error: cannot reach the server at 127.0.0.1:{port}: "
                             "[Errno 111] Connection refused\n")


def test_client_says_in_one_line_when_the_server_does_not_answer_in_time():
    listener = avrohttp.serve.listen("127.0.0.1", 0)  # accepts (via the backlog) but never answers
    port = listener.getsockname()[1]
    result = run("client.py", "--port", str(port), "--timeout", "0.3", "-e", "-q", "hi")
    listener.close()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"client.py: error: cannot reach the server at 127.0.0.1:{port}: "
                             "timed out waiting for the answer (after 0.3 s)\n")


def test_client_says_in_one_line_when_the_server_answers_with_an_avro_error(capsys):
    class Failing(server.EchoResponder):
        def handle_split(self, query):
            raise RuntimeError("boom")

    with serving(avrohttp.make_application(Failing())) as (host, port):
        status = client.main(["--port", str(port), "-e", "-s", "-q", "Hello World"])
    out, err = capsys.readouterr()
    assert status == 1
    assert out.splitlines()[0] == ">>> Echo: Hello World"
    assert err == "client.py: error: the server answered: Internal error in split\n"


def test_server_prints_one_startup_line_with_the_bound_port():
    with server_program() as running:
        assert log_messages(running.startup_line) == [
            f"avrohttp AvroEcho server listening on http://127.0.0.1:{running.port}/"]
        result = run("client.py", "--port", str(running.port), "-e", "-q", "ok")
        answer, took = result.stdout.splitlines()
        assert (answer, bool(TOOK.fullmatch(took))) == (">>> Echo: ok", True), result.stdout
        running.process.send_signal(signal.SIGTERM)
        _, rest = running.process.communicate(timeout=10)
    assert running.process.returncode == 0
    assert log_messages(rest) == [
        "avrohttp stopping: answering the calls in flight", "avrohttp stopped"]


def test_server_refuses_a_port_out_of_range():
    result = run("server.py", "--port", "99999")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "server.py: error: argument --port: 99999 is not a port number (0 to 65535)")


def test_server_refuses_a_port_in_use_in_one_line():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run("server.py", "--port", str(port))
    assert result.returncode == 1
    assert log_messages(result.stderr) == [
        f"avrohttp cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_server_answers_calls_in_flight_then_exits_zero(signum):
    body = call_body("split", "Hello World")
    request = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with server_program() as running, \
            socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
        sock.sendall(request)  # a first call, so that the connection is surely accepted
        assert read_answer(read_http_response(sock)[2], "split").datum == "Hello"
        sock.sendall(request[:-10])
        time.sleep(0.3)  # a second call is now in flight: all but its last bytes are sent
        running.process.send_signal(signum)
        time.sleep(0.3)
        sock.sendall(request[-10:])
        status, headers, payload = read_http_response(sock)
        assert sock.recv(1) == b""  # then the server closes the connection
        _, stderr = running.process.communicate(timeout=10)
    assert status == "HTTP/1.1 200 OK"
    assert read_answer(payload, "split").datum == "Hello"
    assert running.process.returncode == 0
    assert log_messages(stderr) == [
        "avrohttp stopping: answering the calls in flight", "avrohttp stopped"]


def test_server_stops_promptly_with_an_idle_keep_alive_client():
    with server_program() as running, \
            client.EchoClient("127.0.0.1", running.port) as echo_client:
        assert echo_client.echo("keep this connection open") == "keep this connection open"
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        running.process.communicate(timeout=10)
        assert time.monotonic() - started < 3
    assert running.process.returncode == 0


def test_protocol_py_prints_the_protocol_json_with_its_docs():
    result = run("protocol.py")
    assert result.returncode == 0
    printed = json.loads(result.stdout)
    assert printed == json.loads(PROTOCOL_JSON)
    assert printed["doc"] and all(m["doc"] for m in printed["messages"].values())


def test_the_access_log_has_one_line_per_request_and_nothing_else():
    with server_program("--access-log") as running:
        with client.EchoClient("127.0.0.1", running.port) as echo_client:
            assert echo_client.echo("one") == "one"
            assert echo_client.split("two!") == "tw"
        with socket.create_connection(("127.0.0.1", running.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_http_response(sock)[0] == "HTTP/1.1 405 Method Not Allowed"
            local_port = sock.getsockname()[1]
        running.process.send_signal(signal.SIGTERM)
        _, stderr = running.process.communicate(timeout=10)
    # Without the date, and without the access lines' own time and duration.
    lines = [re.sub(r"\[[^]]+\] |(?<=\d) \d+\.\d+$", "", line.split(" ", 2)[2])
             for line in stderr.splitlines()]
    # Not eventlet's "wsgi starting up" and "wsgi exited" lines; the 405 is logged once as a
    # client's failure, as every 4xx is, with or without --access-log.
    assert lines == [
        'avrohttp.access 127.0.0.1 - - "POST / HTTP/1.1" 200 121',
        'avrohttp.access 127.0.0.1 - - "POST / HTTP/1.1" 200 120',
        f"avrohttp client 127.0.0.1:{local_port}: 405 Method Not Allowed: Avro calls must be "
        "POSTed",
        'avrohttp.access 127.0.0.1 - - "GET / HTTP/1.1" 405 191',
        "avrohttp stopping: answering the calls in flight",
        "avrohttp stopped"]
