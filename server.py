"""An Avro RPC server for the AvroEcho protocol, on eventlet.wsgi.

Try it: `python server.py`, then `python client.py --echo --query "Hello World"` in another
terminal. Ctrl-C (or SIGTERM) stops it after answering the calls already in flight.
"""

import warnings

with warnings.catch_warnings():
    # eventlet warns on import that it is deprecated. This example still uses it on purpose:
    # README.md, "eventlet's status", says why and where to go next. Only that warning is
    # silenced (its class lives inside eventlet, so it is matched by its text).
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet

# Patch the standard library before anything else imports it, so that sockets, time and
# threads all cooperate with eventlet's green threads.
eventlet.monkey_patch()

import argparse  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
from typing import Callable, Iterable, Optional  # noqa: E402

import avro.errors  # noqa: E402
import avro.io  # noqa: E402
import avro.ipc  # noqa: E402
import avro.protocol  # noqa: E402
import eventlet.wsgi  # noqa: E402
import greenlet  # noqa: E402

from protocol import EchoProtocol  # noqa: E402

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8130
MAX_BODY_BYTES = 1024 * 1024
# Client protocols remembered by hash; the least recently used is forgotten first.
MAX_CACHED_PROTOCOLS = 256
# eventlet.listen's default backlog of 50 overflows under a burst of connections, and the
# kernel then drops SYNs: clients wait a second or more before they retry.
LISTEN_BACKLOG = 2048
# Seconds a connection may sit idle (between keep-alive requests, or in the middle of one)
# before it is closed. eventlet's default is to wait forever.
SOCKET_TIMEOUT = 30.0

log = logging.getLogger("server")

# What a malformed body can make avro.io raise while it decodes: its own errors, and
# UnicodeDecodeError (a ValueError) for a string that is not UTF-8.
DECODING_ERRORS = (avro.errors.AvroException, ValueError)


class BadRequest(Exception):
    """The body is not an Avro call at all, so there is no Avro way to answer: HTTP 400."""


class BodyTooLarge(Exception):
    """The body is over the limit: HTTP 413."""


class FixedResponder(avro.ipc.Responder):
    """avro.ipc.Responder with the flaws of avro 1.12.2's server side fixed, in one place.

    - respond() writes a system error raised after the handshake into a buffer that it then
      throws away, so the client gets a bare handshake and a decoding error. Here the
      handshake and the call response are built separately and always sent together.
    - An exception in a handler goes back as its str(), which may leak internals. Here the
      client gets a short message and the traceback goes to the log.
    - The empty message name is the spec's ping, which avro answers with "Unknown message".
    - The client-protocol cache is an unbounded dict, keyed by whatever hash the client
      sends, so a client can grow it without limit or plant a wrong protocol under another
      client's hash. Here it is bounded, and a protocol is cached only under its own MD5.
    """

    def __init__(self, local_protocol: avro.protocol.Protocol,
                 max_cached_protocols: int = MAX_CACHED_PROTOCOLS) -> None:
        self.max_cached_protocols = max_cached_protocols
        super().__init__(local_protocol)

    # A dict keeps insertion order, so re-inserting on every hit makes it an LRU cache.
    def get_protocol_cache(self, hash: bytes) -> Optional[avro.protocol.Protocol]:
        if hash == self.local_hash:
            return self.local_protocol
        protocol = self.protocol_cache.pop(hash, None)
        if protocol is not None:
            self.protocol_cache[hash] = protocol
        return protocol

    def set_protocol_cache(self, hash: bytes, protocol: avro.protocol.Protocol) -> None:
        self.protocol_cache.pop(hash, None)
        self.protocol_cache[hash] = protocol
        while len(self.protocol_cache) > self.max_cached_protocols:
            del self.protocol_cache[next(iter(self.protocol_cache))]

    def respond(self, call_request: bytes) -> bytes:
        """Answer one call: the handshake response, then the call response (if any).

        Raises BadRequest when the body does not even start with a handshake request.
        """
        decoder = avro.io.BinaryDecoder(io.BytesIO(call_request))
        try:
            handshake = avro.ipc.HANDSHAKE_RESPONDER_READER.read(decoder)
        except DECODING_ERRORS as e:
            raise BadRequest("body is not an Avro handshake request") from e
        try:
            client_protocol = self._client_protocol(handshake)
        except Exception as e:  # parsing untrusted JSON can fail in many ways
            # Answering NONE would make the client resend the same protocol (avsc does so
            # forever). Say the protocol was received, and why it cannot be used.
            return (self._handshake_response(handshake, client_known=True)
                    + self._system_error(f"Invalid client protocol: {e}"))
        if client_protocol is None:
            # NONE: the client must resend with its protocol; no call response follows.
            return self._handshake_response(handshake, client_known=False)
        return (self._handshake_response(handshake, client_known=True)
                + self._call_response(client_protocol, decoder))

    def _client_protocol(self, handshake: dict) -> Optional[avro.protocol.Protocol]:
        client_hash = handshake["clientHash"]
        protocol = self.get_protocol_cache(client_hash)
        text = handshake.get("clientProtocol")
        if protocol is None and text is not None:
            protocol = avro.protocol.parse(text)
            if hashlib.md5(text.encode()).digest() == client_hash:
                self.set_protocol_cache(client_hash, protocol)
        return protocol

    def _handshake_response(self, handshake: dict, client_known: bool) -> bytes:
        if not client_known:
            response = {"match": "NONE"}
        elif handshake["serverHash"] == self.local_hash:
            response = {"match": "BOTH"}
        else:
            response = {"match": "CLIENT"}
        if response["match"] != "BOTH":
            response["serverProtocol"] = str(self.local_protocol)
            response["serverHash"] = self.local_hash
        return self._encode(avro.ipc.HANDSHAKE_RESPONDER_WRITER.write, response)

    def _call_response(self, client_protocol: avro.protocol.Protocol,
                       decoder: avro.io.BinaryDecoder) -> bytes:
        try:
            avro.ipc.META_READER.read(decoder)
            name = decoder.read_utf8()
        except DECODING_ERRORS as e:
            return self._system_error(f"Invalid call request: {e}")
        if name == "":
            return b""  # a ping: the handshake alone is the answer
        remote_message = client_protocol.messages.get(name)
        local_message = self.local_protocol.messages.get(name)
        if remote_message is None or local_message is None:
            return self._system_error(f"Unknown message: {name}")
        try:
            request = self.read_request(remote_message.request, local_message.request, decoder)
        except DECODING_ERRORS as e:
            return self._system_error(f"Invalid parameters for {name}: {e}")

        try:
            response = self.invoke(local_message, request)
            return self._encode(self._write_ok, local_message.response, response)
        except avro.errors.AvroRemoteException as e:
            return self._encode(self._write_error, local_message.errors, e)
        except Exception:
            log.exception("handler for %r failed", name)
            return self._system_error(f"Internal error in {name}")

    def _write_ok(self, schema, datum, encoder) -> None:
        avro.ipc.META_WRITER.write({}, encoder)
        encoder.write_boolean(False)
        self.write_response(schema, datum, encoder)

    def _write_error(self, schema, error, encoder) -> None:
        avro.ipc.META_WRITER.write({}, encoder)
        encoder.write_boolean(True)
        self.write_error(schema, error, encoder)

    def _system_error(self, message: str) -> bytes:
        return self._encode(self._write_error, avro.ipc.SYSTEM_ERROR_SCHEMA, message)

    @staticmethod
    def _encode(write: Callable, *args) -> bytes:
        buffer = io.BytesIO()
        write(*args, avro.io.BinaryEncoder(buffer))
        return buffer.getvalue()


class EchoResponder(FixedResponder):
    """Answers AvroEcho calls: each message `name` is handled by `handle_<name>`."""

    def __init__(self) -> None:
        super().__init__(EchoProtocol)

    def invoke(self, message, request: dict) -> object:
        handler = getattr(self, f"handle_{message.name}", None)
        if handler is None:
            raise avro.errors.AvroRemoteException(f"Not implemented: {message.name}")
        return handler(**request)

    def handle_echo(self, query: str) -> str:
        return query

    def handle_split(self, query: str) -> str:
        return query[: len(query) // 2]


def make_application(responder: Optional[avro.ipc.Responder] = None,
                     max_body_bytes: int = MAX_BODY_BYTES) -> Callable:
    """Return a WSGI application that answers Avro calls POSTed to any path."""
    responder = responder or EchoResponder()

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST":
            return _plain(start_response, "405 Method Not Allowed",
                          "Avro calls must be POSTed", [("Allow", "POST")])
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type and content_type.split(";")[0].strip().lower() != "avro/binary":
            return _plain(start_response, "415 Unsupported Media Type",
                          "Content-Type must be avro/binary")
        try:
            body = _read_body(environ, max_body_bytes)
        except BodyTooLarge:
            # The rest of the body is not wanted: ask the client to close the connection.
            return _plain(start_response, "413 Content Too Large",
                          f"Body is larger than {max_body_bytes} bytes", [("Connection", "close")])
        except (OSError, ValueError):  # the client stalled, hung up, or broke the chunking
            return _plain(start_response, "400 Bad Request", "Body could not be read",
                          [("Connection", "close")])
        try:
            call_request = _unframe(body)
            call_response = responder.respond(call_request)
        except BadRequest as e:
            return _plain(start_response, "400 Bad Request", f"Bad Avro request: {e}")
        out = io.BytesIO()
        avro.ipc.FramedWriter(out).write_framed_message(call_response)
        payload = out.getvalue()
        start_response("200 OK", [("Content-Type", "avro/binary"),
                                  ("Content-Length", str(len(payload)))])
        return [payload]

    return application


def _read_body(environ: dict, limit: int) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        if int(length) > limit:  # refuse before reading a byte of it
            raise BodyTooLarge()
        return stream.read(int(length))
    body = stream.read(limit + 1)  # chunked: the server decodes it; stop one past the limit
    if len(body) > limit:
        raise BodyTooLarge()
    return body


def _unframe(body: bytes) -> bytes:
    """The message inside an Avro-framed body (length-prefixed frames, then a 0 frame)."""
    if not body:
        raise BadRequest("empty body")
    try:
        return avro.ipc.FramedReader(io.BytesIO(body)).read_framed_message()
    except (avro.errors.ConnectionClosedException, struct.error) as e:
        raise BadRequest("body ends inside a frame or before the end-of-message frame") from e


def _plain(start_response: Callable, status: str, reason: str,
           headers: Iterable = ()) -> list:
    body = (reason + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body))), *headers])
    return [body]


application = make_application()


def listen(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> socket.socket:
    """Bind and listen. Port 0 picks a free port; a port in use is an error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # eventlet sets SO_REUSEPORT by default, which would let a second server bind the same
    # port silently and take half the calls. Here a busy port is an error.
    return eventlet.listen((host, port), family, backlog=LISTEN_BACKLOG, reuse_port=False)


def serve(listener: socket.socket, app: Callable = application,
          socket_timeout: float = SOCKET_TIMEOUT, access_log: bool = False) -> None:
    """Serve app on listener until the accept loop is interrupted, then drain."""
    # eventlet.wsgi logs its own start-up and exit lines at INFO, next to the access log.
    access = logging.getLogger("server.access")
    access.setLevel(logging.INFO if access_log else logging.WARNING)
    eventlet.wsgi.server(
        listener, app,
        log=access,
        log_output=access_log,
        debug=False,  # True (eventlet's default) sends tracebacks to clients
        socket_timeout=socket_timeout,
    )


def stop_gracefully_on(*signums: int) -> None:
    """On these signals, stop accepting, answer the calls in flight, then return from serve().

    A second signal stops at once, with exit status 1.
    """
    serving = greenlet.getcurrent()
    # A Python signal handler runs in whichever green thread the signal interrupts, where
    # raising would kill a call in flight, and it does not wake eventlet's hub. So let Python
    # write the signal to a socket instead; a green thread reads it, and asks the hub to
    # interrupt the green thread that serves. eventlet.wsgi then stops accepting, closes idle
    # connections and waits for the active ones.
    wakeup, wakeup_writer = socket.socketpair()
    signal.set_wakeup_fd(wakeup_writer.fileno())

    def watch() -> None:
        with wakeup, wakeup_writer:  # both stay open while this green thread lives
            wakeup.recv(1)
            log.info("stopping: answering the calls in flight")
            eventlet.hubs.get_hub().schedule_call_global(0, serving.throw, SystemExit)
            wakeup.recv(1)
            log.warning("stopping now, without waiting for the calls in flight")
            eventlet.hubs.get_hub().schedule_call_global(0, serving.throw, SystemExit(1))

    eventlet.spawn_n(watch)
    for signum in signums:
        signal.signal(signum, lambda signum, frame: None)  # the wakeup socket does the work


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the AvroEcho protocol over HTTP.")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="port to listen on, 0 for any free port (default: %(default)s)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                        help="larger request bodies get 413 (default: %(default)s)")
    parser.add_argument("--access-log", action="store_true",
                        help="log one line per request")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        listener = listen(args.host, args.port)
    except OSError as e:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, e.strerror or e)
        return 1
    host, port = listener.getsockname()[:2]
    log.info("AvroEcho server listening on http://%s:%d/", host, port)
    stop_gracefully_on(signal.SIGINT, signal.SIGTERM)
    serve(listener, make_application(max_body_bytes=args.max_body_bytes),
          access_log=args.access_log)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
