"""Reading a request's headers: the standard library's headers, at a fraction of its cost.

http.server, under eventlet.wsgi, reads each request's headers with the email package
(http.client.parse_headers), which is built for mail. For the few short headers of an RPC
call that is a quarter of the CPU time of a whole request. parse_headers here builds the
message itself when every line is a plain `Name: value` line, and hands any other block (a
folded line, a line without a colon, a stray CR) to the standard library whole, so that what
is unusual is read exactly as before. tests/avrohttp/test_headers.py holds the two to the
same headers, the same errors and the same bytes left unread, on generated header blocks.
(The message's body and its list of defects, which neither http.server nor eventlet reads,
are left empty.)
"""

import email.parser
import http.client
import http.server
import re
import types
from typing import BinaryIO

# A header line the email parser reads plainly: a name of printable ASCII but ':' (the
# parser's own rule), the colon, the value without its leading blanks, then the line's end.
# The value has no CR or LF: the email parser would break the line there.
_PLAIN = re.compile(rb"([!-9;-~]+):[ \t]*([^\r\n]*)\r?\n?")


def parse_headers(fp: BinaryIO, _class=http.client.HTTPMessage) -> http.client.HTTPMessage:
    """http.client.parse_headers(fp, _class): the same headers, the same errors."""
    # The standard library's reading, with its limits: 65,536 bytes a line and 100 lines.
    # The last line is the blank one that ends the headers (or b"" at the end of the stream).
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # private: no stub
    message = _class()
    for line in lines[:-1]:
        plain = _PLAIN.fullmatch(line)
        if plain is None:
            return email.parser.Parser(_class=_class).parsestr(
                b"".join(lines).decode("iso-8859-1"))
        name, value = plain.groups()
        message.set_raw(name.decode("ascii"), value.decode("iso-8859-1"))
    return message


# http.server's own parse_request, unchanged, but that the `http.client.parse_headers` it
# calls is the one above: its code, run with http.server's globals but for `http`, where it
# finds http.client. It uses three names of http.client: parse_headers, and the two errors
# it catches. A request handler takes it as its parse_request (avrohttp.eventlet_protocol's
# HTTPProtocol does); http.client and http.server stay as they are for everyone else.
_http_with_fast_headers = types.SimpleNamespace(client=types.SimpleNamespace(
    parse_headers=parse_headers,
    LineTooLong=http.client.LineTooLong,
    HTTPException=http.client.HTTPException))
parse_request = types.FunctionType(
    http.server.BaseHTTPRequestHandler.parse_request.__code__,
    {**vars(http.server), "http": _http_with_fast_headers}, "parse_request")
