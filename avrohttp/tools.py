"""`python -m avrohttp`: serve a service module, and, like grpcurl for gRPC, ask any Avro HTTP
server (ours, avsc, Java) for its protocol or make one call.

Try it: `python -m avrohttp serve server:EchoResponder`, then in another terminal
`python -m avrohttp describe http://127.0.0.1:8130/` and
`python -m avrohttp call http://127.0.0.1:8130/ echo '{"query": "Hi"}'`.
docs/running.md, "Serving a module, and the command-line tools", says more.
"""

import argparse
import hashlib
import importlib
import inspect
import io
import json
import ssl
import sys
import textwrap
import traceback
import urllib.parse
from typing import Callable, List, NamedTuple, Optional, Tuple, cast

import avro.errors
import avro.io
import avro.ipc
import avro.protocol

from avrohttp import avro_json, cli, client, codec, tls
from avrohttp.errors import DeclaredError, HandlersMismatch, RemoteSystemError
from avrohttp.protocol import parse as parse_protocol

PROG = "python -m avrohttp"

# The exit statuses of describe and call.
ANSWERED = 0  # call: the answer is on stdout; describe: the protocol is
UNREACHABLE = 1  # no server there, no Avro answer, or TLS failed: the reason is on stderr
USAGE = 2  # a bad command line, JSON, message or parameter: the reason is on stderr
DECLARED_ERROR = 3  # the message's declared error, as JSON on stdout
SYSTEM_ERROR = 4  # the server's system error, on stderr
EXIT_STATUSES = f"""\
exit status:
  {ANSWERED}  answered: the answer (or the protocol) is printed on stdout, as JSON
  {UNREACHABLE}  the server cannot be reached, or did not answer in Avro (why: on stderr)
  {USAGE}  a bad command line, bad JSON, a message the server lacks, or parameters that do
     not fit the message (why: on stderr)
  {DECLARED_ERROR}  the server answered with an error the message declares: it is printed on
     stdout, as JSON, {{"full.Name": {{...}}}}
  {SYSTEM_ERROR}  the server answered with a system error (on stderr)"""
SERVE_EXIT_STATUSES = f"""\
exit status:
  0  stopped gracefully (SIGTERM, Ctrl-C)
  1  the server could not start (a port in use, say), or answer its calls in time
  {USAGE}  a bad command line, or a MODULE:ATTR that cannot be served (why: on stderr)"""
# The client hash of describe's handshake: the MD5 of no protocol, so no server knows it,
# and each answers NONE (or CLIENT) with its own protocol.
UNKNOWN_HASH = hashlib.md5(b"avrohttp describe: the hash of no protocol").digest()


class CannotLoad(Exception):
    """serve's MODULE:ATTR names no responder class or factory: the message says why."""


class UsageError(Exception):
    """The command line, or the JSON on it, does not fit: the message says why."""


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command: the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = command_line()
    args = parser.parse_args(argv)
    try:
        return args.run(args, argv)
    except UsageError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return USAGE


def command_line() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Serve an Avro protocol over HTTP, or ask a server of one.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serving = commands.add_parser(
        "serve", help="serve a responder: python -m avrohttp serve MODULE:ATTR",
        epilog=SERVE_EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Serve the responder of a module: MODULE:ATTR names a Responder class, or a "
            "function of no arguments that returns a responder (server:EchoResponder, say). "
            "The module needs no eventlet import and no monkey-patching: on --loop eventlet "
            "the standard library is patched before it is imported."))
    serving.add_argument("target", metavar="MODULE:ATTR",
                         help="the module (as for import) and its responder class or factory")
    cli.add_server_arguments(serving)
    serving.set_defaults(run=serve, parser=serving)
    for name, run, summary in (
            ("describe", describe, "print the server's protocol, as JSON"),
            ("call", call, "call a message, and print its answer as JSON")):
        command = commands.add_parser(
            name, help=summary, epilog=EXIT_STATUSES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            description=textwrap.fill(f"{summary[0].upper()}{summary[1:]}. The server's protocol "
                                      "is learned through the Avro handshake, so any Avro HTTP "
                                      "server will do."))
        command.add_argument("url", metavar="URL",
                             help="the server: http://host:port/path, or https://")
        if name == "call":
            command.add_argument("message", metavar="MESSAGE", help="the message's name")
            command.add_argument(
                "parameters", metavar="JSON", nargs="?", default="{}",
                help="the parameters, a JSON object by name, each in Avro's JSON encoding: "
                     "bytes and fixed as strings of \\u0000-\\u00ff, a union's value as "
                     '{"type": value} or plain where one branch alone fits it; - reads it '
                     "from stdin (default: {})")
        command.add_argument("--timeout", type=float, default=client.DEFAULT_TIMEOUT,
                             metavar="SECONDS",
                             help="seconds to wait for each answer (default: %(default)g)")
        command.add_argument("--cafile", metavar="FILE",
                             help="for https://, trust only the certificate authority in this "
                                  "PEM file (by default, the system's)")
        command.add_argument("--insecure", action="store_true",
                             help="for https://, trust any certificate (for tests only)")
        command.add_argument("--certfile", metavar="FILE",
                             help="for https://, give this client certificate to a server that "
                                  "asks for one (mutual TLS): a PEM file, the client's "
                                  "certificate first, then any intermediate ones")
        command.add_argument("--keyfile", metavar="FILE",
                             help="the client certificate's private key, a PEM file")
        command.set_defaults(run=run, parser=command)
    return parser


# serve

def serve(args: argparse.Namespace, argv: List[str]) -> int:
    """Serve MODULE:ATTR with the server's options: as avrohttp.cli.main does, but the module
    is imported only after host(loop) has monkey-patched for eventlet."""
    options, loop, ready_fd = cli.server_options(args, args.parser)
    module_name, _, attribute = args.target.partition(":")
    if not (module_name and attribute):
        raise UsageError(f"{args.target!r} is not MODULE:ATTR (server:EchoResponder, say)")
    try:
        # A worker of --workers runs this same command line again: `python -m avrohttp
        # serve MODULE:ATTR ...` (cli._this_program()).
        return cli.run(lambda: load_responder(module_name, attribute), options, loop,
                       ready_fd, argv)
    except CannotLoad as e:
        raise UsageError(str(e)) from None


def load_responder(module_name: str, attribute: str) -> avro.ipc.Responder:
    """The responder that MODULE:ATTR makes; CannotLoad, in one line, if it makes none."""
    target = f"{module_name}:{attribute}"
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # the module's own failure, whatever it is
        raise CannotLoad(f"cannot import {module_name}: {reason(e)}") from None
    found = module
    for name in attribute.split("."):
        if not hasattr(found, name):
            responders = [candidate for candidate, value in vars(module).items()
                          if isinstance(value, type) and issubclass(value, avro.ipc.Responder)
                          and value.__module__ == module.__name__]
            raise CannotLoad(f"{module_name} has no attribute {attribute!r}" + (
                f" (its responders: {', '.join(responders)})" if responders else ""))
        found = getattr(found, name)
    not_a_factory = (f"{target} is {what(found)}: give a Responder class, or a function of "
                     "no arguments that returns a responder")
    if isinstance(found, type) and not issubclass(found, avro.ipc.Responder):
        raise CannotLoad(not_a_factory)
    if isinstance(found, avro.ipc.Responder):
        raise CannotLoad(f"{target} is a responder: give its class, or a function that makes "
                         "one (each worker of --workers makes its own)")
    if not callable(found) or takes_arguments(found):
        raise CannotLoad(not_a_factory)
    try:
        responder = found()
    except HandlersMismatch as e:  # the check's words say it all; where it failed does not
        raise CannotLoad(f"{target}() failed: {type(e).__name__}: {e}") from None
    except Exception as e:
        raise CannotLoad(f"{target}() failed: {reason(e)}") from None
    if not isinstance(responder, avro.ipc.Responder):
        raise CannotLoad(f"{target}() returned {what(responder)}, not a responder")
    return responder


def takes_arguments(function: Callable) -> bool:
    """Whether a call of `function` with no arguments would miss some (a WSGI application's)."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: try it
        return False
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                   p.KEYWORD_ONLY) for p in parameters)


def what(value: object) -> str:
    """A value in words, for an error: "the class Foo", "an int"."""
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if inspect.isroutine(value):
        return "a function that takes arguments"
    name = type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def reason(error: Exception) -> str:
    """Why an import or a call failed, in one line: the error, and where it was raised."""
    if isinstance(error, SyntaxError):
        return f"{error.msg} ({error.filename}, line {error.lineno})"
    if isinstance(error, ModuleNotFoundError):
        return str(error)
    words = f"{type(error).__name__}: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        words += f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return words


# describe and call

class Server(NamedTuple):
    """Where describe and call find the server, and how they talk to it."""
    host: str
    port: int
    path: str
    ssl_context: Optional[ssl.SSLContext]
    timeout: float


def server_of(args: argparse.Namespace) -> Server:
    """The server that URL and the TLS options name; UsageError if they name none."""
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UsageError(f"{args.url!r} is not an http:// or https:// URL")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise UsageError(f"{args.url!r} has no valid port") from None
    if not 0 < args.timeout <= 86400:
        raise UsageError("--timeout must be more than 0 seconds, and at most a day")
    if (args.certfile is None) != (args.keyfile is None):
        raise UsageError("--certfile and --keyfile go together: give both, or neither")
    context = None
    if url.scheme == "https":
        try:
            context = ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as e:
            raise UsageError(f"--cafile {args.cafile}: {getattr(e, 'strerror', None) or e}"
                             ) from None
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if args.certfile:
            try:
                tls.load_certificate(context, args.certfile, args.keyfile)
            except tls.BadTLSFile as e:
                raise UsageError(str(e)) from None
    elif args.cafile or args.insecure:
        raise UsageError("--cafile and --insecure are for https:// URLs")
    elif args.certfile:
        raise UsageError("--certfile and --keyfile are for https:// URLs")
    path = url.path or "/"
    return Server(url.hostname, port, path + (f"?{url.query}" if url.query else ""),
                  context, args.timeout)


def learn_protocol(server: Server) -> Tuple[str, avro.protocol.Protocol]:
    """The server's protocol, its JSON text as the server sent it and parsed, learned
    through the handshake: a client hash that the server cannot know, and no protocol, so
    that it answers with its own (and runs no call: the call is a ping). CallFailed if the
    server cannot be reached or its answer is not a handshake with a protocol."""
    transceiver = client.Transceiver(server.host, server.port, server.timeout,
                                     client.connect_timeout_for(server.timeout, None),
                                     server.ssl_context)
    transceiver.req_resource = server.path
    request = (codec.encoder_for(avro.ipc.HANDSHAKE_REQUEST_SCHEMA)(
        {"clientHash": UNKNOWN_HASH, "serverHash": UNKNOWN_HASH})
        + codec.EMPTY_META + b"\x00")  # the empty message name: a ping
    try:
        answer = transceiver.transceive(request)
    except client.TRANSPORT_ERRORS as e:
        raise client.failure(e, (server.host, server.port),
                             tls=server.ssl_context is not None) from e
    finally:
        transceiver.close()
    try:
        handshake = cast(dict, avro.io.DatumReader(avro.ipc.HANDSHAKE_RESPONSE_SCHEMA).read(
            avro.io.BinaryDecoder(io.BytesIO(answer))))  # a record: avro reads it as a dict
    except (avro.errors.AvroException, ValueError, EOFError) as e:
        raise client.CallFailed(f"the server's answer is not an Avro handshake: {e}") from e
    text = handshake["serverProtocol"]
    if text is None:
        raise client.CallFailed(f"the server answered {handshake['match']} to a client it "
                                "cannot know, without its protocol")
    try:
        return text, parse_protocol(text)
    except avro.errors.AvroException as e:
        raise client.CallFailed(f"the server's protocol does not parse: {e}") from e


def describe(args: argparse.Namespace, argv: List[str]) -> int:
    server = server_of(args)
    try:
        text, _ = learn_protocol(server)
    except client.CallFailed as e:
        print(f"{PROG} describe: {e}", file=sys.stderr)
        return UNREACHABLE
    print(json.dumps(json.loads(text), indent=2))
    return ANSWERED


def call(args: argparse.Namespace, argv: List[str]) -> int:
    server = server_of(args)
    source = sys.stdin.read() if args.parameters == "-" else args.parameters
    try:
        parameters = json.loads(source)
    except ValueError as e:
        raise UsageError(f"the parameters are not JSON: {e}") from None
    if not isinstance(parameters, dict):
        raise UsageError(f"the parameters are not a JSON object of them by name: "
                         f"{avro_json.quote(parameters)}")
    try:
        text, protocol = learn_protocol(server)
    except client.CallFailed as e:
        print(f"{PROG} call: {e}", file=sys.stderr)
        return UNREACHABLE
    messages = protocol.messages or {}  # None for a protocol without messages
    message = messages.get(args.message)
    if message is None:
        raise UsageError(f"the {protocol.name} protocol has no message {args.message!r} "
                         f"(its messages: {', '.join(messages) or 'none'})")
    try:  # the parameters: a record, a dict
        request = cast(dict, avro_json.from_json(message.request, parameters, ""))
    except avro_json.DoesNotFit as e:
        raise UsageError(f"{message.name}: {e}") from None
    # The server's own protocol text as ours: its hash is the server's, so the handshake
    # settles at once, and the call is written and read with the server's schemas.
    with client.Client(text, server.host, server.port, timeout=server.timeout,
                       ssl_context=server.ssl_context) as caller:
        caller.transceiver.req_resource = server.path
        try:
            answer = caller.call(message.name, **request)
        except client.CallFailed as e:
            print(f"{PROG} call: {e}", file=sys.stderr)
            return UNREACHABLE
        except DeclaredError as e:
            print(json.dumps(declared_error_json(message, e), indent=2))
            return DECLARED_ERROR
        except RemoteSystemError as e:
            print(f"{PROG} call: system error: {e.message}", file=sys.stderr)
            return SYSTEM_ERROR
    # default=str: a value of a logical type (a date, a Decimal) that avro decoded, as text.
    print(json.dumps(avro_json.to_json(message.response, answer), indent=2, default=str))
    return ANSWERED


def declared_error_json(message: avro.protocol.Message, error: DeclaredError) -> object:
    """A declared error in Avro's JSON encoding of the message's errors union:
    {"full.Name": {...}}."""
    for schema in message.errors.schemas[1:]:
        if getattr(schema, "name", schema.type) == error.name:
            return {avro_json.branch_name(schema): avro_json.to_json(schema, error.datum)}
    return {error.name: error.datum}  # not in the server's own protocol: as it came
