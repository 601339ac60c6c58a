//! The built-in dashboard: three files built into the binary, served at
//! `/` and `/ui/…` without a key (the page asks for one and sends it with
//! every API call; it keeps it in the tab's session storage only).
//!
//! The page may load nothing but itself: the Content-Security-Policy
//! allows scripts, styles and connections to this origin only, no inline
//! script or style, and no framing.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{AppState, Refusal};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// (name, content type, built-in copy)
const FILES: [(&str, &str, &str); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../ui/app.css"),
    ),
];

async fn file(s: &AppState, name: &str) -> Result<Response, Refusal> {
    let (name, kind, built_in) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .copied()
        .ok_or_else(|| Refusal::not_found("no such file of the dashboard"))?;
    let body = match &s.0.cfg.ui_dir {
        Some(dir) => tokio::fs::read_to_string(dir.join(name))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(file = name, error = %e, "COLONY_UI_DIR: serving the built-in copy");
                built_in.to_string()
            }),
        None => built_in.to_string(),
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

pub(super) async fn index(State(s): State<AppState>) -> Result<Response, Refusal> {
    file(&s, "index.html").await
}

pub(super) async fn asset(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, Refusal> {
    if name == "index.html" {
        return Err(Refusal::not_found("no such file of the dashboard"));
    }
    file(&s, &name).await
}
