"""GET /health, for load balancers and orchestrators: in-process, then through a socket."""

import http.client

import pytest

from conftest import call_app
from wire import call_body, read_answer


def at(path: str, app):
    """The app, called as if the request were for `path` (call_app asks for /)."""
    return lambda environ, start_response: app({**environ, "PATH_INFO": path}, start_response)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_health_answers_ok(app, method):
    response = call_app(at("/health", app), method=method, content_type=None)
    assert (response.status, response.body) == (200, b"OK\n")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_health_takes_nothing_but_get(app, method):
    # Not even an Avro call: /health is the health check's, and the Avro endpoint is every
    # other path.
    response = call_app(at("/health", app), call_body(), method=method)
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize("path", ["/", "/healthz", "/health/", "/rpc"])
def test_get_on_any_other_path_is_still_refused(app, path):
    response = call_app(at(path, app), method="GET", content_type=None)
    assert (response.status, response.headers["allow"]) == (405, "POST")


def test_avro_calls_are_answered_on_any_other_path(app):
    response = call_app(at("/rpc", app), call_body("split", "Hello World"))
    assert response.status == 200
    assert read_answer(response.body, "split").datum == "Hello"


@pytest.mark.parametrize("method, body", [("GET", b"OK\n"), ("HEAD", b"")])
def test_health_over_http(live_server, method, body):
    # eventlet.wsgi sends no body for a HEAD; a query string does not change the path.
    connection = http.client.HTTPConnection(*live_server, timeout=5)
    try:
        connection.request(method, "/health?from=balancer")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, body)
        assert response.getheader("Content-Length") == "3"
    finally:
        connection.close()
