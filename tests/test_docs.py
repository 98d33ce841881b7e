"""docs/ shows what runs: each code excerpt is in its file, and the shop client prints what
docs/your-protocol.md shows."""

import re

import pytest

from conftest import ROOT
from test_example_shop import run_client, shop_server_program

DOCS = sorted((ROOT / "docs").glob("*.md"))
EXCERPT = re.compile(r"<!-- excerpt: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
EXCERPTS = [(doc.name, name, code) for doc in DOCS
            for name, code in EXCERPT.findall(doc.read_text())]


def test_your_protocol_has_excerpts_of_each_shop_file():
    assert {name for doc, name, _ in EXCERPTS if doc == "your-protocol.md"} == {
        "examples/shop/protocol.py", "examples/shop/server.py", "examples/shop/client.py"}


@pytest.mark.parametrize("doc, name, code", EXCERPTS,
                         ids=[f"{doc}:{name}" for doc, name, _ in EXCERPTS])
def test_each_excerpt_is_the_code_that_runs(doc, name, code):
    assert code in (ROOT / name).read_text()


def test_the_shop_client_prints_what_the_doc_shows():
    doc = (ROOT / "docs" / "your-protocol.md").read_text()
    shown = re.search(r"```console\n\$ \.venv/bin/python -m examples.shop.client\n(.*?)```", doc,
                      re.DOTALL).group(1)
    with shop_server_program() as port:
        printed = run_client(port).stdout

    def normalize(text: str) -> str:
        return re.sub(r"Order [0-9a-f]{32}", "Order <id>", text)

    assert normalize(printed) == normalize(shown)
