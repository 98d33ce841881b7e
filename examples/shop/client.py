"""A client for the Shop server: note a visit, look an item up, order it twice.

Try it, with the shop server running: `python -m examples.shop.client` (`--help` for options).
"""

import argparse
import sys
from typing import List, Optional

import avrohttp
import avrohttp.client
from examples.shop.protocol import PROTOCOL_JSON


def shop_around(shop: avrohttp.Client, sku: str, quantity: int) -> None:
    shop.call("visit", page=f"/items/{sku}")  # one-way: returns None
    item = shop.call("item", sku=sku)
    print(f"{item['name']}: {item['price_cents'] / 100:.2f}, sizes {', '.join(item['sizes'])}")
    try:
        order = shop.call("order", quantities={sku: quantity})
    except avrohttp.DeclaredError as e:
        if e.name != "OutOfStock":
            raise
        print(f"Out of stock: {e.datum['left']} left of {e.datum['sku']}")
    else:
        print(f"Order {order['id'].hex()}: {order['total_cents'] / 100:.2f}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Call a Shop server.")
    parser.add_argument("--sku", default="boot", help="the item to order (default: %(default)s)")
    parser.add_argument("--quantity", type=int, default=2, help="how many (default: %(default)s)")
    avrohttp.client.add_arguments(parser)  # --host, --port, timeouts, TLS
    args = parser.parse_args(argv)
    with avrohttp.Client(PROTOCOL_JSON, **avrohttp.client.options_from(args, parser)) as shop:
        try:
            shop_around(shop, args.sku, args.quantity)
            shop_around(shop, args.sku, args.quantity)
            print(f"Visits: {shop.call('visits')}")
        except avrohttp.CallFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except (avrohttp.DeclaredError, avrohttp.RemoteSystemError) as e:  # UnknownItem, say
            print(f"error: the server answered {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
