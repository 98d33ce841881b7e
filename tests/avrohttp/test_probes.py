"""GET /health/live and /health/ready, Kubernetes' two probes, on both hosts: what each
answers, the service's own readiness check (Responder.ready()), and their metrics. What
/health/ready answers while a server shuts down is in test_lifecycle.py."""

import http.client
import logging

import avro.errors
import avro.ipc
import pytest

import avrohttp
import server
from conftest import call_app, serving
from protocol import EchoProtocol


class Readiness(server.EchoResponder):
    """Echo, whose ready() says what `state` says: None (ready), a reason, or an exception to
    raise."""

    def __init__(self) -> None:
        super().__init__()
        self.state = None

    def ready(self):
        if isinstance(self.state, Exception):
            raise self.state
        return self.state


def get(address: tuple, path: str, method: str = "GET") -> tuple:
    """One request on a connection of its own: (status, headers, body)."""
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/health"])
def test_the_probes_answer_ok_while_the_server_serves(host, path):
    with serving(server.EchoResponder(), host) as address:
        status, headers, body = get(address, path)
        assert (status, body) == (200, b"OK\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        status, headers, body = get(address, path, "HEAD")
        assert (status, headers["Content-Length"], body) == (200, "3", b"")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_probes_take_nothing_but_get_and_head(host, method):
    with serving(server.EchoResponder(), host) as address:
        for path in ("/health/live", "/health/ready"):
            status, headers, _ = get(address, path, method)
            assert (status, headers["Allow"]) == (405, "GET, HEAD")


def test_ready_answers_503_with_the_services_reason(host):
    responder = Readiness()
    with serving(responder, host) as address:
        responder.state = "the database is\nunreachable"
        assert get(address, "/health/ready")[::2] == (503, b"the database is unreachable\n")
        status, headers, body = get(address, "/health/ready", "HEAD")
        assert (status, body) == (503, b"")
        # Alive, and still answering calls: only the balancer is told to send none.
        assert get(address, "/health/live")[::2] == (200, b"OK\n")
        assert get(address, "/health")[::2] == (200, b"OK\n")
        with avrohttp.Client(EchoProtocol, *address, timeout=10) as caller:
            assert caller.call("echo", query="still") == "still"
        responder.state = None
        assert get(address, "/health/ready")[::2] == (200, b"OK\n")


def test_an_exception_in_ready_is_not_ready_and_logged_once(host, caplog):
    responder = Readiness()
    caplog.set_level(logging.INFO, logger="avrohttp")
    with serving(responder, host) as address:
        responder.state = RuntimeError("no connection to db.internal:5432")
        for _ in range(3):  # each probe: 503, without the exception's words
            assert get(address, "/health/ready")[::2] == (
                503, b"the readiness check failed (RuntimeError)\n")
        responder.state = None
        assert get(address, "/health/ready")[0] == 200
        responder.state = RuntimeError("no connection to db.internal:5432")
        assert get(address, "/health/ready")[0] == 503
    failures = [record for record in caplog.records
                if record.getMessage() == "the readiness check failed"]
    assert len(failures) == 2  # once, and once more after it had worked again
    assert all(record.exc_info[0] is RuntimeError for record in failures)


def test_a_responder_without_ready_is_always_ready(app):
    class Plain(avro.ipc.Responder):  # avro.ipc's own, which has no ready()
        def invoke(self, message, request):
            raise avro.errors.AvroRemoteException("no")

    for application in (app, avrohttp.make_application(Plain(EchoProtocol))):
        response = call_app(lambda environ, start: application(
            {**environ, "PATH_INFO": "/health/ready"}, start), method="GET", content_type=None)
        assert (response.status, response.body) == (200, b"OK\n")


def test_the_probes_are_counted_in_the_metrics(host):
    responder = Readiness()
    with serving(responder, host, metrics=True) as address:
        get(address, "/health/ready")
        get(address, "/health/live")
        responder.state = "warming up"
        get(address, "/health/ready")
        get(address, "/health/ready")
        get(address, "/health/ready", "POST")
        metrics = get(address, "/metrics")[2].decode()
    assert 'avro_server_http_responses_total{status="200"} 2.0' in metrics
    assert 'avro_server_http_responses_total{status="503"} 2.0' in metrics
    assert 'avro_server_http_responses_total{status="405"} 1.0' in metrics
