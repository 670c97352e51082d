//! One error type for every handler, rendered in the shape of the API that was called.
//!
//! An [`ApiError`] carries an HTTP status, a message a person can act on (the daemon's own,
//! when the daemon refused) and OpenAI's machine-readable `code`. Each API wraps it in its
//! own responder: AUTOMATIC1111's `{error, detail, body, errors}` ([`A1111Error`]) and OpenAI's
//! `{error: {message, type, param, code}}` ([`OpenAiError`]), because their clients parse those
//! shapes and show `detail` or `error.message` to the user.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request failed, independent of which API it came through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `error.code`: a short snake_case reason.
    pub code: &'static str,
    /// The request field at fault, when one is.
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code,
            param: None,
        }
    }

    /// A request field that is missing, malformed or out of range (422, as FastAPI answers).
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
        }
    }

    /// A picture that cannot be decoded or used.
    pub fn bad_image(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_image", message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!(
                "the request body is larger than the gateway accepts ({limit} bytes); send smaller pictures, \
                 or start the gateway with a larger --max-body"
            ),
        )
    }

    /// The daemon's answer, mapped to the nearest HTTP status. Its message is kept: it names
    /// the problem and the fix.
    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        let (http, code) = match status.code() {
            Code::InvalidArgument => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_value"),
            Code::NotFound => (StatusCode::NOT_FOUND, "model_not_found"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
            Code::OutOfRange => (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large"),
            Code::Cancelled => (StatusCode::CONFLICT, "cancelled"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "daemon_unavailable"),
            Code::PermissionDenied | Code::Unauthenticated => (StatusCode::FORBIDDEN, "permission_denied"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "daemon_error"),
        };
        let message = if status.message().is_empty() {
            format!("the daemon answered {:?} with no message", status.code())
        } else if status.code() == Code::Unavailable && std::error::Error::source(status).is_some() {
            format!(
                "the easel daemon cannot be reached ({}); start it with `easel daemon start`",
                status.message()
            )
        } else {
            status.message().to_string()
        };
        Self::new(http, code, message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

/// An [`ApiError`] as AUTOMATIC1111's API renders exceptions: `detail` is what clients show.
#[derive(Debug)]
pub struct A1111Error(pub ApiError);

impl From<ApiError> for A1111Error {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<tonic::Status> for A1111Error {
    fn from(status: tonic::Status) -> Self {
        Self(ApiError::from_status(&status))
    }
}

impl IntoResponse for A1111Error {
    fn into_response(self) -> Response {
        let error = self.0;
        let name = if error.status.is_client_error() {
            "HTTPException"
        } else {
            "RuntimeError"
        };
        let body = json!({
            "error": name,
            "detail": error.message,
            "body": "",
            "errors": error.message,
        });
        (error.status, axum::Json(body)).into_response()
    }
}

/// An [`ApiError`] in OpenAI's error shape.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<tonic::Status> for OpenAiError {
    fn from(status: tonic::Status) -> Self {
        Self(ApiError::from_status(&status))
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let error = self.0;
        // OpenAI names client errors invalid_request_error; 401/403/404/429 have their own types.
        let kind = match error.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            status if status.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        // OpenAI answers bad values with 400, where FastAPI (and so A1111) uses 422.
        let status = if error.status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            error.status
        };
        let body = json!({
            "error": {
                "message": error.message,
                "type": kind,
                "param": error.param,
                "code": error.code,
            }
        });
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_message_survives_the_mapping() {
        let error = ApiError::from_status(&tonic::Status::invalid_argument("width 13 is not a multiple of 64"));
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.message, "width 13 is not a multiple of 64");
        let busy = ApiError::from_status(&tonic::Status::resource_exhausted("the queue is full"));
        assert_eq!(busy.status, StatusCode::TOO_MANY_REQUESTS);
        let empty = ApiError::from_status(&tonic::Status::internal(""));
        assert!(empty.message.contains("Internal"), "{}", empty.message);
    }
}
