//! shop-backend: the catalogue and order API behind the shop frontend.
//!
//! Configuration comes from the environment:
//! - `DATABASE_URL`  (default `postgres://shop:shop@localhost:5432/shop`)
//! - `LISTEN_ADDR`   (default `0.0.0.0:8080`)
//! - `RUST_LOG`      (default `shop_backend=info,tower_http=info`)

mod db;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

pub struct AppState {
    pub db: db::Db,
    pub version: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("shop_backend=info")),
        )
        .init();

    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://shop:shop@localhost:5432/shop".to_owned());
    let addr: SocketAddr = std::env::var("LISTEN_ADDR")
        .unwrap_or_else(|_| "0.0.0.0:8080".to_owned())
        .parse()
        .context("LISTEN_ADDR is not a socket address")?;

    let db = db::Db::connect(&database_url).await?;
    let applied = db.migrate().await?;
    tracing::info!(applied, "database migrations up to date");

    let state = Arc::new(AppState { db, version: env!("CARGO_PKG_VERSION") });
    let app = routes::router(state);

    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server error")?;
    tracing::info!("bye");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
