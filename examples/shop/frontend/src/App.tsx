import { useEffect, useMemo, useState } from "react";
import { formatPrice, listProducts, placeOrder, type Product } from "./api";
import Cart, { type CartLine } from "./components/Cart";

type Status =
  | { kind: "loading" }
  | { kind: "ready" }
  | { kind: "error"; message: string }
  | { kind: "ordered"; orderId: number };

export default function App() {
  const [products, setProducts] = useState<Product[]>([]);
  const [cart, setCart] = useState<Record<number, number>>({});
  const [status, setStatus] = useState<Status>({ kind: "loading" });

  useEffect(() => {
    let cancelled = false;
    listProducts()
      .then((items) => {
        if (!cancelled) {
          setProducts(items);
          setStatus({ kind: "ready" });
        }
      })
      .catch((e: Error) => !cancelled && setStatus({ kind: "error", message: e.message }));
    return () => {
      cancelled = true;
    };
  }, []);

  const lines: CartLine[] = useMemo(
    () =>
      products
        .filter((p) => (cart[p.id] ?? 0) > 0)
        .map((p) => ({ product: p, quantity: cart[p.id] })),
    [products, cart],
  );

  const add = (p: Product) =>
    setCart((c) => ({ ...c, [p.id]: Math.min((c[p.id] ?? 0) + 1, p.stock) }));
  const remove = (id: number) => setCart(({ [id]: _, ...rest }) => rest);

  async function checkout(email: string) {
    try {
      const order = await placeOrder(
        email,
        lines.map((l) => ({ product_id: l.product.id, quantity: l.quantity })),
      );
      setCart({});
      setStatus({ kind: "ordered", orderId: order.id });
    } catch (e) {
      setStatus({ kind: "error", message: (e as Error).message });
    }
  }

  return (
    <main className="shop">
      <header>
        <h1>Shop</h1>
      </header>
      {status.kind === "loading" && <p>Loading the catalogue…</p>}
      {status.kind === "error" && <p role="alert">Something went wrong: {status.message}</p>}
      {status.kind === "ordered" && <p role="status">Thanks! Order #{status.orderId} is on its way.</p>}
      <section className="catalogue">
        {products.map((p) => (
          <article key={p.id} className="product">
            <h2>{p.name}</h2>
            <p className="price">{formatPrice(p.price_cents)}</p>
            <button disabled={p.stock === 0 || (cart[p.id] ?? 0) >= p.stock} onClick={() => add(p)}>
              {p.stock === 0 ? "Sold out" : "Add to cart"}
            </button>
          </article>
        ))}
      </section>
      <Cart lines={lines} onRemove={remove} onCheckout={checkout} />
    </main>
  );
}
