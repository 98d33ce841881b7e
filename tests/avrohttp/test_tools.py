"""`python -m avrohttp` describe and call (avrohttp.tools, avrohttp.avro_json): against our
server on each host and against an avsc server, each outcome with its exit status; and the
commands of docs/running.md as shown. serve MODULE:ATTR is test_tools_serve.py's."""

import contextlib
import json
import re
import shlex
import socket
import subprocess
import sys
import threading

import pytest
import trustme

import avrohttp
import server
from avrohttp import avro_json, tools
from avsc_peer import AvscPeer
from conftest import ROOT, free_port, serving
from examples.shop import server as shop_server
from examples.shop.protocol import PROTOCOL_JSON
from protocols import decode, encode

SHOP = avrohttp.parse_protocol(PROTOCOL_JSON)

# A protocol whose one message takes a record with each kind of value that JSON cannot carry
# as it is (bytes, fixed, a union, an enum, a map), and answers it back.
KINDS_JSON = """{
  "protocol": "Kinds", "namespace": "test.tools",
  "types": [
    {"type": "enum", "name": "Size", "symbols": ["SMALL", "LARGE"]},
    {"type": "fixed", "name": "Id", "size": 4},
    {"type": "record", "name": "Entry", "fields": [
      {"name": "key", "type": "string"},
      {"name": "value", "type": "bytes"},
      {"name": "id", "type": "Id"},
      {"name": "size", "type": "Size"},
      {"name": "counts", "type": {"type": "map", "values": "long"}},
      {"name": "note", "type": ["null", "string", "Size"], "default": null},
      {"name": "ratio", "type": "double"}
    ]}
  ],
  "messages": {
    "store": {"request": [{"name": "entry", "type": "Entry"}], "response": "Entry"}
  }
}"""
KINDS = avrohttp.parse_protocol(KINDS_JSON)
ENTRY_JSON = {"key": "k", "value": "\u0000\u00ffA", "id": "\u0001\u0002\u0003\u0004",
              "size": "LARGE", "counts": {"a": 1}, "note": {"string": "hi"}, "ratio": "NaN"}
ENTRY = {"key": "k", "value": b"\x00\xffA", "id": b"\x01\x02\x03\x04", "size": "LARGE",
         "counts": {"a": 1}, "note": "hi", "ratio": float("nan")}


class KindsResponder(avrohttp.Responder):
    def __init__(self) -> None:
        super().__init__(KINDS_JSON)

    def handle_store(self, entry: dict) -> dict:
        return entry


def tool(capsys, *args: str) -> tuple:
    """Run `python -m avrohttp ARGS` in this process: (exit status, stdout, stderr)."""
    status = tools.main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def answer(capsys, url: str, *args: str) -> object:
    """The JSON that `call URL ARGS` prints, which must exit 0."""
    status, out, err = tool(capsys, "call", url, *args)
    assert (status, err) == (0, "")
    return json.loads(out)


def url_of(address) -> str:
    return f"http://{address[0]}:{address[1]}/"


# --- describe and call: our server ------------------------------------------------------------

@pytest.fixture
def shop_url(host):
    with serving(shop_server.ShopResponder(), host) as address:
        yield url_of(address)


def test_describe_prints_the_protocol_as_the_server_sent_it(capsys, shop_url):
    status, out, err = tool(capsys, "describe", shop_url)
    assert (status, err) == (0, "")
    assert out == json.dumps(json.loads(PROTOCOL_JSON), indent=2) + "\n"  # docs, one-way kept


def test_call_prints_a_record_in_avros_json_encoding(capsys, shop_url):
    assert answer(capsys, shop_url, "item", '{"sku": "sock"}') == {
        "sku": "sock", "name": "Wool sock", "price_cents": 650,
        "sizes": ["SMALL", "MEDIUM", "LARGE"], "discount_percent": {"int": 10}, "photo": ""}


def test_call_with_a_map_and_an_answer_with_fixed(capsys, shop_url):
    order = answer(capsys, shop_url, "order", '{"quantities": {"boot": 1, "sock": 2}}')
    assert order["quantities"] == {"boot": 1, "sock": 2}
    assert order["total_cents"] == 8900 + 2 * 650 * 90 // 100
    assert len(order["id"]) == 16 and max(map(ord, order["id"])) < 256


def test_a_declared_error_is_json_on_stdout_with_status_3(capsys, shop_url):
    status, out, err = tool(capsys, "call", shop_url, "item", '{"sku": "hat"}')
    assert (status, json.loads(out), err) == (3, {"example.shop.UnknownItem": {"sku": "hat"}}, "")


def test_a_system_error_is_one_line_on_stderr_with_status_4(capsys, shop_url):
    status, out, err = tool(capsys, "call", shop_url, "order", '{"quantities": {"boot": 0}}')
    assert (status, out) == (4, "")
    assert err == ("python -m avrohttp call: system error: an order needs quantities of 1 or "
                   "more\n")


def test_a_one_way_message_prints_null(capsys, shop_url):
    assert answer(capsys, shop_url, "visit", '{"page": "home"}') is None
    assert answer(capsys, shop_url, "visits") == {"home": 1}  # JSON may be left out: {}


def test_record_enum_map_bytes_fixed_and_union_parameters(capsys, host):
    with serving(KindsResponder(), host) as address:
        stored = answer(capsys, url_of(address), "store", json.dumps({"entry": ENTRY_JSON}))
        # A union's value may be given plain, where one branch alone fits it.
        plain = answer(capsys, url_of(address), "store",
                       json.dumps({"entry": {**ENTRY_JSON, "note": "hello", "ratio": 2}}))
        # A field with a default may be left out.
        without = {key: value for key, value in ENTRY_JSON.items() if key != "note"}
        defaulted = answer(capsys, url_of(address), "store", json.dumps({"entry": without}))
    assert stored == ENTRY_JSON
    assert (plain["note"], plain["ratio"]) == ({"string": "hello"}, 2.0)
    assert defaulted["note"] is None


@pytest.mark.parametrize("arguments, error", [
    (["item", "{'sku': 1}"], "the parameters are not JSON: Expecting property name enclosed in "
                             "double quotes: line 1 column 2 (char 1)"),
    (["item", '["sock"]'], 'the parameters are not a JSON object of them by name: ["sock"]'),
    (["shout", "{}"], "the Shop protocol has no message 'shout' (its messages: item, order, "
                      "visit, visits)"),
    (["item", '{"sku": 5}'], "item: sku: expected a string, got 5"),
    (["item", "{}"], "item: sku: missing: give a string"),
    (["item", '{"sku": "x", "size": 1}'], 'item: the message has no parameter "size" (its '
                                          "parameters: sku)"),
    (["order", '{"quantities": {"boot": "two"}}'],
     'order: quantities["boot"]: expected an int, got "two"'),
    (["order", '{"quantities": {"boot": 4294967296}}'],
     'order: quantities["boot"]: 4294967296 is out of the range of an int (-2147483648 to '
     "2147483647)"),
])
def test_what_does_not_fit_is_refused_before_the_call_with_status_2(capsys, shop_url,
                                                                    arguments, error):
    status, out, err = tool(capsys, "call", shop_url, *arguments)
    assert (status, out, err) == (2, "", f"python -m avrohttp call: error: {error}\n")


@pytest.mark.parametrize("entry, error", [
    ({"value": "\u0100"}, "entry.value: expected bytes (a string of code points \\u0000 to "
                          '\\u00ff): "\\u0100" has a code point above \\u00ff'),
    ({"id": "abc"}, "entry.id: expected fixed test.tools.Id (a string of 4 code points, each "
                    "\\u0000 to \\u00ff), got 3 bytes"),
    ({"size": "HUGE"}, 'entry.size: "HUGE" is not a symbol of the enum Size (SMALL, LARGE)'),
    ({"note": 5}, "entry.note: expected one of null, string, test.tools.Size, got 5"),
    ({"note": "SMALL"}, 'entry.note: "SMALL" fits several branches of the union (string, '
                        'test.tools.Size): give it as {"string": ...}'),
    ({"note": {"Size": "HUGE"}}, 'entry.note: "HUGE" is not a symbol of the enum Size '
                                 "(SMALL, LARGE)"),
    ({"counts": {"a": True}}, 'entry.counts["a"]: expected a long, got true'),
    ({"extra": 1}, 'entry: record test.tools.Entry has no field "extra" (its fields: key, '
                   "value, id, size, counts, note, ratio)"),
    ({"ratio": "fast"}, 'entry.ratio: expected a double (a number, or "NaN", "Infinity", '
                        '"-Infinity"), got "fast"'),
])
def test_a_parameter_that_does_not_fit_names_its_path(entry, error):
    message = KINDS.messages["store"]
    with pytest.raises(avro_json.DoesNotFit) as raised:
        avro_json.from_json(message.request, {"entry": {**ENTRY_JSON, **entry}}, "")
    assert str(raised.value) == error


def test_a_union_value_that_fits_two_branches_must_be_wrapped():
    union = avrohttp.parse_protocol("""{"protocol": "U", "messages": {"m": {"request": [
        {"name": "u", "type": ["int", "long"]}], "response": "null"}}}""").messages["m"].request
    with pytest.raises(avro_json.DoesNotFit) as raised:
        avro_json.from_json(union, {"u": 5}, "")
    assert str(raised.value) == 'u: 5 fits several branches of the union (int, long): give it ' \
                                'as {"int": ...}'
    assert avro_json.from_json(union, {"u": {"long": 5}}, "") == {"u": 5}


def test_no_server_is_status_1(capsys):
    url = f"http://127.0.0.1:{free_port()}/"
    for command in (["describe", url], ["call", url, "echo", '{"query": "x"}']):
        status, out, err = tool(capsys, *command)
        assert (status, out) == (1, "")
        assert err.startswith(f"python -m avrohttp {command[0]}: cannot reach the server at "
                              "127.0.0.1:")


def test_a_server_that_does_not_speak_avro_is_status_1(capsys):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer_in_text() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
                                   b"Content-Length: 9\r\n\r\nno Avro!\n")

        thread = threading.Thread(target=answer_in_text)
        thread.start()
        status, out, err = tool(capsys, "describe", url_of(listener.getsockname()))
        thread.join()
    assert (status, out, err) == (
        1, "", "python -m avrohttp describe: server answered 404 Not Found: no Avro!\n")


@pytest.mark.parametrize("arguments, error", [
    (["describe", "ftp://127.0.0.1/"], "'ftp://127.0.0.1/' is not an http:// or https:// URL"),
    (["describe", "http://127.0.0.1:99999/"], "'http://127.0.0.1:99999/' has no valid port"),
    (["describe", "http://127.0.0.1/", "--insecure"],
     "--cafile and --insecure are for https:// URLs"),
    (["describe", "https://127.0.0.1/", "--cafile", "/no/such.pem"],
     "--cafile /no/such.pem: No such file or directory"),
])
def test_a_bad_url_or_tls_option_is_status_2(capsys, arguments, error):
    status, out, err = tool(capsys, *arguments)
    assert (status, out, err) == (
        2, "", f"python -m avrohttp {arguments[0]}: error: {error}\n")


def test_https_with_cafile_or_insecure(capsys, tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    issued.private_key_pem.write_to_path(tmp_path / "key.pem")
    with serving(server.EchoResponder(), "asyncio", certfile=str(tmp_path / "cert.pem"),
                 keyfile=str(tmp_path / "key.pem")) as (_, port):
        url = f"https://127.0.0.1:{port}/"
        query = '{"query": "over TLS"}'
        assert answer(capsys, url, "echo", query, "--cafile", str(tmp_path / "ca.pem")) == \
            "over TLS"
        assert answer(capsys, url, "echo", query, "--insecure") == "over TLS"
        status, out, err = tool(capsys, "describe", url)  # the system's CAs do not trust it
    assert (status, out) == (1, "")
    assert "its TLS certificate is not trusted" in err


def test_the_exit_statuses_are_in_the_help():
    result = subprocess.run([sys.executable, "-m", "avrohttp", "call", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "exit status:\n  0  answered" in result.stdout
    assert "  3  the server answered with an error the message declares" in result.stdout


# --- describe and call: an avsc server --------------------------------------------------------

@pytest.fixture(scope="module")
def avsc():
    """One avsc peer (tests/interop/avsc_peer.js) for the module's tests."""
    with contextlib.closing(AvscPeer()) as peer:
        yield peer


def test_describe_an_avsc_server(capsys, avsc):
    port = avsc.ask(op="serve", protocol=json.loads(PROTOCOL_JSON), script=[])["port"]
    status, out, err = tool(capsys, "describe", f"http://127.0.0.1:{port}/")
    assert (status, err) == (0, "")
    assert json.loads(out) == json.loads(PROTOCOL_JSON)


def test_call_an_avsc_server(capsys, avsc):
    item = SHOP.messages["item"]
    sock = shop_server.CATALOGUE["sock"]
    script = [{"message": "item", "response": encode(item.response, sock).hex()},
              {"message": "item", "error": encode(item.errors, {"sku": "hat"}).hex()},
              {"message": "visit", "response": ""}]
    port = avsc.ask(op="serve", protocol=json.loads(PROTOCOL_JSON), script=script)["port"]
    url = f"http://127.0.0.1:{port}/"
    assert answer(capsys, url, "item", '{"sku": "sock"}')["discount_percent"] == {"int": 10}
    status, out, _ = tool(capsys, "call", url, "item", '{"sku": "hat"}')
    assert (status, json.loads(out)) == (3, {"example.shop.UnknownItem": {"sku": "hat"}})
    assert answer(capsys, url, "visit", '{"page": "home"}') is None
    requests = avsc.ask(op="served")["requests"]
    assert [decode(SHOP.messages[name].request, bytes.fromhex(request))
            for name, request in zip(["item", "item", "visit"], requests)] == [
        {"sku": "sock"}, {"sku": "hat"}, {"page": "home"}]


def test_call_an_avsc_server_with_a_record_of_every_kind(capsys, avsc):
    store = KINDS.messages["store"]
    entry = {**ENTRY, "ratio": 0.5}
    script = [{"message": "store", "response": encode(store.response, entry).hex()}]
    port = avsc.ask(op="serve", protocol=json.loads(KINDS_JSON), script=script)["port"]
    stored = answer(capsys, f"http://127.0.0.1:{port}/", "store",
                    json.dumps({"entry": {**ENTRY_JSON, "ratio": 0.5}}))
    assert stored == {**ENTRY_JSON, "ratio": 0.5}
    (request,) = avsc.ask(op="served")["requests"]
    assert decode(store.request, bytes.fromhex(request)) == {"entry": entry}


# --- docs/running.md --------------------------------------------------------------------------

def test_the_docs_commands_print_what_they_show(capsys):
    doc = (ROOT / "docs" / "running.md").read_text()
    section = doc[doc.index("## Serving a module, and the command-line tools"):]
    shown = re.findall(r"^\$ \.venv/bin/python -m avrohttp ((?:describe|call) .*)\n"
                       r"((?:[^$`].*\n)*)", section, re.MULTILINE)
    assert len(shown) >= 5
    with serving(shop_server.ShopResponder(), "asyncio") as (_, port):
        for command, printed in shown:
            command, head = re.subn(r" \| head -(\d+)$", "", command)
            command, echo = re.subn(r'; echo "exit status: \$\?"$', "", command)
            status = tools.main(shlex.split(command.replace(":8130/", f":{port}/")))
            out, err = capsys.readouterr()
            if head:
                out = "".join(out.splitlines(keepends=True)[:int(printed.count("\n"))])
            assert out + err + (f"exit status: {status}\n" if echo else "") == printed, command
            assert echo or status == 0, command
    refused = re.findall(r"^\$ \.venv/bin/python (-m avrohttp serve .*)\n"
                         r"(python -m avrohttp serve: error: .*\n)", section, re.MULTILINE)
    assert refused
    for command, printed in refused:
        result = subprocess.run([sys.executable, *shlex.split(command)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (2, printed)
