import { test } from "node:test";
import assert from "node:assert/strict";
import { cartTotal, type CartLine } from "./Cart";

const mug = { id: 1, sku: "MUG-001", name: "Enamel mug", price_cents: 1450, stock: 120 };
const tee = { id: 2, sku: "TEE-BLK-M", name: "T-shirt, black, M", price_cents: 2200, stock: 40 };

test("cartTotal sums price times quantity", () => {
  const lines: CartLine[] = [
    { product: mug, quantity: 2 },
    { product: tee, quantity: 1 },
  ];
  assert.equal(cartTotal(lines), 2 * 1450 + 2200);
});

test("cartTotal of an empty cart is 0", () => {
  assert.equal(cartTotal([]), 0);
});
