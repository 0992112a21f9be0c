//! The error of a request, REST or in-process (a submission to `commands`).
//!
//! Owns: turning failures into `{"status":"error","error":{"code","message"}}` (the shape of
//! `crate::reply`) with the HTTP status of its code. A user sees a safe message; internal
//! failures are logged with their whole chain inside the request's span and answered with a
//! generic message. Must not: put secrets or internal details in a response.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::{ErrorBody, ErrorCode};

use crate::reply;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub body: ErrorBody,
    /// The cause, logged, never sent.
    pub source: Option<anyhow::Error>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            body: ErrorBody::new(code, message),
            source: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParams, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    /// A failure of ours: the message says so, the cause goes to the log.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        ApiError {
            body: ErrorBody::internal("internal server error"),
            source: Some(source.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        reply::http_status(self.body.code)
    }
}

impl From<ErrorBody> for ApiError {
    fn from(body: ErrorBody) -> Self {
        ApiError { body, source: None }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::Conflict(m) => ApiError::conflict(m),
            other => ApiError::internal(other),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::bad_request(e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(e.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(src) = &self.source {
            tracing::error!(error = format!("{src:#}"), "request failed");
        }
        (self.status(), Json(reply::error_doc(&self.body))).into_response()
    }
}
