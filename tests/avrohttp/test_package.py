"""Tests of the package as an adopter imports it: neither host's libraries (eventlet, uvicorn)
nor asyncio, no global state changed on import, and an application that another WSGI server
(wsgiref) can host.

Each test runs a fresh Python process, since this test session has long imported both
hosts."""

import json
import os
import subprocess
import sys
import textwrap

import avrohttp.responder
from conftest import ROOT


def run_python(code: str) -> dict:
    """Run `code` in a fresh interpreter from the repository's root; return the JSON it prints.

    AVRO_MAX_COLLECTION_ITEMS is left out of the environment: it would change avro.io's limit.
    """
    env = {name: value for name, value in os.environ.items()
           if name != "AVRO_MAX_COLLECTION_ITEMS"}
    result = subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return json.loads(result.stdout)


def test_the_package_imports_neither_host():
    imported = run_python("""
        import json, sys
        from avrohttp import (CallFailed, Client, Requestor, Responder, ServerOptions,
                              make_application, make_asgi_application)
        from avrohttp import codec
        print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in
                                ("eventlet", "greenlet", "dns", "uvicorn", "uvloop",
                                 "httptools", "asyncio", "avrohttp", "prometheus_client"))))
    """)
    # Nor asyncio (AsyncClient, and a host, import it when they are used), nor
    # prometheus_client: avrohttp.metrics imports it, and only a server with metrics imports
    # avrohttp.metrics.
    assert imported == ["avrohttp", "avrohttp.answers", "avrohttp.arguments", "avrohttp.asgi",
                        "avrohttp.async_handlers", "avrohttp.avro_json",
                        "avrohttp.call_responses", "avrohttp.client", "avrohttp.client_rules",
                        "avrohttp.codec",
                        "avrohttp.context", "avrohttp.errors", "avrohttp.hooked_responses",
                        "avrohttp.hooks", "avrohttp.options", "avrohttp.origins",
                        "avrohttp.plain_call", "avrohttp.protocol", "avrohttp.requestor",
                        "avrohttp.responder", "avrohttp.wsgi"]


def test_a_server_without_metrics_imports_no_prometheus_client():
    imported = run_python("""
        import json, sys
        import server
        from avrohttp import cli, supervisor
        print(json.dumps("prometheus_client" in sys.modules))
    """)
    assert imported is False


# What a library could change in a process on import: the standard library's objects (as
# eventlet.monkey_patch() does), avro's limit, warnings, logging, signals, recursion.
SNAPSHOT = """
    import avro.io, logging, select, signal, socket, ssl, sys, threading, time, warnings

    def snapshot():
        return {
            "patched": [socket.socket, socket.create_connection, ssl.SSLContext, select.select,
                        threading.Thread, threading.Lock, time.sleep],
            "avro.io.DEFAULT_MAX_COLLECTION_ITEMS": avro.io.DEFAULT_MAX_COLLECTION_ITEMS,
            "warnings": list(warnings.filters),
            "logging": (logging.root.level, list(logging.root.handlers),
                        sorted(logging.root.manager.loggerDict)),
            "signals": [signal.getsignal(signum) for signum in
                        (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)],
            "recursion limit": sys.getrecursionlimit(),
        }

    def changes(before, after):
        return sorted(key for key in before if before[key] != after[key])
"""


def test_importing_the_package_changes_no_global_state():
    changed = run_python(textwrap.dedent(SNAPSHOT) + textwrap.dedent("""
        import json
        before = snapshot()
        import avrohttp, avrohttp.codec
        after = snapshot()
        # Only avrohttp's own loggers are new: it configures none of them.
        after["logging"] = after["logging"][:2] + (
            [name for name in after["logging"][2] if not name.startswith("avrohttp")],)
        print(json.dumps(changes(before, after)))
    """))
    assert changed == []


def test_making_the_application_lowers_avros_limit_on_zero_byte_items():
    limits = run_python("""
        import json
        import avro.errors, avro.io
        before = avro.io.DEFAULT_MAX_COLLECTION_ITEMS
        import avrohttp
        from protocol import EchoProtocol
        imported = avro.io.DEFAULT_MAX_COLLECTION_ITEMS
        class AnyResponder(avrohttp.Responder):
            def invoke(self, message, request):
                raise avro.errors.AvroRemoteException("Not implemented")

        avrohttp.make_application(AnyResponder(EchoProtocol))
        print(json.dumps([before, imported, avro.io.DEFAULT_MAX_COLLECTION_ITEMS]))
    """)
    # 10,000,000 is avro 1.12's own default; the server lowers it at start-up only.
    assert limits == [10_000_000, 10_000_000, avrohttp.responder.MAX_ZERO_BYTE_ITEMS]


def test_the_application_runs_on_the_standard_librarys_wsgi_server():
    answers = run_python("""
        import json, sys, threading
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        import avro.errors
        import avrohttp
        from protocol import EchoProtocol

        class EchoResponder(avrohttp.Responder):
            def __init__(self):
                super().__init__(EchoProtocol)

            def handle_echo(self, query):
                return query

            def handle_split(self, query):
                raise avro.errors.AvroRemoteException("not today")

        class QuietHandler(WSGIRequestHandler):
            def log_message(self, *args):  # wsgiref logs every request to stderr
                pass

        application = avrohttp.make_application(EchoResponder())
        with make_server("127.0.0.1", 0, application, handler_class=QuietHandler) as server:
            thread = threading.Thread(target=server.serve_forever)
            thread.start()
            try:
                with avrohttp.Client(EchoProtocol, "127.0.0.1", server.server_port,
                                     timeout=10) as client:
                    answers = [client.call("echo", query="Hello World"),
                               client.call("echo", query="héllo wörld")]
                    try:
                        client.call("split", query="Hello World")
                    except avro.errors.AvroRemoteException as e:
                        answers.append(e.args[0])
            finally:
                server.shutdown()
                thread.join()
        answers.append("eventlet" in sys.modules)
        print(json.dumps(answers))
    """)
    assert answers == ["Hello World", "héllo wörld", "not today", False]
