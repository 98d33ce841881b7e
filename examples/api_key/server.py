"""A Notes server (examples/api_key/protocol.py) that answers only the callers that send a
known API key, under `api-key` in the call metadata.

The check is a call hook, RequireApiKey: its before() runs ahead of every handler and
refuses a call without a known key with AccessDenied, the error that each message
declares, so no handler ever runs for it. Then the handler asks for its call
(avrohttp.current_call()) to learn whose key it is.

Try it: `python examples/api_key/server.py`, then `python examples/api_key/client.py` in
another terminal. The keys come from the file that API_KEYS_FILE names, one `name key` per
line; without it, the server takes the demo key below, and says so. It takes the same
options as server.py (`--help`).
"""

if __name__ == "__main__":
    import sys
    from pathlib import Path

    # Run as a script, Python puts this directory first on sys.path: the repository's top
    # directory is where avrohttp and examples are.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import collections  # noqa: E402 (here and below: after the sys.path of a script)
import hmac  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
from typing import Dict, List, Optional  # noqa: E402

import avrohttp  # noqa: E402
from avrohttp import cli  # noqa: E402
from examples.api_key.protocol import PROTOCOL_JSON  # noqa: E402

# For trying the example only: this key is in the repository, so it is no secret. A server
# with real keys reads them from the file that API_KEYS_FILE names.
DEMO_KEYS = {"demo": b"demo-key-not-a-secret"}
KEYS_FILE_ENV = "API_KEYS_FILE"

# Its lines come before the server's own, at start-up, as Python writes a warning when
# logging is not set up yet: the message alone, on stderr.
log = logging.getLogger("examples.api_key")


def read_keys(path: str) -> Dict[str, bytes]:
    """The keys of a file, by their holder's name: one `name key` per line; blank lines and
    lines that start with # are skipped. ValueError if the file cannot be read, or if a
    line is neither."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    keys = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, key = line.strip().partition(" ")
        if not key.strip():
            raise ValueError(f"{path}, line {number}: not `name key`")
        keys[name] = key.strip().encode()
    if not keys:
        raise ValueError(f"{path} holds no keys")
    return keys


class ApiKeys:
    """Who holds each key."""

    def __init__(self, keys: Dict[str, bytes]) -> None:
        self.keys = keys

    def holder(self, key: Optional[bytes]) -> Optional[str]:
        """The name of the key's holder, or None for an unknown key (or none)."""
        found = None
        for name, known in self.keys.items():
            # compare_digest takes as long whatever the bytes that match, so that a caller
            # cannot guess a key byte by byte from how long a refusal takes.
            if key is not None and hmac.compare_digest(key, known):
                found = name
        return found


class RequireApiKey(avrohttp.CallHook):
    """Refuses every call without a known key under `api-key` in its call metadata."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    def before(self, call: avrohttp.Call) -> None:
        key = call.request_meta.get("api-key")
        if key is None:
            raise avrohttp.DeclaredError("AccessDenied", {"reason": "no api-key was sent"})
        if self.keys.holder(key) is None:
            raise avrohttp.DeclaredError("AccessDenied", {"reason": "unknown api-key"})


class NotesResponder(avrohttp.Responder):
    """Answers Notes calls, each caller with its own notes."""

    def __init__(self, keys: ApiKeys) -> None:
        super().__init__(PROTOCOL_JSON, call_hooks=[RequireApiKey(keys)])
        self.keys = keys
        self.notes = collections.defaultdict(list)

    def caller(self) -> str:
        """The holder of the call's key: RequireApiKey has let only known keys through."""
        return self.keys.holder(avrohttp.current_call().request_meta["api-key"])

    def handle_add(self, text: str) -> int:
        notes = self.notes[self.caller()]
        notes.append(text)
        return len(notes)

    def handle_notes(self) -> List[str]:
        return self.notes[self.caller()]


def load_keys() -> ApiKeys:
    """The keys of the file that API_KEYS_FILE names; without it, the demo key."""
    path = os.environ.get(KEYS_FILE_ENV)
    if path is None:
        log.warning("no %s: serving with the demo key, which is no secret", KEYS_FILE_ENV)
        return ApiKeys(DEMO_KEYS)
    return ApiKeys(read_keys(path))


def main(argv: Optional[List[str]] = None) -> int:
    try:
        keys = load_keys()
    except ValueError as e:  # a file that cannot be read, or a bad line
        log.error("cannot serve: %s: %s", KEYS_FILE_ENV, e)
        return 1
    return cli.main(lambda: NotesResponder(keys), argv)


if __name__ == "__main__":
    raise SystemExit(main())
