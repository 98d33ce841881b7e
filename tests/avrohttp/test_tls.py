"""HTTPS: server.py --certfile/--keyfile, and the client's ssl_context, --tls and --cafile.
Mutual TLS (--client-ca, and the client's certificate) is test_tls_mutual.py's, with the
certificate authority, the server's certificates and the bad files of this module.

Each test run makes a throwaway certificate authority and a server certificate for
127.0.0.1 and localhost with trustme, so nothing here depends on the machine's own
certificates, and nothing has to be kept secret.
"""

import contextlib
import logging
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import avrohttp
import client
import server
from conftest import ROOT, LargeEcho, log_messages, server_program, serving
from wire import call_body


class Files:
    def __init__(self, directory, name: str, ca: trustme.CA, *identities: str) -> None:
        issued = ca.issue_cert(*identities)
        self.cert = directory / f"{name}-cert.pem"
        self.key = directory / f"{name}-key.pem"
        issued.cert_chain_pems[0].write_to_path(self.cert)
        issued.private_key_pem.write_to_path(self.key)


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(tmp_path_factory, ca):
    """The CA's certificate, a certificate and key for 127.0.0.1 and localhost, and one for
    another name only."""
    directory = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(directory / "ca.pem")
    files = Files(directory, "server", ca, "127.0.0.1", "localhost")
    files.ca = directory / "ca.pem"
    files.other = Files(directory, "other", ca, "elsewhere.example")
    return files


def trusting(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def serving_tls(host: str, cert, key, responder=None, **server_options):
    """The real server of `host`, over TLS, in a thread on a free port: yields (host, port)."""
    return serving(responder or server.EchoResponder(), host, certfile=str(cert),
                   keyfile=str(key), **server_options)


@pytest.fixture
def tls_server(pki, host):
    with serving_tls(host, pki.cert, pki.key) as address:
        yield address


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def server_log(caplog) -> list:
    """What the server logged about its clients."""
    return [message for message in (record.getMessage() for record in caplog.records
                                    if record.name == "avrohttp")
            if message.startswith("client ")]


def wait_for_log(caplog, timeout: float = 5.0) -> list:
    """The server's log, once it has a line (the server logs in a thread of its own)."""
    started = time.monotonic()
    while not server_log(caplog) and time.monotonic() - started < timeout:
        time.sleep(0.01)
    time.sleep(0.1)  # and a moment more, for any second line
    return server_log(caplog)


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_a_call_over_tls_succeeds(pki, tls_server, name):
    with client.EchoClient(name, tls_server[1], timeout=5, ssl_context=trusting(pki)) as echo:
        assert echo.echo("Hello World") == "Hello World"
        assert echo.split("Hello World") == "Hello"
        connection = echo.transceiver.conn.sock
        assert isinstance(connection, ssl.SSLSocket)
        assert connection.version() == "TLSv1.3"  # what both ends prefer, of those allowed


def test_a_client_that_does_not_trust_the_certificate_is_refused(tls_server, caplog, capfd):
    caplog.set_level(logging.INFO, logger="avrohttp")
    untrusting = ssl.create_default_context()  # the system's CAs: not this test's own CA
    with client.EchoClient(*tls_server, timeout=5, ssl_context=untrusting) as echo:
        with pytest.raises(avrohttp.CallFailed) as raised:
            echo.echo("hi")
    host, port = tls_server
    assert str(raised.value) == (
        f"cannot reach the server at {host}:{port}: its TLS certificate is not trusted "
        "(unable to get local issuer certificate)")
    [line] = wait_for_log(caplog)  # once the server has seen the client's alert
    assert re.fullmatch(r"client 127\.0\.0\.1:\d+: TLS failed: TLSV1_ALERT_UNKNOWN_CA", line), line
    assert "Traceback" not in capfd.readouterr().err


def test_a_certificate_for_another_name_is_refused(pki, host):
    with serving_tls(host, pki.other.cert, pki.other.key) as address, \
            client.EchoClient(*address, timeout=5, ssl_context=trusting(pki)) as echo:
        with pytest.raises(avrohttp.CallFailed) as raised:
            echo.echo("hi")
    assert str(raised.value) == (
        f"cannot reach the server at {address[0]}:{address[1]}: its TLS certificate is not "
        "trusted (IP address mismatch, certificate is not valid for '127.0.0.1'.)")


def test_a_plain_http_client_fails_cleanly_and_the_server_keeps_serving(
        pki, tls_server, caplog, capfd):
    caplog.set_level(logging.INFO, logger="avrohttp")
    with client.EchoClient(*tls_server, timeout=5) as plain:
        with pytest.raises(avrohttp.CallFailed) as raised:
            plain.echo("hi")
    with client.EchoClient(*tls_server, timeout=5, ssl_context=trusting(pki)) as echo:
        assert echo.echo("still here") == "still here"
    assert str(raised.value) == (
        f"cannot reach the server at {tls_server[0]}:{tls_server[1]}: the server closed the "
        "connection without an answer (if the server serves HTTPS, call it with TLS)")
    [line] = wait_for_log(caplog)
    assert re.fullmatch(r"client 127\.0\.0\.1:\d+: TLS failed: HTTP_REQUEST", line), line
    assert "Traceback" not in capfd.readouterr().err


def test_a_tls_client_of_a_plain_server_fails_cleanly(pki, host, caplog, capfd):
    caplog.set_level(logging.INFO, logger="avrohttp")
    with serving(server.EchoResponder(), host) as address, \
            client.EchoClient(*address, timeout=5, ssl_context=trusting(pki)) as echo:
        with pytest.raises(avrohttp.CallFailed) as raised:
            echo.echo("hi")
    assert str(raised.value) == (f"cannot reach the server at {address[0]}:{address[1]}: "
                                 "TLS failed: the server does not speak TLS here")
    # The server sees a request line that does not parse: one line in its log.
    [line] = wait_for_log(caplog)
    if host == "eventlet":
        # http.server's reason depends on the handshake's random bytes: a bad request version,
        # syntax, or "HTTP/0.9 request type".
        assert re.search(r"code 400, message Bad (request|HTTP/0\.9 request type)", line), line
    else:  # httptools' parser, for any bytes that are not HTTP
        assert re.fullmatch(r"client 127\.0\.0\.1:\d+: 400 Bad Request: Invalid HTTP request "
                            r"received\.", line), line
    assert "Traceback" not in capfd.readouterr().err


def test_a_handshake_that_never_comes_is_let_go(pki, host, capfd):
    with serving_tls(host, pki.cert, pki.key, request_timeout=0.3) as address, \
            socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and no more
        assert sock.recv(1024) == b""  # closed by the server, with nothing said
    assert "Traceback" not in capfd.readouterr().err


def test_a_kept_alive_tls_connection_closed_by_the_server_is_retried(pki, host):
    with serving_tls(host, pki.cert, pki.key, idle_timeout=0.2) as address, \
            client.EchoClient(*address, timeout=5, ssl_context=trusting(pki)) as echo:
        assert echo.echo("one") == "one"
        first = echo.transceiver.conn.sock
        time.sleep(0.6)  # the server closes the idle connection after 0.2 s
        assert echo.echo("two") == "two"
        assert echo.transceiver.conn.sock is not first


def test_the_command_lines_over_tls(pki, host):
    with server_program("--loop", host, "--certfile", str(pki.cert),
                        "--keyfile", str(pki.key)) as running:
        assert log_messages(running.startup_line) == [
            f"avrohttp AvroEcho server listening on https://127.0.0.1:{running.port}/"]
        port = str(running.port)
        trusted = run("client.py", "--port", port, "--cafile", str(pki.ca), "-e", "-s",
                      "-q", "Hello World")
        untrusted = run("client.py", "--port", port, "--tls", "-e", "-q", "hi")
        plain = run("client.py", "--port", port, "-e", "-q", "hi")
        running.process.send_signal(signal.SIGTERM)
        _, log = running.process.communicate(timeout=10)
    assert (trusted.returncode, trusted.stderr) == (0, "")
    assert trusted.stdout.splitlines()[0::2] == [">>> Echo: Hello World", ">>> Split: Hello"]
    assert (untrusted.returncode, untrusted.stdout) == (1, "")
    assert untrusted.stderr == (
        f"client.py: error: cannot reach the server at 127.0.0.1:{port}: its TLS certificate "
        "is not trusted (unable to get local issuer certificate)\n")
    assert (plain.returncode, plain.stdout) == (1, "")
    assert plain.stderr == (
        f"client.py: error: cannot reach the server at 127.0.0.1:{port}: the server closed the "
        "connection without an answer (if the server serves HTTPS, call it with TLS)\n")
    assert running.process.returncode == 0
    assert [re.sub(r"^avrohttp client 127\.0\.0\.1:\d+: ", "avrohttp client: ", message)
            for message in log_messages(log)] == [
        "avrohttp client: TLS failed: TLSV1_ALERT_UNKNOWN_CA",
        "avrohttp client: TLS failed: HTTP_REQUEST",
        "avrohttp stopping: answering the calls in flight", "avrohttp stopped"]


def test_the_server_stops_cleanly_with_an_idle_tls_client(pki, host):
    with server_program("--loop", host, "--certfile", str(pki.cert),
                        "--keyfile", str(pki.key)) as running, \
            client.EchoClient("127.0.0.1", running.port, ssl_context=trusting(pki)) as echo:
        assert echo.echo("keep this connection open") == "keep this connection open"
        running.process.send_signal(signal.SIGTERM)
        _, log = running.process.communicate(timeout=10)
    assert running.process.returncode == 0
    assert log_messages(log) == [
        "avrohttp stopping: answering the calls in flight", "avrohttp stopped"]


def test_two_workers_serve_tls(pki, host):
    with server_program("--loop", host, "--workers", "2", "--certfile", str(pki.cert),
                        "--keyfile", str(pki.key)) as running:
        assert log_messages(running.startup_line) == [
            f"avrohttp AvroEcho server listening on https://127.0.0.1:{running.port}/ (2 workers)"]
        for n in range(20):  # new connections, so that both workers take some
            with client.EchoClient("127.0.0.1", running.port, timeout=10,
                                   ssl_context=trusting(pki)) as echo:
                assert echo.echo(f"call {n}") == f"call {n}"
        running.process.send_signal(signal.SIGTERM)
        _, log = running.process.communicate(timeout=20)
    assert running.process.returncode == 0
    # Each worker drains, then the supervisor says it has stopped.
    assert sorted(re.sub(r"^avrohttp\[\d+\] ", "avrohttp[worker] ", message)
                  for message in log_messages(log)) == [
        "avrohttp stopped", "avrohttp stopping: the workers answer the calls in flight",
        "avrohttp[worker] stopped", "avrohttp[worker] stopped",
        "avrohttp[worker] stopping: answering the calls in flight",
        "avrohttp[worker] stopping: answering the calls in flight"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("bad")
    (directory / "junk.pem").write_text("not a certificate\n")
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    (directory / "locked-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    return directory


# With workers, the supervisor checks the files before any worker starts, whichever the host.
@pytest.mark.parametrize("host, workers", [("eventlet", "1"), ("asyncio", "1"),
                                           ("eventlet", "2")])
@pytest.mark.parametrize("cert, key, message", [
    ("missing.pem", "{key}", "cannot read missing.pem: No such file or directory"),
    ("{cert}", "missing.pem", "cannot read missing.pem: No such file or directory"),
    ("{junk}", "{key}", "{junk} and {key} are not a PEM certificate and its key (bad PEM data)"),
    ("{cert}", "{other_key}",
     "{cert} and {other_key} are not a PEM certificate and its key (KEY_VALUES_MISMATCH)"),
    ("{cert}", "{locked_key}",
     "{locked_key} is protected by a password: give a key without one"),
])
def test_server_refuses_bad_certificate_files_in_one_line(pki, bad_files, host, workers, cert,
                                                          key, message):
    names = {"cert": pki.cert, "key": pki.key, "other_key": pki.other.key,
             "junk": bad_files / "junk.pem", "locked_key": bad_files / "locked-key.pem"}
    cert, key, message = (text.format(**names) for text in (cert, key, message))
    result = run("server.py", "--loop", host, "--port", "0", "--workers", workers,
                 "--certfile", cert, "--keyfile", key)
    assert (result.returncode, result.stdout) == (1, "")
    # once, even with two workers
    assert log_messages(result.stderr) == [f"avrohttp cannot serve HTTPS: {message}"]


@pytest.mark.parametrize("flags", [["--certfile", "a.pem"], ["--keyfile", "a.pem"]])
def test_server_wants_both_certfile_and_keyfile(flags):
    result = run("server.py", *flags)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "server.py: error: --certfile and --keyfile go together: give both, or neither")


@pytest.mark.parametrize("name, content, message", [
    ("missing.pem", None, "cannot read {path}: No such file or directory"),
    ("junk.pem", "not a certificate\n", "{path} holds no PEM certificate"),
])
def test_client_refuses_a_bad_cafile_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    result = run("client.py", "--cafile", str(path), "-e", "-q", "hi")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"client.py: error: argument --cafile: {message.format(path=path)} (see --help)\n")




def test_a_tls_client_that_never_reads_its_answer_is_let_go(pki, host, caplog):
    caplog.set_level(logging.INFO, logger="avrohttp")
    size = 64 * 2**20
    with serving_tls(host, pki.cert, pki.key, LargeEcho(size), socket_timeout=0.5) as address, \
            socket.create_connection(address, timeout=10) as plain, \
            trusting(pki).wrap_socket(plain, server_hostname="127.0.0.1") as sock:
        body = call_body("echo", "big")
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body)  # then, nothing read
        started = time.monotonic()
        while "the answer was not read within 0.5 s" not in caplog.text:
            assert time.monotonic() - started < 10, "the server still waits on the client"
            time.sleep(0.1)
        received = 0
        with contextlib.suppress(OSError):  # reset, or a TLS record cut short
            while chunk := sock.recv(2**20):
                received += len(chunk)
    assert received < size
    assert caplog.text.count("the answer was not read within 0.5 s") == 1
    assert "Traceback" not in caplog.text
