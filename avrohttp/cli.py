"""The server's command line, for any protocol: `main(responder_factory)` parses every option
into a ServerOptions, then serves, in one process or in several (--workers).

Try it: server.py's main() is `return cli.main(EchoResponder, argv)`; `python server.py --help`
lists the options. Import this after eventlet.monkey_patch().
"""

import argparse
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Callable, List, Optional

import avro.ipc
import eventlet

from avrohttp import serve, supervisor
from avrohttp.options import METRICS_DIR_ENV, ServerOptions
from avrohttp.wsgi import make_application

if TYPE_CHECKING:
    from avrohttp.metrics import ServerMetrics

log = logging.getLogger("avrohttp")


def parse_options(argv: Optional[List[str]] = None, prog: Optional[str] = None,
                  description: Optional[str] = None) -> tuple:
    """The command line as (ServerOptions, ready_fd); argparse exits on a bad option."""
    defaults = ServerOptions()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add = parser.add_argument
    add("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=defaults.port,
        help="port to listen on, 0 for any free port (default: %(default)s)")
    add("--certfile", metavar="FILE",
        help="serve HTTPS with this certificate, a PEM file "
             "(the server's certificate first, then any intermediate ones)")
    add("--keyfile", metavar="FILE", help="the certificate's private key, a PEM file")
    add("--workers", type=int, default=defaults.workers,
        help="processes serving the port, one per core is a good start (default: %(default)s)")
    add("--max-body-bytes", type=int, default=defaults.max_body_bytes,
        help="larger request bodies get 413 (default: %(default)s)")
    add("--request-timeout", type=float, default=defaults.request_timeout, metavar="SECONDS",
        help="seconds in which a request's headers and body must arrive, from its first byte "
             "(default: %(default)s)")
    add("--idle-timeout", type=float, default=defaults.idle_timeout, metavar="SECONDS",
        help="seconds a keep-alive connection may wait for its next request "
             "(default: %(default)s)")
    add("--max-connections", type=int, default=defaults.max_connections,
        help="connections served at once (default: %(default)s)")
    add("--drain-timeout", type=float, default=defaults.drain_timeout, metavar="SECONDS",
        help="seconds a stop waits for the calls in flight (default: %(default)s)")
    add("--access-log", action="store_true", help="log one line per request")
    add("--metrics", action="store_true",
        help="count every call and serve them at GET /metrics, in Prometheus's format "
             "(docs/metrics.md says what that costs)")
    # Given by the supervisor to each worker: the pipe on which to say it listens.
    add("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"argument --port: {args.port} is not a port number (0 to 65535)")
    for flag in ("workers", "max_body_bytes", "max_connections"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')}: {getattr(args, flag)} is not "
                         "1 or more")
    for flag in ("request_timeout", "idle_timeout", "drain_timeout"):
        if not getattr(args, flag) > 0:  # also refuses nan
            parser.error(f"argument --{flag.replace('_', '-')}: must be more than 0 seconds")
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together: give both, or neither")
    ready_fd = args.ready_fd
    del args.ready_fd
    return ServerOptions(**vars(args)), ready_fd


def main(responder_factory: Callable[[], avro.ipc.Responder],
         argv: Optional[List[str]] = None, description: Optional[str] = None) -> int:
    """Serve the responder that responder_factory() makes, as the command line says.

    Returns the exit status: 0 after a graceful stop, 1 if the server could not start or
    could not drain in time.
    """
    responder = responder_factory()
    name = responder.local_protocol.name
    options, ready_fd = parse_options(
        argv, description=description or f"Serve the {name} protocol over HTTP.")
    worker = ready_fd is not None
    parent = os.getppid()  # before saying it is ready: it may die any time after that
    logging.basicConfig(level=logging.INFO, format=(
        "%(asctime)s %(name)s[%(process)d] %(message)s" if worker
        else "%(asctime)s %(name)s %(message)s"))
    context = None
    if options.certfile:
        try:  # here, before any worker starts, so that a bad file is reported once
            context = serve.tls_context(options.certfile, options.keyfile)
        except serve.CannotServeTLS as e:
            log.error("cannot serve HTTPS: %s", e)
            return 1
    if options.workers > 1:
        argv = sys.argv[1:] if argv is None else argv
        return supervisor.run(_this_program(), argv, options, name)
    try:
        listener = serve.listen(options.host, options.port, reuse_port=worker)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", options.host, options.port, e.strerror or e)
        return 1
    if context:
        # Each connection's handshake then happens in its own green thread, on first read.
        listener = context.wrap_socket(listener, server_side=True)
    options.max_connections = serve.allow_open_files(options.max_connections)
    # Before anyone is told to call:
    serve.stop_gracefully_on(listener, signal.SIGINT, signal.SIGTERM,
                             drain_timeout=options.drain_timeout)
    if worker:
        try:
            with open(ready_fd, "wb") as ready:
                ready.write(b"1")
        except BrokenPipeError:  # the supervisor died before this worker was ready
            return 1
        serve.stop_when_orphaned(parent)
    else:
        host, port = listener.getsockname()[:2]
        log.info("%s server listening on %s://%s:%d/", name, options.scheme, host, port)
    metrics = _metrics(responder) if options.metrics else None
    serve.serve(listener, make_application(responder, options.max_body_bytes, metrics),
                options, server_metrics=metrics)
    if metrics is not None:
        metrics.flush()  # the last calls, for the workers that go on
    log.info("stopped")
    return 0


def _metrics(responder: avro.ipc.Responder) -> Optional["ServerMetrics"]:
    """The server's metrics, installed as a hook of the responder (an avrohttp.Responder)."""
    if not hasattr(responder, "hooks"):
        log.warning("no metrics: %s is not an avrohttp.Responder", type(responder).__name__)
        return None
    # Imported only when wanted: without metrics, prometheus_client is never imported.
    from avrohttp.metrics import FLUSH_SECONDS, ServerMetrics
    # Set by the supervisor for its workers (--workers N): they share their counts there.
    directory = os.environ.get(METRICS_DIR_ENV)
    metrics = ServerMetrics(responder, directory=directory)
    responder.hooks.append(metrics)
    if directory is not None:
        def flush_forever() -> None:
            while True:
                eventlet.sleep(FLUSH_SECONDS)
                metrics.flush()
        eventlet.spawn_n(flush_forever)
    return metrics


def _this_program() -> List[str]:
    """The command that started this process, without its arguments, for the workers to run:
    [python, server.py], or [python, -m, package.module]."""
    arguments = len(sys.argv) - 1
    return [sys.executable, *sys.orig_argv[1:len(sys.orig_argv) - arguments]]
