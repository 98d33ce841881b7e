"""The AvroEcho protocol: the contract shared by server.py and client.py.

Try it: `python protocol.py` prints the protocol as JSON, for clients in other languages.
"""

import avrohttp

# The original 2010 protocol declared `"errors": ["string"]` on each message. Every Avro
# errors union already starts with "string" (it carries system errors), so avro 1.12 and
# avsc both reject that declaration ("string type already in Union"). With no errors
# declared, the effective union is ["string"], which is what the original meant.
PROTOCOL_JSON = """\
{
  "protocol": "AvroEcho",
  "namespace": "rpc.sample.echo",
  "doc": "Protocol for our Avro echo server.",
  "types": [],
  "messages": {
    "echo": {
      "doc": "Echo the query back unchanged.",
      "request": [{"name": "query", "type": "string"}],
      "response": "string"
    },
    "split": {
      "doc": "Echo back the first half of the query, counted in characters.",
      "request": [{"name": "query", "type": "string"}],
      "response": "string"
    }
  }
}
"""

# Parsed by avrohttp, which keeps the text as written: the server's handshake then sends the
# docs too (avro.protocol.parse would rebuild the JSON without them).
EchoProtocol = avrohttp.parse_protocol(PROTOCOL_JSON)


def main() -> int:
    print(PROTOCOL_JSON, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
