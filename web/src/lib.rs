//! The web admin: server-rendered pages, a JSON API under `/api/v1` with its OpenAPI
//! document, and `/metrics`, over the [`Admin`] trait the gateway implements.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
mod assets;
pub mod auth;
mod charts;
mod detail;
mod forms;
pub mod history;
pub mod model;
mod pages;
pub mod problem;
mod status;
pub mod topology;
pub mod units;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub use admin::{Admin, AdminError, Change};
pub use auth::Auth;
use history::History;
use model::Overview;
use problem::Problem;

/// What every handler shares.
#[derive(Clone)]
pub struct WebState {
    admin: Arc<dyn Admin>,
    auth: Arc<Auth>,
    history: Arc<Mutex<History>>,
}

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState").finish_non_exhaustive()
    }
}

impl WebState {
    /// State over a gateway, accepting `token` as the admin token.
    pub fn new(admin: Arc<dyn Admin>, token: String) -> WebState {
        WebState { admin, auth: Arc::new(Auth::new(token)), history: Arc::default() }
    }

    /// The gateway's state, read off the async threads.
    pub async fn overview(&self) -> Overview {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || admin.overview()).await.unwrap_or_default()
    }

    /// Applies a change off the async threads.
    pub async fn apply(&self, change: Change) -> Result<(), Problem> {
        let admin = self.admin.clone();
        match tokio::task::spawn_blocking(move || admin.apply(change)).await {
            Ok(r) => r.map_err(Problem::from),
            Err(e) => Err(Problem::from(AdminError::Failed(format!("the change did not complete: {e}")))),
        }
    }

    /// Recent events (see [`Admin::events`]).
    pub async fn events(&self, after: u64, limit: usize) -> Vec<model::EventView> {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || admin.events(after, limit)).await.unwrap_or_default()
    }

    /// Drops an iSCSI session off the async threads.
    pub async fn drop_iscsi_session(&self, id: u64) -> Result<(), Problem> {
        let admin = self.admin.clone();
        match tokio::task::spawn_blocking(move || admin.drop_iscsi_session(id)).await {
            Ok(r) => r.map_err(Problem::from),
            Err(e) => Err(Problem::from(AdminError::Failed(format!("dropping the session did not complete: {e}")))),
        }
    }

    /// Samples every counter into the history (the pages' charts).
    pub async fn sample(&self) {
        let o = self.overview().await;
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.history().record(&o, (at.as_millis() as f64) / 1e3);
    }

    /// The charts' history.
    pub(crate) fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn metrics(axum::extract::State(s): axum::extract::State<WebState>) -> impl IntoResponse {
    let admin = s.admin.clone();
    let text = tokio::task::spawn_blocking(move || admin.metrics()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text)
}

async fn not_found() -> Problem {
    Problem::not_found("no such page or API route")
}

/// The policy every response carries: nothing but this origin's own style sheets,
/// scripts (no inline ones), requests and forms; never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to a response: a page can be neither framed (clickjacking)
/// nor sniffed into another type, and runs only this origin's scripts.
async fn security_headers(mut r: axum::response::Response) -> axum::response::Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("same-origin"));
    r
}

/// Every route: pages, API, `/metrics`.
pub fn router(state: WebState) -> Router {
    Router::new()
        .merge(pages::routes())
        .merge(api::routes())
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// A router with only `/metrics`, for a separate metrics listener.
pub fn metrics_router(state: WebState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Serves the admin (pages, API, `/metrics`) on `listener` until `shutdown` resolves,
/// sampling counters for the charts once a second.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: WebState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sampler = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                state.sample().await;
            }
        })
    };
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    sampler.abort();
    result
}

/// Serves only `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: WebState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, metrics_router(state)).with_graceful_shutdown(shutdown).await
}
