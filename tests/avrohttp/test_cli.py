"""The server's command line (avrohttp.cli, run as server.py): its start-up line, its
refusals, its clean stop, and the access log."""

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import client
from conftest import ROOT, log_messages, read_http_response, server_program
from wire import call_body, read_answer

TOOK = re.compile(r"\(took \d+\.\d{4} s\)")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_server_prints_one_startup_line_with_the_bound_port(host):
    with server_program("--loop", host) as running:
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


def test_server_refuses_a_port_in_use_in_one_line(host):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run("server.py", "--loop", host, "--port", str(port))
    assert result.returncode == 1
    assert log_messages(result.stderr) == [
        f"avrohttp cannot listen on 127.0.0.1:{port}: Address already in use"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_server_answers_calls_in_flight_then_exits_zero(host, signum):
    body = call_body("split", "Hello World")
    request = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: avro/binary\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body) + body)
    with server_program("--loop", host) as running, \
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


def test_server_stops_promptly_with_an_idle_keep_alive_client(host):
    with server_program("--loop", host) as running, \
            client.EchoClient("127.0.0.1", running.port) as echo_client:
        assert echo_client.echo("keep this connection open") == "keep this connection open"
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        running.process.communicate(timeout=10)
        assert time.monotonic() - started < 3
    assert running.process.returncode == 0


def test_the_access_log_has_one_line_per_request_and_nothing_else(host):
    with server_program("--loop", host, "--access-log") as running:
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
    # The size is eventlet.wsgi's count of the whole answer, head and body; on asyncio, the
    # body's, as uvicorn's ASGI server counts what the application sends.
    sizes = {"eventlet": (121, 120, 191), "asyncio": (18, 17, 26)}[host]
    assert lines == [
        f'avrohttp.access 127.0.0.1 - - "POST / HTTP/1.1" 200 {sizes[0]}',
        f'avrohttp.access 127.0.0.1 - - "POST / HTTP/1.1" 200 {sizes[1]}',
        f"avrohttp client 127.0.0.1:{local_port}: 405 Method Not Allowed: Avro calls must be "
        "POSTed",
        f'avrohttp.access 127.0.0.1 - - "GET / HTTP/1.1" 405 {sizes[2]}',
        "avrohttp stopping: answering the calls in flight",
        "avrohttp stopped"]
