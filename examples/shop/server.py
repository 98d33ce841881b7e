"""A server for the Shop protocol (examples/shop/protocol.py), on eventlet (or, with
--loop asyncio, on asyncio: the same responder runs on both).

Try it: `python -m examples.shop.server`, then `python -m examples.shop.client` in another
terminal. It takes the same options as server.py (`--help`). Each process keeps its own
stock and visit counts, in memory.
"""

import collections
import uuid
from typing import Dict, List, Optional

import avro.errors

import avrohttp
from avrohttp import cli
from examples.shop.protocol import PROTOCOL_JSON

CATALOGUE = {
    "boot": {"sku": "boot", "name": "Walking boot", "price_cents": 8900,
             "sizes": ["MEDIUM", "LARGE"], "discount_percent": None, "photo": b""},
    "sock": {"sku": "sock", "name": "Wool sock", "price_cents": 650,
             "sizes": ["SMALL", "MEDIUM", "LARGE"], "discount_percent": 10, "photo": b""},
}
STOCK = {"boot": 3, "sock": 40}


class ShopResponder(avrohttp.Responder):
    """Answers Shop calls: the message `name` is answered by `handle_<name>`."""

    def __init__(self) -> None:
        # The protocol's text, not a parsed protocol: the handshake then sends it as
        # written, so that other Avro implementations see that `visit` is one-way.
        super().__init__(PROTOCOL_JSON)
        self.stock = dict(STOCK)
        self.visits = collections.Counter()

    def handle_item(self, sku: str) -> dict:
        if sku not in CATALOGUE:
            raise avrohttp.DeclaredError("UnknownItem", {"sku": sku})
        return CATALOGUE[sku]

    def handle_order(self, quantities: Dict[str, int]) -> dict:
        if not quantities or min(quantities.values()) < 1:  # a plain string: a system error
            raise avro.errors.AvroRemoteException("an order needs quantities of 1 or more")
        for sku, quantity in quantities.items():
            if sku not in CATALOGUE:
                raise avrohttp.DeclaredError("UnknownItem", {"sku": sku})
            if quantity > self.stock[sku]:
                raise avrohttp.DeclaredError("OutOfStock", {"sku": sku, "left": self.stock[sku]})
        total = 0
        for sku, quantity in quantities.items():
            self.stock[sku] -= quantity
            item = CATALOGUE[sku]
            total += quantity * item["price_cents"] * (100 - (item["discount_percent"] or 0)) // 100
        return {"id": uuid.uuid4().bytes, "quantities": quantities, "total_cents": total}

    def handle_visit(self, page: str) -> None:
        self.visits[page] += 1

    def handle_visits(self) -> Dict[str, int]:
        return dict(self.visits)


application = avrohttp.make_application(ShopResponder())


def main(argv: Optional[List[str]] = None) -> int:
    # Serve with every option of avrohttp.cli (which monkey-patches the standard library for
    # eventlet, when it serves on eventlet).
    return cli.main(ShopResponder, argv)


if __name__ == "__main__":
    raise SystemExit(main())
