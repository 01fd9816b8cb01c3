import { useState, type FormEvent } from "react";
import { formatPrice, type Product } from "../api";

export interface CartLine {
  product: Product;
  quantity: number;
}

interface CartProps {
  lines: CartLine[];
  onRemove: (productId: number) => void;
  onCheckout: (email: string) => Promise<void>;
}

export function cartTotal(lines: CartLine[]): number {
  return lines.reduce((sum, l) => sum + l.product.price_cents * l.quantity, 0);
}

export default function Cart({ lines, onRemove, onCheckout }: CartProps) {
  const [email, setEmail] = useState("");
  const [busy, setBusy] = useState(false);

  if (lines.length === 0) {
    return (
      <aside className="cart cart--empty">
        <h2>Cart</h2>
        <p>Your cart is empty.</p>
      </aside>
    );
  }

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    try {
      await onCheckout(email);
    } finally {
      setBusy(false);
    }
  }

  return (
    <aside className="cart">
      <h2>Cart</h2>
      <ul>
        {lines.map(({ product, quantity }) => (
          <li key={product.id}>
            <span>
              {quantity} × {product.name}
            </span>
            <span>{formatPrice(product.price_cents * quantity)}</span>
            <button aria-label={`Remove ${product.name}`} onClick={() => onRemove(product.id)}>
              ×
            </button>
          </li>
        ))}
      </ul>
      <p className="cart__total">Total: {formatPrice(cartTotal(lines))}</p>
      <form onSubmit={submit}>
        <input
          type="email"
          required
          placeholder="you@example.com"
          value={email}
          onChange={(e) => setEmail(e.target.value)}
        />
        <button type="submit" disabled={busy}>
          {busy ? "Placing order…" : "Place order"}
        </button>
      </form>
    </aside>
  );
}
