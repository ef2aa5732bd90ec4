//! RFC 9457 problem documents: every error the API returns.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::admin::AdminError;

/// The most bytes of detail a problem carries: enough for any message pangate writes, and
/// a bound on how much of a caller's input is echoed back.
pub const MAX_DETAIL: usize = 512;

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What is wrong with this request and how to fix it.
    pub detail: String,
}

impl Problem {
    /// A problem of status `status`, named by `slug`. A detail longer than
    /// [`MAX_DETAIL`] (it may quote the caller's input) is cut there.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Problem {
        let mut detail = detail.into();
        if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
            detail.push_str("… (cut)");
        }
        Problem {
            kind: format!("https://pangate.invalid/problems/{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail,
        }
    }

    /// 400 with a reason.
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "invalid-request", detail)
    }

    /// 401: a change without a valid token or session.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    /// 403: a form without the session's CSRF token.
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "csrf", detail)
    }

    /// 404.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", detail)
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<AdminError> for Problem {
    fn from(e: AdminError) -> Problem {
        match e {
            AdminError::Invalid(d) => Problem::bad_request(d),
            AdminError::NotFound(d) => Problem::not_found(d),
            AdminError::Conflict(d) => Problem::new(StatusCode::CONFLICT, "conflict", d),
            AdminError::Failed(d) => {
                tracing::error!(error = %d, "an admin change failed");
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "failed", d)
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response()
    }
}
