//! What the pages load besides themselves, compiled in so the admin needs no network:
//! the style sheet, the live-update script, and uPlot (vendored, `assets/vendor/uplot`).

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::WebState;

const STYLE: &str = include_str!("../assets/pangate.css");
const SCRIPT: &str = include_str!("../assets/pangate.js");
const UPLOT: &str = include_str!("../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_STYLE: &str = include_str!("../assets/vendor/uplot/uPlot.min.css");

/// The version of the assets, in their URLs, so a new release is never served a cached
/// old script.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The URLs the pages link to.
pub fn style_sheets() -> [String; 2] {
    [format!("/assets/{VERSION}/uplot.css"), format!("/assets/{VERSION}/pangate.css")]
}

/// The scripts the pages load, in order.
pub fn scripts() -> [String; 2] {
    [format!("/assets/{VERSION}/uplot.js"), format!("/assets/{VERSION}/pangate.js")]
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=86400")], body)
}

async fn favicon() -> impl IntoResponse {
    (axum::http::StatusCode::NO_CONTENT, [(header::CACHE_CONTROL, "max-age=86400")])
}

/// The assets' routes.
pub fn routes() -> Router<WebState> {
    const CSS: &str = "text/css; charset=utf-8";
    const JS: &str = "text/javascript; charset=utf-8";
    Router::new()
        .route(&format!("/assets/{VERSION}/pangate.css"), get(|| async { asset(CSS, STYLE) }))
        .route(&format!("/assets/{VERSION}/pangate.js"), get(|| async { asset(JS, SCRIPT) }))
        .route(&format!("/assets/{VERSION}/uplot.js"), get(|| async { asset(JS, UPLOT) }))
        .route(&format!("/assets/{VERSION}/uplot.css"), get(|| async { asset(CSS, UPLOT_STYLE) }))
        .route("/favicon.ico", get(favicon))
}
