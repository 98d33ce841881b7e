"""What each extra of the package (pyproject.toml) brings, and the one line that says which to
install when it is missing.

`pip install avrohttp` brings avro alone: enough for the clients, the Responder, the WSGI and
ASGI applications and `python -m avrohttp describe` and `call`. A part that needs more imports
it only where it is needed, and without it raises MissingExtra, whose message is one line.
Without eventlet, require("eventlet") raises

    MissingExtra: the eventlet host needs eventlet: pip install 'avrohttp[eventlet]'

This module imports nothing else of the package.
"""

import importlib.util
from typing import Dict, Tuple

# Each extra: the part of avrohttp that needs it, and the modules it brings that avrohttp
# imports. The hosts' extras are named as their --loop.
EXTRAS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "eventlet": ("the eventlet host", ("eventlet",)),
    "asyncio": ("the asyncio host", ("uvicorn", "httptools", "uvloop")),
    "metrics": ("avrohttp.metrics (--metrics)", ("prometheus_client",)),
    "tracing": ("avrohttp.tracing", ("opentelemetry.trace",)),
}


class MissingExtra(ModuleNotFoundError):
    """A part of avrohttp needs a module that only one of its extras installs: the message
    says which, in one line."""


def require(extra: str) -> None:
    """Raise MissingExtra unless every module that `extra` brings is installed (found, not
    imported: eventlet, say, is imported only once the program has chosen it)."""
    for module in EXTRAS[extra][1]:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its package is missing: opentelemetry, for .trace
            found = False
        if not found:
            raise _missing(extra, module)


def missing(extra: str, error: ModuleNotFoundError) -> ModuleNotFoundError:
    """What to raise for an import of a module of `extra` that failed with `error`:
    MissingExtra if the module missing is one that the extra brings, else `error` itself (a
    module that the extra's own packages need, which is theirs to say)."""
    for module in EXTRAS[extra][1]:
        if error.name is not None and (module == error.name
                                       or module.startswith(f"{error.name}.")):
            return _missing(extra, module)
    return error


def _missing(extra: str, module: str) -> MissingExtra:
    part = EXTRAS[extra][0]
    return MissingExtra(f"{part} needs {module}: pip install 'avrohttp[{extra}]'",
                        name=module)
