"""Three servers behind nginx, with deploy/nginx.conf: calls from EchoClient and from avsc,
the spread over the servers, the body limit, and failover when a server is killed.

Runs deploy/fleet.py's Fleet, on free ports, from a temporary directory. `make test` installs
nginx (Debian's package); without it these tests skip, saying so.
"""

import http.client
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import avrohttp.wsgi
from client import EchoClient
from conftest import ROOT
from deploy import fleet as fleet_module
from deploy.fleet import Fleet, Load, failover
from test_interop import EXPECTED_ANSWERS, run_avsc_client
from wire import call_body, read_answer


NO_NGINX = "nginx is not installed: the fleet tests need it (apt-get install nginx)"


@pytest.fixture(scope="module")
def fleet():
    if fleet_module.nginx_program() is None:
        pytest.skip(NO_NGINX)
    with Fleet() as running:
        yield running


def post(port: int, body: bytes) -> tuple:
    """POST an Avro body through nginx: (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", "/", body, {"Content-Type": "avro/binary"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_config_is_rendered_with_the_ports_given():
    text = fleet_module.CONFIG.read_text()
    rendered = fleet_module.render_config(text, 9000, [9001, 9002, 9003])
    assert "listen 127.0.0.1:9000;" in rendered
    assert [f"server 127.0.0.1:{port} " in rendered for port in (9001, 9002, 9003)] == [True] * 3
    assert "127.0.0.1:813" not in rendered
    with pytest.raises(ValueError):
        fleet_module.render_config(text, 9000, [9001, 9002])


@pytest.mark.parametrize("query", ["Hello World", "héllo wörld! ✓ 𝄞", "", "x" * 100_000])
def test_echo_client_calls_through_nginx(fleet, query):
    with EchoClient("127.0.0.1", fleet.port, timeout=10) as client:
        assert client.echo(query) == query
        assert client.split(query) == query[: len(query) // 2]


@pytest.mark.parametrize("variant", ["same", "evolved"])
def test_avsc_calls_through_nginx(fleet, variant):
    results = run_avsc_client(fleet.port, variant)
    assert {key: results[key] for key in EXPECTED_ANSWERS} == EXPECTED_ANSWERS
    assert results["unknown"] == "Unknown message: shout"
    # Each server learns avsc's protocol on its own: a call that reaches one that does not
    # know it yet gets NONE, and is sent again (maybe to another server). In the end each of
    # the six calls got one answer.
    handshakes = results["handshakes"]
    assert set(handshakes) <= {"NONE", "BOTH", "CLIENT"}
    assert len([match for match in handshakes if match != "NONE"]) == 6


def settled_answers(fleet) -> list:
    """fleet.answered(), once no server is still writing an access line of an earlier call."""
    answered = fleet.answered()
    for _ in range(50):
        time.sleep(0.1)
        answered, before = fleet.answered(), answered
        if answered == before:
            break
    return answered


def test_calls_spread_over_every_server(fleet):
    before = settled_answers(fleet)
    with Load(fleet.port, clients=3, calls=60) as load:
        load.wait(60)
    result = load.result()
    answered = [after - before for after, before in zip(settled_answers(fleet), before)]
    assert result.failed == 0, result.errors
    assert sum(answered) == 60  # each server's own access log counts what it answered
    assert all(count > 0 for count in answered), answered


def test_health_through_nginx(fleet):
    assert fleet.get("/health") == (200, b"OK\n")
    assert fleet.get("/")[0] == 405  # the Avro endpoint still wants a POST


def echo_body_of_size(size: int) -> tuple:
    """A framed echo call exactly `size` bytes long, and its query."""
    query_length = size
    for _ in range(10):  # the framing grows with the query: converge on the size
        body = call_body("echo", "x" * query_length)
        if len(body) == size:
            return body, "x" * query_length
        query_length += size - len(body)
    raise AssertionError(f"no echo call of exactly {size} bytes")


def test_a_call_as_large_as_the_server_allows_passes_through_nginx(fleet):
    body, query = echo_body_of_size(avrohttp.wsgi.MAX_BODY_BYTES)
    status, answer = post(fleet.port, body)
    assert status == 200
    assert read_answer(answer).datum == query


def test_a_body_over_the_servers_limit_is_refused_by_nginx_itself(fleet):
    before = settled_answers(fleet)
    status, answer = post(fleet.port, b"\0" * (avrohttp.wsgi.MAX_BODY_BYTES + 1))
    assert status == 413
    # nginx's own page, not server.py's "Body is larger than ..." passed on: nginx did not
    # buffer a body that the server would refuse anyway.
    assert re.fullmatch(
        rb"<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
        rb"<center><h1>413 Request Entity Too Large</h1></center>\r\n"
        rb"<hr><center>nginx(/[\d.]+)?</center>\r\n</body>\r\n</html>\r\n", answer), answer
    assert settled_answers(fleet) == before


def test_make_fleet_prints_what_the_deployment_doc_shows():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if fleet_module.nginx_program() is None:
        pytest.skip(NO_NGINX)
    doc = (ROOT / "docs" / "deployment.md").read_text()
    shown = re.search(r"```console\n\$ make fleet\n(.*?)```", doc, re.DOTALL).group(1)
    # -o: the virtualenv is taken as made; the fleet runs with this interpreter instead.
    result = subprocess.run(["make", "-s", "-o", ".venv/.runtime", "fleet",
                             f"PY={sys.executable}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

    def shape(transcript: str) -> list:  # ports, counts and times vary from run to run
        return re.sub(r"\d+(\.\d+)?", "<n>", transcript).splitlines()

    assert shape(result.stdout + result.stderr) == shape(shown)
    answered = re.search(r"answered by each server: (.*)", result.stdout).group(1)
    counts = [int(count) for count in re.findall(r"port \d+ (\d+)", answered)]
    assert len(counts) == 3 and sum(counts) == 3000 and min(counts) > 0, answered


def test_no_call_fails_when_a_server_is_killed(fleet):
    # Last in this module: it kills a server, and starts it again.
    result = failover(fleet, victim=1)
    print(f"failover: {result.load.made} calls made, {result.load.failed} failed; "
          f"answered by each server: {result.answered}; made while one was down: "
          f"{result.made_while_down}; retried by nginx: {result.retried}; answered by the "
          f"killed server after its restart: {result.answered_after_restart}")
    assert result.load.failed == 0, result.load.errors
    assert result.made_while_down > 0
    # The kill did hit calls: nginx sent at least one to the dead server, and then on.
    assert result.retried > 0
    assert result.answered_after_restart > 0  # the restarted server gets calls again
    assert all(count > 0 for count in result.answered), result.answered


def test_metrics_are_scraped_from_each_server_not_through_nginx(fleet):
    # nginx refuses /metrics (each scrape would show some instance's counts); each server
    # answers it, as deploy/prometheus.yml scrapes them.
    assert fleet.get("/metrics")[0] == 404
    for server in fleet.servers:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            assert response.status == 200
            assert b"avro_server_calls_total" in response.read()
        finally:
            connection.close()


def test_prometheus_scrapes_the_servers_that_nginx_balances():
    nginx = fleet_module.CONFIG.read_text()
    prometheus = (ROOT / "deploy" / "prometheus.yml").read_text()
    upstream = re.findall(r"^\s*server (127\.0\.0\.1:\d+)\b", nginx, re.MULTILINE)
    targets = re.findall(r"^\s*- (127\.0\.0\.1:\d+)$", prometheus, re.MULTILINE)
    assert len(upstream) == 3 and targets == upstream


def test_the_steps_to_run_the_configuration_yourself_give_a_working_fleet():
    # docs/deployment.md's commands, as a reader pastes them into one shell: on free ports
    # (in the copy of the configuration too), and in a directory of the test's own.
    nginx = fleet_module.nginx_program()
    if nginx is None:
        pytest.skip(NO_NGINX)
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    doc = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"```console\n(\$ \.venv/bin/python server\.py --port 8131 .*?)```", doc,
                      re.DOTALL).group(1).splitlines()
    commands = [line[2:] for line in block if line.startswith("$ ")]
    shown = [line for line in block if not line.startswith("$ ")]
    ports = set()
    while len(ports) < 4:
        ports.add(fleet_module.free_port())
    port_of = dict(zip(("8130", "8131", "8132", "8133"), map(str, ports)))
    source = Path(tempfile.mkdtemp(prefix="avro-nginx-conf-"))
    directory = Path(tempfile.mkdtemp(prefix="avro-nginx-"))
    directory.chmod(0o755)  # nginx started as root runs its workers as "nobody"
    (source / "nginx.conf").write_text(fleet_module.render_config(
        fleet_module.CONFIG.read_text(), int(port_of["8130"]),
        [int(port_of[port]) for port in ("8131", "8132", "8133")]))

    def as_run(command: str) -> str:
        command = re.sub(r"\b813[0-3]\b", lambda match: port_of[match.group()], command)
        if command.startswith(".venv/bin/python client.py "):  # nginx's port, the default
            command += f" --port {port_of['8130']}"
        command = re.sub(r"^nginx ", f"{shlex.quote(nginx)} ", command)
        return (command.replace("/tmp/avro-nginx", str(directory))
                .replace("deploy/nginx.conf", str(source / "nginx.conf"))
                .replace(".venv/bin/python", shlex.quote(sys.executable)))

    # Whatever happens, no server or nginx is left running.
    script = "\n".join(["trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
                        *map(as_run, commands), "wait"])
    shell = subprocess.Popen(["bash", "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        printed, logged = shell.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(shell.pid, signal.SIGKILL)
        printed, logged = shell.communicate()
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
    assert [re.sub(r"\d+\.\d+", "<n>", line) for line in printed.splitlines()] \
        == [re.sub(r"\d+\.\d+", "<n>", line) for line in shown], printed + logged
    for port in ("8131", "8132", "8133"):
        assert f"listening on http://127.0.0.1:{port_of[port]}/" in logged, logged
    assert "Traceback" not in logged, logged
    assert shell.returncode == 0, logged
