"""Mutual TLS: server.py --client-ca, and the client's certificate (its ssl_context, and
--certfile/--keyfile of client.py and of `python -m avrohttp call` and `describe`).

The certificate authority, the server's certificate and the bad files are test_tls.py's,
made afresh for each test run with trustme; this module adds client certificates, one from
that CA and one from another.
"""

import asyncio
import json
import logging
import re
import signal
import socket
import ssl
import time

import pytest
import trustme

import avrohttp
import client
import server
from avrohttp import tools
from conftest import ROOT, log_messages, running, server_class, server_program
from protocol import EchoProtocol
from test_tls import Files, run, serving_tls, trusting, wait_for_log
# test_tls.py's fixtures: pytest finds a module's fixtures by their names in it.
from test_tls import bad_files as bad_files, ca as ca, pki as pki


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
