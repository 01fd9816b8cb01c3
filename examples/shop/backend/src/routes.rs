//! HTTP routes of the API.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::db::{NewOrderLine, OrderError};
use crate::AppState;

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/products", get(list_products))
        .route("/api/v1/products/{id}", get(get_product))
        .route("/api/v1/orders", post(create_order))
        .with_state(state)
}

/// An error the handlers turn into a JSON body with the right status.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::error!(status = %self.0, error = %self.1, "request failed");
        }
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        let status = match e {
            OrderError::UnknownProduct(_) => StatusCode::NOT_FOUND,
            OrderError::OutOfStock { .. } => StatusCode::CONFLICT,
            OrderError::Empty => StatusCode::UNPROCESSABLE_ENTITY,
            OrderError::Db(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

async fn healthz(State(state): Shared) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": state.version }))
}

async fn readyz(State(state): Shared) -> Result<&'static str, ApiError> {
    state
        .db
        .ping()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    Ok("ready")
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default = "Page::default_limit")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

impl Page {
    fn default_limit() -> i64 {
        50
    }
}

async fn list_products(
    State(state): Shared,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, ApiError> {
    let limit = page.limit.clamp(1, 200);
    let offset = page.offset.max(0);
    let products = state.db.list_products(limit, offset).await?;
    Ok(Json(json!({ "items": products, "limit": limit, "offset": offset })))
}

async fn get_product(State(state): Shared, Path(id): Path<i64>) -> Result<impl IntoResponse, ApiError> {
    match state.db.get_product(id).await? {
        Some(p) => Ok(Json(p)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no product {id}"))),
    }
}

#[derive(Debug, Deserialize)]
struct NewOrder {
    email: String,
    lines: Vec<NewOrderLine>,
}

async fn create_order(
    State(state): Shared,
    Json(order): Json<NewOrder>,
) -> Result<impl IntoResponse, ApiError> {
    if !order.email.contains('@') {
        return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, "email is not valid".into()));
    }
    if order.lines.iter().any(|l| l.quantity <= 0) {
        return Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, "quantities must be positive".into()));
    }
    let created = state.db.create_order(&order.email, &order.lines).await?;
    Ok((StatusCode::CREATED, Json(created)))
}
