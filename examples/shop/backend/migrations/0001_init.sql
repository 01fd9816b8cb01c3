-- 0001_init: the product catalogue.

CREATE TABLE products (
    id           BIGSERIAL PRIMARY KEY,
    sku          TEXT        NOT NULL UNIQUE,
    name         TEXT        NOT NULL,
    description  TEXT        NOT NULL DEFAULT '',
    price_cents  BIGINT      NOT NULL CHECK (price_cents >= 0),
    stock        INTEGER     NOT NULL DEFAULT 0 CHECK (stock >= 0),
    active       BOOLEAN     NOT NULL DEFAULT TRUE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX products_active_name_idx ON products (name) WHERE active;

INSERT INTO products (sku, name, description, price_cents, stock) VALUES
    ('MUG-001',  'Enamel mug',         'Camp mug, 350 ml, speckled blue.', 1450, 120),
    ('TEE-BLK-M', 'T-shirt, black, M', 'Organic cotton, screen printed.',  2200,  40),
    ('TEE-BLK-L', 'T-shirt, black, L', 'Organic cotton, screen printed.',  2200,  35),
    ('STK-PACK', 'Sticker pack',       'Five vinyl stickers.',              500, 800);
