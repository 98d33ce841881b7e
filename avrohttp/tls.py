"""The TLS files of either end of a call, each loaded with a one-line error that names the file
at fault: a certificate and its key (the server's, or a client's for mutual TLS), and the
certificate authorities to trust (a server's --client-ca).

avrohttp.hosting loads the server's (tls_context), avrohttp.client's options_from and
`python -m avrohttp call` and `describe` (avrohttp.tools) a client's. This module imports
nothing else of the package.
"""

import ssl


class BadTLSFile(Exception):
    """A certificate, key or certificate authority file is missing, unreadable, or not what
    it should be: the message says which, and why."""


def load_certificate(context: ssl.SSLContext, certfile: str, keyfile: str) -> None:
    """Have the context present this certificate (chain) with this key, both PEM files."""
    for path in (certfile, keyfile):  # load_cert_chain would not say which one is missing
        readable(path)

    def no_password() -> bytes:  # OpenSSL would otherwise ask for one on the terminal
        raise BadTLSFile(f"{keyfile} is protected by a password: give a key without one")

    try:
        context.load_cert_chain(certfile, keyfile, password=no_password)
    except ssl.SSLError as e:  # OpenSSL's reason, if it has one: KEY_VALUES_MISMATCH, say
        raise BadTLSFile(f"{certfile} and {keyfile} are not a PEM certificate and its key "
                         f"({e.reason or 'bad PEM data'})") from e


def trust(context: ssl.SSLContext, cafile: str) -> None:
    """Have the context trust the certificate authorities in this PEM file."""
    readable(cafile)
    try:
        context.load_verify_locations(cafile=cafile)
    except ssl.SSLError as e:  # NO_CERTIFICATE_OR_CRL_FOUND, say
        raise BadTLSFile(f"{cafile} holds no PEM certificate ({e.reason or 'bad PEM data'})"
                         ) from e


def readable(path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise BadTLSFile(f"cannot read {path}: {e.strerror}") from e
