"""The server's command line, for any protocol: `main(responder_factory)` parses every option
into a ServerOptions, picks the host (--loop), and runs its Server, in one process or in
several (--workers).

Try it: server.py's main() is `return cli.main(EchoResponder, argv)`; `python server.py --help`
lists the options. For the eventlet host, main() monkey-patches the standard library itself,
before it imports the host: a program need not (and, for --loop asyncio, must not).
`python -m avrohttp serve MODULE:ATTR` (avrohttp.tools) takes the same options
(add_server_arguments) and serves the same way (run), patching before it imports the module.
"""

import argparse
import dataclasses
import logging
import math
import sys
import warnings
from typing import Callable, List, Optional, Tuple

import avro.ipc

from avrohttp import extras, supervisor
from avrohttp.errors import HandlersMismatch
from avrohttp.options import ServerOptions

log = logging.getLogger("avrohttp")

# The hosts, and the one `python server.py` uses: the 2010 tutorial's eventlet.
LOOPS = ("eventlet", "asyncio")
DEFAULT_LOOP = "eventlet"


def add_server_arguments(parser: argparse.ArgumentParser, loop: str = DEFAULT_LOOP) -> None:
    """Add every option of the server to a command line: server.py's and those of
    `python -m avrohttp serve`. `loop` is the default of --loop."""
    defaults = ServerOptions()
    add = parser.add_argument
    add("--loop", choices=LOOPS, default=loop,
        help="the host: eventlet.wsgi, or asyncio (uvicorn's HTTP on uvloop), several times "
             "as fast; the same responder runs on both (default: %(default)s)")
    add("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    add("--port", type=int, default=defaults.port,
        help="port to listen on, 0 for any free port (default: %(default)s)")
    add("--certfile", metavar="FILE",
        help="serve HTTPS with this certificate, a PEM file "
             "(the server's certificate first, then any intermediate ones)")
    add("--keyfile", metavar="FILE", help="the certificate's private key, a PEM file")
    add("--client-ca", metavar="FILE",
        help="mutual TLS: refuse any client without a certificate issued by a certificate "
             "authority in this PEM file (with --certfile and --keyfile)")
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
    add("--shutdown-delay", type=float, default=defaults.shutdown_delay, metavar="SECONDS",
        help="seconds to go on serving after SIGTERM, /health/ready answering 503 and each "
             "answer closing its connection, before the stop: the time a balancer takes to "
             "stop sending calls (docs/deployment.md; default: %(default)s)")
    add("--max-connection-age", type=float, metavar="SECONDS",
        help="close a kept-alive connection after its first answer past this age, give or take "
             "10%%, so that its client connects again, maybe to a newer server (default: never)")
    add("--access-log", action="store_true", help="log one line per request")
    add("--metrics", action="store_true",
        help="count every call and serve them at GET /metrics, in Prometheus's format "
             "(docs/metrics.md says what that costs)")
    # Given by the supervisor to each worker: the pipe on which to say it listens.
    add("--ready-fd", type=int, help=argparse.SUPPRESS)


def server_options(args: argparse.Namespace, parser: argparse.ArgumentParser
                   ) -> Tuple[ServerOptions, str, Optional[int]]:
    """The options of add_server_arguments() as (ServerOptions, loop, ready_fd);
    parser.error() on a bad one."""
    if not 0 <= args.port <= 65535:
        parser.error(f"argument --port: {args.port} is not a port number (0 to 65535)")
    for flag in ("workers", "max_body_bytes", "max_connections"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')}: {getattr(args, flag)} is not "
                         "1 or more")
    for flag in ("request_timeout", "idle_timeout", "drain_timeout", "max_connection_age"):
        if getattr(args, flag) is not None and not getattr(args, flag) > 0:  # refuses nan
            parser.error(f"argument --{flag.replace('_', '-')}: must be more than 0 seconds")
    if not 0 <= args.shutdown_delay < math.inf:  # also refuses nan
        parser.error("argument --shutdown-delay: must be 0 seconds or more, and finite")
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together: give both, or neither")
    if args.client_ca is not None and args.certfile is None:
        parser.error("--client-ca needs --certfile and --keyfile: client certificates are "
                     "checked over HTTPS only")
    # Only ServerOptions' own fields: the command line may hold others (serve's MODULE:ATTR).
    options = ServerOptions(**{field.name: getattr(args, field.name)
                               for field in dataclasses.fields(ServerOptions)
                               if hasattr(args, field.name)})
    return options, args.loop, args.ready_fd


def parse_options(argv: Optional[List[str]] = None, prog: Optional[str] = None,
                  description: Optional[str] = None, loop: str = DEFAULT_LOOP,
                  ) -> Tuple[ServerOptions, str, Optional[int]]:
    """The command line as (ServerOptions, loop, ready_fd); argparse exits on a bad option.
    `loop` is the default of --loop."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_server_arguments(parser, loop)
    return server_options(parser.parse_args(argv), parser)


def main(responder_factory: Callable[[], avro.ipc.Responder],
         argv: Optional[List[str]] = None, description: Optional[str] = None,
         loop: str = DEFAULT_LOOP) -> int:
    """Serve the responder that responder_factory() makes, as the command line says; `loop`
    is the host unless --loop says otherwise (a service with async def handlers gives
    "asyncio").

    Returns the exit status: 0 after a graceful stop, 1 if the server could not start or
    could not drain in time.
    """
    try:
        responder = responder_factory()
    except HandlersMismatch as e:  # the service's mistake, in one line, not a traceback
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        log.error("cannot serve: %s", e)
        return 1
    name = responder.local_protocol.name
    options, loop, ready_fd = parse_options(
        argv, description=description or f"Serve the {name} protocol over HTTP.", loop=loop)
    return run(lambda: responder, options, loop, ready_fd, argv)


def run(responder_factory: Callable[[], avro.ipc.Responder], options: ServerOptions,
        loop: str, ready_fd: Optional[int], argv: Optional[List[str]] = None) -> int:
    """Serve as the options say, in this process or (--workers) in several, each running this
    program again with `argv` (by default this process's arguments): the exit status.

    responder_factory is called once: in a server, after host(loop) has monkey-patched the
    standard library for eventlet; in a supervisor, which serves nothing, for the protocol's
    name alone, without patching.
    """
    logging.basicConfig(level=logging.INFO, format=(
        "%(asctime)s %(name)s[%(process)d] %(message)s" if ready_fd is not None
        else "%(asctime)s %(name)s %(message)s"))
    try:  # before any worker starts: without its extra, the host or --metrics is one line
        extras.require(loop)
        if options.metrics:
            extras.require("metrics")
    except extras.MissingExtra as e:
        log.error("cannot serve: %s", e)
        return 1
    if options.workers > 1:
        name = responder_factory().local_protocol.name
        argv = sys.argv[1:] if argv is None else argv
        return supervisor.run(_this_program(), argv, options, name)
    server = host(loop)
    return server(options, responder_factory(), ready_fd=ready_fd).run()


def host(loop: str) -> type:
    """The Server class of a loop, imported only when it is picked: the eventlet host after
    monkey-patching the standard library (if the program has not), the asyncio host without."""
    if loop == "asyncio":
        from avrohttp.serve_asyncio import Server as AsyncioServer
        return AsyncioServer
    # eventlet warns on import that it is deprecated; README.md, "eventlet's status", says why
    # the tutorial still uses it. Only that warning is silenced.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet.patcher
    if not eventlet.patcher.is_monkey_patched("socket"):
        # So that sockets, time and threads all cooperate with eventlet's green threads,
        # in the handlers' own I/O too.
        eventlet.monkey_patch()
    from avrohttp.serve import Server
    return Server


def _this_program() -> List[str]:
    """The command that started this process, without its arguments, for the workers to run:
    [python, server.py], or [python, -m, package.module]."""
    arguments = len(sys.argv) - 1
    return [sys.executable, *sys.orig_argv[1:len(sys.orig_argv) - arguments]]
