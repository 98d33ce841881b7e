"""The Shop protocol: the contract shared by examples/shop/server.py and client.py.

It uses most of what Avro offers: records, an enum, an array, a map, a union, fixed, bytes,
declared errors and a one-way message. Try it: `python -m examples.shop.protocol` prints it.
"""

PROTOCOL_JSON = """\
{
  "protocol": "Shop",
  "namespace": "example.shop",
  "doc": "A small shop: look items up, order them, and note visits.",
  "types": [
    {"type": "enum", "name": "Size", "symbols": ["SMALL", "MEDIUM", "LARGE"]},
    {"type": "fixed", "name": "OrderId", "size": 16, "doc": "The 16 bytes of a UUID."},
    {"type": "record", "name": "Item", "fields": [
      {"name": "sku", "type": "string"},
      {"name": "name", "type": "string"},
      {"name": "price_cents", "type": "long"},
      {"name": "sizes", "type": {"type": "array", "items": "Size"}},
      {"name": "discount_percent", "type": ["null", "int"], "default": null},
      {"name": "photo", "type": "bytes", "doc": "A thumbnail, empty if there is none."}
    ]},
    {"type": "record", "name": "Order", "fields": [
      {"name": "id", "type": "OrderId"},
      {"name": "quantities", "type": {"type": "map", "values": "int"}, "doc": "By SKU."},
      {"name": "total_cents", "type": "long"}
    ]},
    {"type": "error", "name": "UnknownItem", "fields": [{"name": "sku", "type": "string"}]},
    {"type": "error", "name": "OutOfStock", "fields": [
      {"name": "sku", "type": "string"},
      {"name": "left", "type": "int"}
    ]}
  ],
  "messages": {
    "item": {
      "doc": "The item with this SKU.",
      "request": [{"name": "sku", "type": "string"}],
      "response": "Item",
      "errors": ["UnknownItem"]
    },
    "order": {
      "doc": "Order these quantities, by SKU: all of them, or none if any is short.",
      "request": [{"name": "quantities", "type": {"type": "map", "values": "int"}}],
      "response": "Order",
      "errors": ["UnknownItem", "OutOfStock"]
    },
    "visit": {
      "doc": "Note that someone saw this page. One-way: nothing comes back.",
      "request": [{"name": "page", "type": "string"}],
      "response": "null",
      "one-way": true
    },
    "visits": {
      "doc": "How many visits each page has had.",
      "request": [],
      "response": {"type": "map", "values": "long"}
    }
  }
}
"""

if __name__ == "__main__":
    print(PROTOCOL_JSON, end="")
