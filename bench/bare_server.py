"""The benchmark's limit: bare eventlet.wsgi, with eventlet's defaults, answering every POST
with fixed bytes (server.py's answer to the benchmark's call) and doing no Avro work.

With --yield, it also gives one eventlet.sleep(0) per request, after each answer: then the
green thread does not park on the hub only to find the client's next request there, and a
connection whose next request has come does not run on while the others wait. That is
faster at many connections, and slower at one. bench/run.py measures both, and takes the
faster at each number of connections as the limit.

eventlet's defaults, but for the listener: it is the one server.py uses (a backlog of 2,048,
not eventlet's 50, which drops connections under a burst), so that the two differ only in
how they serve. `log_output=False`, as a fast bare server would be run.

Try it: `python bench/bare_server.py --port 0 [--yield]`.
"""

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

# eventlet warns on import that it is deprecated (README.md, "eventlet's status").
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet

# First, as any eventlet program does: sockets, time and threads then cooperate with it.
eventlet.monkey_patch()

import logging
from typing import Optional

import eventlet.wsgi

import server
import wire
from bench.fixed_bytes import answer_in_process, listen_arguments, make_fixed_application

log = logging.getLogger("bare")
# server.py's backlog, not eventlet.listen's default of 50, which drops connections under a
# burst of them.
LISTEN_BACKLOG = 2048


class YieldingProtocol(eventlet.wsgi.HttpProtocol):
    """eventlet.wsgi's own, with one yield per request."""

    def handle_one_request(self) -> None:
        super().handle_one_request()
        eventlet.sleep(0)


def main(argv: Optional[list] = None) -> int:
    parser = listen_arguments("Answer every POST with fixed bytes on bare eventlet.wsgi.")
    parser.add_argument("--yield", dest="yield_", action="store_true",
                        help="yield to the other green threads once per request")
    parser.add_argument("--reuse-port", action="store_true",
                        help="share the port with other processes (SO_REUSEPORT), to run "
                             "several as --workers does")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    answer = answer_in_process(server.application, wire.call_body())
    try:
        # Told, since eventlet.listen would otherwise set SO_REUSEPORT for any port but 0.
        listener = eventlet.listen((args.host, args.port), backlog=LISTEN_BACKLOG,
                                   reuse_port=args.reuse_port)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e.strerror or e)
        return 1
    host, port = listener.getsockname()[:2]
    log.info("bare eventlet.wsgi%s listening on http://%s:%d/",
             " + yield" if args.yield_ else "", host, port)
    protocol = YieldingProtocol if args.yield_ else eventlet.wsgi.HttpProtocol
    try:
        eventlet.wsgi.server(listener, make_fixed_application(answer), log_output=False,
                             protocol=protocol)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
