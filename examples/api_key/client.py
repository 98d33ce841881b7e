"""A client for the Notes server: it sends its API key with every call, from a call hook,
adds a note, and prints the caller's notes.

Try it, with the server running: `python examples/api_key/client.py "Buy milk"`. The key
comes from API_KEY in the environment; without it, the client sends the demo key that the
server takes when it has no keys of its own (`--help` for the other options).
"""

if __name__ == "__main__":
    import sys
    from pathlib import Path

    # Run as a script, Python puts this directory first on sys.path: the repository's top
    # directory is where avrohttp and examples are.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse  # noqa: E402 (here and below: after the sys.path of a script)
import os  # noqa: E402
import sys  # noqa: E402
from typing import List, Optional  # noqa: E402

import avrohttp  # noqa: E402
import avrohttp.client  # noqa: E402
from examples.api_key.protocol import PROTOCOL_JSON  # noqa: E402

# The demo key of examples/api_key/server.py, for trying the example only: no secret.
DEMO_KEY = "demo-key-not-a-secret"


class SendApiKey(avrohttp.CallHook):
    """Puts the API key into every call's metadata, under `api-key`."""

    def __init__(self, key: str) -> None:
        self.key = key.encode()

    def before(self, call: avrohttp.Call) -> None:
        call.request_meta["api-key"] = self.key


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Add a note on a Notes server, and list them.")
    parser.add_argument("text", nargs="?", default="Buy milk",
                        help="the note (default: %(default)s)")
    avrohttp.client.add_arguments(parser)  # --host, --port, the timeouts and TLS
    args = parser.parse_args(argv)
    key = os.environ.get("API_KEY", DEMO_KEY)  # not an option: the command line is no secret
    with avrohttp.Client(PROTOCOL_JSON, **avrohttp.client.options_from(args, parser),
                         call_hooks=[SendApiKey(key)]) as notes:
        try:
            count = notes.call("add", text=args.text)
            print(f"Added a note: you have {count}.")
            for text in notes.call("notes"):
                print(f"- {text}")
        except avrohttp.DeclaredError as e:  # AccessDenied, the one error each message declares
            print(f"error: access denied: {e.datum['reason']}", file=sys.stderr)
            return 1
        except (avrohttp.CallFailed, avrohttp.RemoteSystemError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
