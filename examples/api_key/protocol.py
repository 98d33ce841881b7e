"""The Notes protocol: the contract shared by examples/api_key/server.py and client.py.

Each message declares AccessDenied, the error that a server refuses a call with when it
comes without a known API key. Try it: `python examples/api_key/protocol.py` prints it.
"""

PROTOCOL_JSON = """\
{
  "protocol": "Notes",
  "namespace": "example.api_key",
  "doc": "Notes kept for each holder of an API key, which every call sends in its metadata.",
  "types": [
    {"type": "error", "name": "AccessDenied", "fields": [{"name": "reason", "type": "string"}]}
  ],
  "messages": {
    "add": {
      "doc": "Add a note; the answer is how many notes the caller now has.",
      "request": [{"name": "text", "type": "string"}],
      "response": "int",
      "errors": ["AccessDenied"]
    },
    "notes": {
      "doc": "The caller's notes, oldest first.",
      "request": [],
      "response": {"type": "array", "items": "string"},
      "errors": ["AccessDenied"]
    }
  }
}
"""

if __name__ == "__main__":
    print(PROTOCOL_JSON, end="")
