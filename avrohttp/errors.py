"""The Avro errors of a call, as Client.call raises them and as a handler may raise them.

A message's errors are a union: "string" first, for the server's system errors, then the
error types that the message declares. avro.ipc raises both as avro.errors.AvroRemoteException,
and a caller cannot tell which branch came back. Here each has its own subclass of it, so
that code written for avro.ipc (`except AvroRemoteException`) keeps working.
"""

import avro.errors


class DeclaredError(avro.errors.AvroRemoteException):
    """One of the error types the message declares: `name` is the type's name, `datum` its
    value (a dict, for an error record), which is also args[0], as with avro.ipc.

    A handler raises it to answer with that branch of the errors union:
    `raise DeclaredError("OutOfStock", {"item": "widget", "left": 0})`.
    """

    def __init__(self, name: str, datum: object) -> None:
        super().__init__(datum)
        self.name = name
        self.datum = datum

    def __str__(self) -> str:
        return f"{self.name}: {self.datum}"


class RemoteSystemError(avro.errors.AvroRemoteException):
    """The server's system error (the "string" branch of the errors union): an unknown
    message, bad parameters, a failed handler, or a handler that raised a plain string.
    `message` is the server's words, which are also args[0]."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HandlersMismatch(TypeError):
    """A Responder whose handle_<name> methods do not match its protocol's messages: a message
    without one, or one for no message (a typo). Raised when the responder is made, naming
    each; a subclass that overrides invoke() dispatches its own way and is not checked."""
