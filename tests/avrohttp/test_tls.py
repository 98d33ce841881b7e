"""HTTPS: server.py --certfile/--keyfile, and the client's ssl_context, --tls and --cafile;
mutual TLS: server.py --client-ca, and the client's certificate (its ssl_context, and
--certfile/--keyfile of client.py and of `python -m avrohttp call` and `describe`).

Each test run makes a throwaway certificate authority and a server certificate for
127.0.0.1 and localhost with trustme, so nothing here depends on the machine's own
certificates, and nothing has to be kept secret.
"""

import asyncio
import contextlib
import json
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
from avrohttp import tools
from conftest import ROOT, LargeEcho, log_messages, running, server_class, server_program, serving
from protocol import EchoProtocol
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


# --- mutual TLS -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clients(tmp_path_factory, ca):
    """Client certificates: one that the test's CA issued, and one from another CA."""
    directory = tmp_path_factory.mktemp("clients")
    trusted = Files(directory, "client", ca, "client.example")
    trusted.stranger = Files(directory, "stranger", trustme.CA(), "stranger.example")
    return trusted


def with_certificate(pki, files) -> ssl.SSLContext:
    """A client's TLS settings that trust the test's CA, and give this client certificate:
    as docs/running.md shows."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    return context


def serving_mutual_tls(host: str, pki, **server_options):
    """The real server of `host`, over TLS, wanting a client certificate from the test's CA."""
    return serving_tls(host, pki.cert, pki.key, client_ca=str(pki.ca), **server_options)


def call_echo(address, ssl_context: ssl.SSLContext, kind: str) -> str:
    """One echo call, by the client or (kind "async") by the AsyncClient."""
    if kind == "sync":
        with client.EchoClient(*address, timeout=5, ssl_context=ssl_context) as echo:
            return echo.echo("Hello World")

    async def call() -> str:
        async with avrohttp.AsyncClient(EchoProtocol, *address, timeout=5,
                                        ssl_context=ssl_context) as echo:
            return await echo.call("echo", query="Hello World")

    return asyncio.run(call())


# What a refused client is told, on each host. The eventlet host's TLS alert says why; the
# asyncio host's TLS (uvloop's) sends none, and hangs up.
HANG_UP = ("the server closed the connection without an answer (if it wants a client "
           "certificate, give one that it trusts)")
REFUSED = {
    ("eventlet", None):
        "the server wants a client certificate (mutual TLS), and this client gave none",
    ("eventlet", "stranger"): "the server refused this client's TLS certificate (unknown ca)",
    ("asyncio", None): HANG_UP,
    ("asyncio", "stranger"): HANG_UP,
}
# And what the server logs, on both.
LOGGED = {None: "PEER_DID_NOT_RETURN_A_CERTIFICATE", "stranger": "CERTIFICATE_VERIFY_FAILED"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_with_a_certificate_that_the_server_trusts_is_answered(pki, clients, host,
                                                                        kind):
    with serving_mutual_tls(host, pki) as address:
        assert call_echo(address, with_certificate(pki, clients), kind) == "Hello World"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("certificate", [None, "stranger"])
def test_a_client_without_a_trusted_certificate_is_refused_at_tls(pki, clients, host, kind,
                                                                  certificate, caplog, capfd):
    caplog.set_level(logging.INFO, logger="avrohttp")
    context = (trusting(pki) if certificate is None
               else with_certificate(pki, getattr(clients, certificate)))
    with serving_mutual_tls(host, pki) as address:
        with pytest.raises(avrohttp.CallFailed) as raised:
            call_echo(address, context, kind)
        [line] = wait_for_log(caplog)
        # and the server goes on serving the others
        assert call_echo(address, with_certificate(pki, clients), kind) == "Hello World"
    assert str(raised.value) == (f"cannot reach the server at {address[0]}:{address[1]}: "
                                 f"{REFUSED[host, certificate]}")
    assert re.fullmatch(rf"client 127\.0\.0\.1:\d+: TLS failed: {LOGGED[certificate]}",
                        line), line
    assert "Traceback" not in capfd.readouterr().err


def test_a_tls_1_2_client_without_a_certificate_is_refused_in_its_handshake(pki, host):
    context = trusting(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the server refuses it in the handshake
    with serving_mutual_tls(host, pki) as address:
        with pytest.raises(avrohttp.CallFailed) as raised:
            call_echo(address, context, "sync")
    assert str(raised.value) == f"cannot reach the server at {address[0]}:{address[1]}: " + (
        "the server refused the TLS handshake (if it wants a client certificate, give one that "
        "it trusts)" if host == "eventlet" else HANG_UP)


def test_each_host_has_the_client_certificate_of_each_connection(pki, clients, host,
                                                                 monkeypatch):
    """Where the server finds the certificate of a connection's client: on eventlet, its
    accepted TLS socket, HTTPProtocol.connection, once the request is read; on asyncio, its
    transport's "peercert", from connection_made on."""
    certificates = []
    if host == "eventlet":
        from avrohttp.serve import HTTPProtocol
        get_environ = HTTPProtocol.get_environ

        def get_environ_seeing_the_certificate(protocol) -> dict:
            certificates.append(protocol.connection.getpeercert())
            return get_environ(protocol)

        monkeypatch.setattr(HTTPProtocol, "get_environ", get_environ_seeing_the_certificate)
    options = avrohttp.ServerOptions(port=0, certfile=str(pki.cert), keyfile=str(pki.key),
                                     client_ca=str(pki.ca))
    with running(server_class(host)(options, server.EchoResponder())) as started, \
            client.EchoClient(*started.address, timeout=5,
                              ssl_context=with_certificate(pki, clients)) as echo:
        assert echo.echo("who am I?") == "who am I?"
        if host == "asyncio":
            certificates = [connection.transport.get_extra_info("peercert")
                            for connection in started.connections]  # this client's one
    assert [certificate["subjectAltName"] for certificate in certificates] == [
        (("DNS", "client.example"),)]


def test_client_ca_without_tls_is_a_usage_error(pki):
    result = run("server.py", "--client-ca", str(pki.ca))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines()[-1] == (
        "server.py: error: --client-ca needs --certfile and --keyfile: client certificates are "
        "checked over HTTPS only")


def test_a_server_given_a_client_ca_without_tls_does_not_start(pki, host, caplog):
    options = avrohttp.ServerOptions(port=0, client_ca=str(pki.ca))
    assert server_class(host)(options, server.EchoResponder()).run() == 1
    assert [record.getMessage() for record in caplog.records if record.name == "avrohttp"] == [
        "cannot serve: client_ca needs certfile and keyfile: client certificates are checked "
        "over HTTPS only"]


@pytest.mark.parametrize("host, workers", [("eventlet", "1"), ("asyncio", "1"),
                                           ("eventlet", "2")])
@pytest.mark.parametrize("client_ca, message", [
    ("missing.pem", "cannot read missing.pem: No such file or directory"),
    ("{junk}", "{junk} holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
    ("{key}", "{key} holds no PEM certificate (NO_CERTIFICATE_OR_CRL_FOUND)"),
])
def test_server_refuses_a_bad_client_ca_file_in_one_line(pki, bad_files, host, workers,
                                                         client_ca, message):
    names = {"junk": bad_files / "junk.pem", "key": pki.key}
    client_ca, message = (text.format(**names) for text in (client_ca, message))
    result = run("server.py", "--loop", host, "--port", "0", "--workers", workers,
                 "--certfile", str(pki.cert), "--keyfile", str(pki.key),
                 "--client-ca", client_ca)
    assert (result.returncode, result.stdout) == (1, "")
    # once, even with two workers
    assert log_messages(result.stderr) == [f"avrohttp cannot serve HTTPS: {message}"]


def test_the_command_lines_over_mutual_tls(pki, clients, host):
    with server_program("--loop", host, "--certfile", str(pki.cert), "--keyfile", str(pki.key),
                        "--client-ca", str(pki.ca)) as running_server:
        assert log_messages(running_server.startup_line) == [
            f"avrohttp AvroEcho server listening on https://127.0.0.1:{running_server.port}/"]
        port = str(running_server.port)
        given = run("client.py", "--port", port, "--cafile", str(pki.ca),
                    "--certfile", str(clients.cert), "--keyfile", str(clients.key),
                    "-e", "-q", "Hello World")
        none = run("client.py", "--port", port, "--cafile", str(pki.ca), "-e", "-q", "hi")
        running_server.process.send_signal(signal.SIGTERM)
        _, log = running_server.process.communicate(timeout=10)
    assert (given.returncode, given.stderr) == (0, "")
    assert given.stdout.splitlines()[0] == ">>> Echo: Hello World"
    assert (none.returncode, none.stdout) == (1, "")
    assert none.stderr == (f"client.py: error: cannot reach the server at 127.0.0.1:{port}: "
                           f"{REFUSED[host, None]}\n")
    assert running_server.process.returncode == 0
    assert [re.sub(r"^avrohttp client 127\.0\.0\.1:\d+: ", "avrohttp client: ", message)
            for message in log_messages(log)] == [
        "avrohttp client: TLS failed: PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "avrohttp stopping: answering the calls in flight", "avrohttp stopped"]


@pytest.mark.parametrize("flags, message", [
    (["--certfile", "{cert}"], "--certfile and --keyfile go together: give both, or neither"),
    (["--keyfile", "{key}"], "--certfile and --keyfile go together: give both, or neither"),
    (["--certfile", "missing.pem", "--keyfile", "{key}"],
     "cannot read missing.pem: No such file or directory"),
    (["--certfile", "{cert}", "--keyfile", "{other_key}"],
     "{cert} and {other_key} are not a PEM certificate and its key (KEY_VALUES_MISMATCH)"),
    (["--certfile", "{cert}", "--keyfile", "{locked_key}"],
     "{locked_key} is protected by a password: give a key without one"),
])
def test_client_refuses_bad_certificate_files_in_one_line(pki, clients, bad_files, flags,
                                                          message):
    names = {"cert": clients.cert, "key": clients.key, "other_key": pki.other.key,
             "locked_key": bad_files / "locked-key.pem"}
    flags = [flag.format(**names) for flag in flags]
    result = run("client.py", *flags, "-e", "-q", "hi")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"client.py: error: {message.format(**names)} (see --help)\n"


def test_call_and_describe_over_mutual_tls(pki, clients, host, capsys):
    certificate = ["--cafile", str(pki.ca), "--certfile", str(clients.cert),
                   "--keyfile", str(clients.key)]
    with serving_mutual_tls(host, pki) as (_, port):
        url = f"https://127.0.0.1:{port}/"
        called = tools.main(["call", url, "echo", '{"query": "over mutual TLS"}', *certificate])
        assert (called, *capsys.readouterr()) == (0, '"over mutual TLS"\n', "")
        described = tools.main(["describe", url, *certificate])
        out, err = capsys.readouterr()
        assert (described, json.loads(out)["protocol"], err) == (0, "AvroEcho", "")
        refused = tools.main(["describe", url, "--cafile", str(pki.ca)])
    assert (refused, *capsys.readouterr()) == (
        1, "", f"python -m avrohttp describe: cannot reach the server at 127.0.0.1:{port}: "
               f"{REFUSED[host, None]}\n")


@pytest.mark.parametrize("arguments, message", [
    (["https://127.0.0.1/", "--certfile", "{cert}"],
     "--certfile and --keyfile go together: give both, or neither"),
    (["http://127.0.0.1/", "--certfile", "{cert}", "--keyfile", "{key}"],
     "--certfile and --keyfile are for https:// URLs"),
    (["https://127.0.0.1/", "--certfile", "{cert}", "--keyfile", "{other_key}"],
     "{cert} and {other_key} are not a PEM certificate and its key (KEY_VALUES_MISMATCH)"),
])
def test_call_and_describe_refuse_bad_certificate_options(pki, clients, capsys, arguments,
                                                          message):
    names = {"cert": clients.cert, "key": clients.key, "other_key": pki.other.key}
    status = tools.main(["describe", *(argument.format(**names) for argument in arguments)])
    assert (status, *capsys.readouterr()) == (
        2, "", f"python -m avrohttp describe: error: {message.format(**names)}\n")


def test_a_refused_client_reads_why_even_after_sending_its_call(pki):
    """Under TLS 1.3, a client sends its call before it learns that it is refused. The
    eventlet host lets it read the alert that says why, instead of cutting it off with a reset
    (HTTPProtocol.linger_after_alert)."""
    with serving_mutual_tls("eventlet", pki) as address, \
            socket.create_connection(address, timeout=5) as plain, \
            trusting(pki).wrap_socket(plain, server_hostname="127.0.0.1") as sock:
        assert sock.version() == "TLSv1.3"
        time.sleep(0.3)  # the server has refused the client by now
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        time.sleep(0.3)
        with pytest.raises(ssl.SSLError) as raised:
            sock.recv(1024)
    assert raised.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_the_docs_show_what_a_refused_client_sees():
    doc = (ROOT / "docs" / "running.md").read_text()
    section = doc[doc.index("## TLS\n"):doc.index("\n## ", doc.index("## TLS\n"))]
    words = " ".join(section.split())
    for shown in [*REFUSED.values(), *LOGGED.values(), "--client-ca", "--certfile",
                  "load_cert_chain"]:
        assert shown in words, shown
