// Thin client for the shop-backend API.

export interface Product {
  id: number;
  sku: string;
  name: string;
  price_cents: number;
  stock: number;
}

export interface OrderLine {
  product_id: number;
  quantity: number;
}

export interface Order {
  id: number;
  total_cents: number;
  lines: number;
}

const API_URL: string = (globalThis as { SHOP_API_URL?: string }).SHOP_API_URL ?? "/api";

async function request<T>(path: string, init?: RequestInit): Promise<T> {
  const res = await fetch(`${API_URL}${path}`, {
    ...init,
    headers: { "content-type": "application/json", ...(init?.headers ?? {}) },
  });
  if (!res.ok) {
    const body = (await res.json().catch(() => ({}))) as { error?: string };
    throw new Error(body.error ?? `${res.status} ${res.statusText}`);
  }
  return (await res.json()) as T;
}

export async function listProducts(limit = 50, offset = 0): Promise<Product[]> {
  const page = await request<{ items: Product[] }>(`/v1/products?limit=${limit}&offset=${offset}`);
  return page.items;
}

export function placeOrder(email: string, lines: OrderLine[]): Promise<Order> {
  return request<Order>("/v1/orders", { method: "POST", body: JSON.stringify({ email, lines }) });
}

export function formatPrice(cents: number): string {
  return new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" }).format(cents / 100);
}
