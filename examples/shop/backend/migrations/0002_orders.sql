-- 0002_orders: orders and their lines.

CREATE TABLE orders (
    id              BIGSERIAL PRIMARY KEY,
    customer_email  TEXT        NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled')),
    total_cents     BIGINT      NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE order_lines (
    order_id          BIGINT  NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id        BIGINT  NOT NULL REFERENCES products (id),
    quantity          INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents  BIGINT  NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE INDEX orders_customer_email_idx ON orders (customer_email);
CREATE INDEX order_lines_product_idx ON order_lines (product_id);
