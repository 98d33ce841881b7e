"""What both clients (avrohttp.Client and avrohttp.AsyncClient) hold a call's answer to: what
an answer must be to be read, which failures a call is sent again after, and the words of
each CallFailed. avrohttp.client imports them all, and they are importable from there too.
"""

import http.client
import re
import select
import socket
import ssl
from typing import Optional

import avro.errors

from avrohttp import codec

# The longest answer the client reads. avrohttp.wsgi takes bodies of at most 1 MiB by default
# (MAX_BODY_BYTES); this leaves room for a server that takes more, or answers with more, and
# keeps a broken or hostile server from filling the client's memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

# A kept-alive connection that the server has closed (idle too long, or restarted) fails
# with one of these when the next request is sent on it, before any answer comes back.
# http.client.RemoteDisconnected is a ConnectionResetError; over TLS, writing to a closed
# connection raises ssl.SSLEOFError, or SSLZeroReturnError if the server said goodbye.
_CLOSED_BY_SERVER = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
                     ssl.SSLEOFError, ssl.SSLZeroReturnError)
# The server closed the connection before it answered the call (the three ways it shows are
# in describe()).
_CLOSED_WITHOUT_ANSWER = (BrokenPipeError, ConnectionResetError)
# What a call's transport can fail with; call() turns each into a CallFailed (failure()).
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, avro.errors.ConnectionClosedException)


class CallFailed(Exception):
    """The server could not be reached, or did not answer with an Avro response."""


class NoAnswerInTime(TimeoutError):
    """The call went out, but its answer did not come within the timeout."""


class DeadlineExceeded(CallFailed):
    """A call made inside a handler ran out of the time its handler's caller had left: it
    was not sent, as no time was left, or its answer did not come in the time left."""


def resend(error: BaseException, retry: bool) -> bool:
    """Whether a call whose request failed with `error` on a kept-alive connection, before
    any answer came, is sent once more on a new connection: with retry, if the server had
    closed the connection.

    The server closed this kept-alive connection before the call reached it, or while it ran.
    Sending the same call again is safe only for idempotent messages (echo computes an answer
    and changes nothing, so running it twice does no harm); a message with side effects (a
    payment, say) could run twice, so retry is off unless the caller asks. Never retried (the
    transports ask only about a connection that had answered before, and once per call): a
    failure on a new connection (the server is down, or refuses the call), a second failure,
    and a timeout (the server may still be working on the call, and a copy of it would only
    add to its load).
    """
    return retry and isinstance(error, _CLOSED_BY_SERVER)


# Of an answer that is not Avro, how many bytes of its body a CallFailed quotes.
NOT_AVRO_BYTES = 200


def is_avro_answer(status: int, content_type: str) -> bool:
    """Whether an answer with this status and Content-Type carries an Avro response."""
    return status == 200 and content_type.split(";")[0] == "avro/binary"


def not_avro(status: int, reason: str, body_start: bytes) -> CallFailed:
    """The CallFailed of an answer that is not Avro, quoting the start of its body."""
    quoted = body_start[:NOT_AVRO_BYTES].decode("utf-8", "replace").strip()
    return CallFailed(f"server answered {status} {reason}: {quoted}")


def unframe_answer(body: bytes) -> bytes:
    """The Avro message in an answer's body, read up to one byte over MAX_ANSWER_BYTES;
    CallFailed if it is over, or not framed as Avro frames."""
    if len(body) > MAX_ANSWER_BYTES:
        raise CallFailed(f"server answered with more than {MAX_ANSWER_BYTES} bytes")
    try:
        return codec.unframe(body)
    except codec.BadFraming as e:
        raise CallFailed(f"server answered with a broken Avro body: {e}") from e


def failure(error: Exception, address: tuple, tls: bool, answered: bool = False) -> CallFailed:
    """The CallFailed for a call whose transport failed with `error` (TRANSPORT_ERRORS).

    answered: whether the call was sent on a kept-alive connection, one that had answered
    calls before. The server was reached then, in the same protocol: a server that closes
    that connection is stopping, or restarting, or let it go, and HTTP against an HTTPS
    server is not why.
    """
    host, port = address
    if isinstance(error, NoAnswerInTime):  # the server was reached: it is slow, or stuck
        return CallFailed(f"the server at {host}:{port} sent {error}")
    if answered and isinstance(error, _CLOSED_WITHOUT_ANSWER):
        return CallFailed(f"the server at {host}:{port} closed the connection before answering")
    # Still "cannot reach" after a kept-alive connection: the retry's new one can fail too.
    return CallFailed(f"cannot reach the server at {host}:{port}: "
                      f"{describe(error, tls, answered)}")


def describe(error: Exception, tls: bool, answered: bool = False) -> str:
    """What went wrong, in words, without OpenSSL's source locations; with a hint to call
    with TLS where a plain call to an HTTPS server could be why (not with `tls`, nor on a
    connection that had `answered` before: see failure())."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"its TLS certificate is not trusted ({error.verify_message})"
    # Mutual TLS: a server that wants a client certificate refuses a client without one, or
    # with one that it does not trust, in a TLS alert; under TLS 1.3, the client reads the
    # alert only once its call is sent, while it waits for the answer. The asyncio host sends
    # none (uvloop drops it): it hangs up.
    if isinstance(error, ssl.SSLError) and "_ALERT_" in (error.reason or ""):
        alert = error.reason.partition("_ALERT_")[2].lower().replace("_", " ")
        if alert == "certificate required":  # TLSV13_ALERT_CERTIFICATE_REQUIRED
            return "the server wants a client certificate (mutual TLS), and this client gave none"
        if "certificate" in alert or alert in ("unknown ca", "access denied"):
            return f"the server refused this client's TLS certificate ({alert})"
        if alert == "handshake failure":  # what TLS 1.2 says to a client without one
            return ("the server refused the TLS handshake (if it wants a client certificate, "
                    "give one that it trusts)")
    if tls and not answered and isinstance(error, (ssl.SSLEOFError, BrokenPipeError,
                                                   ConnectionResetError)):
        return ("the server closed the connection without an answer (if it wants a client "
                "certificate, give one that it trusts)")
    if isinstance(error, ssl.SSLEOFError):  # cut off in the middle of TLS
        return "the server closed the connection without an answer"
    if isinstance(error, ssl.SSLError):
        if error.reason == "WRONG_VERSION_NUMBER":  # the server's first bytes are not TLS
            return "TLS failed: the server does not speak TLS here"
        return "TLS failed: " + re.sub(r" \(_ssl\.c:\d+\)", "", error.strerror or str(error))
    # What a server that expects TLS does with plain HTTP: it hangs up, or sends a TLS alert.
    hint = "" if tls or answered else " (if the server serves HTTPS, call it with TLS)"
    # The three ways the same thing shows, by when it happens: the server closed the
    # connection while the call was being sent (BrokenPipe, ConnectionReset), or before any
    # answer came (RemoteDisconnected, itself a ConnectionResetError).
    if isinstance(error, _CLOSED_WITHOUT_ANSWER):
        return f"the server closed the connection without an answer{hint}"
    if isinstance(error, http.client.BadStatusLine):
        return f"the answer is not HTTP{hint}"
    return str(error)


def poller_of(sock: socket.socket) -> Optional["select.poll"]:
    """A poll object for closed_while_idle, made once per connection (half its cost), or
    None where select has no poll (eventlet's green select, in a patched program)."""
    poll = getattr(select, "poll", None)
    if poll is None or sock.fileno() < 0:
        return None
    poller = poll()
    poller.register(sock, select.POLLIN)
    return poller


def closed_while_idle(sock: socket.socket, poller: Optional["select.poll"] = None) -> bool:
    """Whether a kept-alive connection, idle since its last answer, has been closed by the
    server (or broken): an idle server sends nothing, so anything to read says so. A socket
    closed in this process has nothing to poll: the call's send says what is wrong.
    poller: poller_of(sock), if the caller keeps one."""
    if sock.fileno() < 0:
        return False
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    if poller is None:
        poller = poller_of(sock)
        if poller is None:
            return bool(select.select([sock], [], [], 0)[0])
    return bool(poller.poll(0))


def not_sent(message: str) -> "DeadlineExceeded":
    """The DeadlineExceeded of a call made inside a handler whose caller's time had run out:
    it was not sent."""
    return DeadlineExceeded(f"{message} was not sent: its caller's deadline has passed")


def no_answer_in_time_left(address: tuple, message: str, left: float) -> "DeadlineExceeded":
    """The DeadlineExceeded of a call made inside a handler whose answer did not come within
    the time its caller had left."""
    host, port = address
    return DeadlineExceeded(f"the server at {host}:{port} did not answer {message} within the "
                            f"time its caller had left ({left:.3g} s)")
