//! Postgres access: connection, embedded migrations and the few queries the API needs.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls, Row};

/// Migrations are compiled into the binary, in order; the version is the file's number.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (2, "orders", include_str!("../migrations/0002_orders.sql")),
];

pub struct Db {
    // tokio-postgres clients pipeline queries, but a transaction needs `&mut`.
    client: Mutex<Client>,
}

#[derive(Debug, Serialize)]
pub struct Product {
    pub id: i64,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
}

impl From<Row> for Product {
    fn from(row: Row) -> Self {
        Product {
            id: row.get("id"),
            sku: row.get("sku"),
            name: row.get("name"),
            price_cents: row.get("price_cents"),
            stock: row.get("stock"),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NewOrderLine {
    pub product_id: i64,
    pub quantity: i32,
}

#[derive(Debug, Serialize)]
pub struct Order {
    pub id: i64,
    pub total_cents: i64,
    pub lines: usize,
}

#[derive(Debug)]
pub enum OrderError {
    UnknownProduct(i64),
    OutOfStock { product_id: i64, available: i32 },
    Empty,
    Db(anyhow::Error),
}

impl std::error::Error for OrderError {}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderError::UnknownProduct(id) => write!(f, "unknown product {id}"),
            OrderError::OutOfStock { product_id, available } => {
                write!(f, "product {product_id}: only {available} left")
            }
            OrderError::Empty => f.write_str("an order needs at least one line"),
            OrderError::Db(e) => write!(f, "database error: {e:#}"),
        }
    }
}

impl From<tokio_postgres::Error> for OrderError {
    fn from(e: tokio_postgres::Error) -> Self {
        OrderError::Db(e.into())
    }
}

impl Db {
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .context("connecting to postgres")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!(error = %e, "postgres connection closed");
            }
        });
        Ok(Db { client: Mutex::new(client) })
    }

    /// Applies the migrations not yet recorded in `schema_migrations`; returns how many ran.
    pub async fn migrate(&self) -> anyhow::Result<usize> {
        let mut client = self.client.lock().await;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                     version    INTEGER PRIMARY KEY,
                     name       TEXT NOT NULL,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        let mut applied = 0;
        for &(version, name, sql) in MIGRATIONS {
            let tx = client.transaction().await?;
            let done = tx
                .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&version])
                .await?
                .is_some();
            if done {
                continue;
            }
            tracing::info!(version, name, "applying migration");
            tx.batch_execute(sql)
                .await
                .with_context(|| format!("migration {version:04}_{name}"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[&version, &name],
            )
            .await?;
            tx.commit().await?;
            applied += 1;
        }
        Ok(applied)
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client.lock().await.simple_query("SELECT 1").await?;
        Ok(())
    }

    pub async fn list_products(&self, limit: i64, offset: i64) -> anyhow::Result<Vec<Product>> {
        let rows = self
            .client
            .lock()
            .await
            .query(
                "SELECT id, sku, name, price_cents, stock FROM products
                 WHERE active ORDER BY name LIMIT $1 OFFSET $2",
                &[&limit, &offset],
            )
            .await?;
        Ok(rows.into_iter().map(Product::from).collect())
    }

    pub async fn get_product(&self, id: i64) -> anyhow::Result<Option<Product>> {
        let row = self
            .client
            .lock()
            .await
            .query_opt(
                "SELECT id, sku, name, price_cents, stock FROM products WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(Product::from))
    }

    /// Creates an order and takes the stock, all or nothing.
    pub async fn create_order(
        &self,
        email: &str,
        lines: &[NewOrderLine],
    ) -> Result<Order, OrderError> {
        if lines.is_empty() {
            return Err(OrderError::Empty);
        }
        let mut client = self.client.lock().await;
        let tx = client.transaction().await?;
        let order_id: i64 = tx
            .query_one(
                "INSERT INTO orders (customer_email) VALUES ($1) RETURNING id",
                &[&email],
            )
            .await?
            .get(0);
        let mut total: i64 = 0;
        for line in lines {
            let row = tx
                .query_opt(
                    "SELECT price_cents, stock FROM products WHERE id = $1 AND active FOR UPDATE",
                    &[&line.product_id],
                )
                .await?
                .ok_or(OrderError::UnknownProduct(line.product_id))?;
            let (price, stock): (i64, i32) = (row.get(0), row.get(1));
            if stock < line.quantity {
                return Err(OrderError::OutOfStock { product_id: line.product_id, available: stock });
            }
            tx.execute(
                "UPDATE products SET stock = stock - $2 WHERE id = $1",
                &[&line.product_id, &line.quantity],
            )
            .await?;
            tx.execute(
                "INSERT INTO order_lines (order_id, product_id, quantity, unit_price_cents)
                 VALUES ($1, $2, $3, $4)",
                &[&order_id, &line.product_id, &line.quantity, &price],
            )
            .await?;
            total += price * i64::from(line.quantity);
        }
        tx.execute("UPDATE orders SET total_cents = $2 WHERE id = $1", &[&order_id, &total])
            .await?;
        tx.commit().await?;
        Ok(Order { id: order_id, total_cents: total, lines: lines.len() })
    }
}
