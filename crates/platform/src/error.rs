//! The one error type every HTTP handler returns, and its single mapping to RFC 9457
//! `application/problem+json`.
//!
//! Services define their own domain errors and convert them into [`ApiError`]; nothing else
//! in the code base writes an error response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One invalid input field: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct FieldError {
    /// JSON pointer-ish path of the field, e.g. `email` or `lines/0/quantity`.
    pub field: String,
    /// A sentence a person can act on.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (unparseable JSON, bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// 422: the request parsed but some fields are invalid.
    #[error("invalid input: {}", describe_fields(.0))]
    Validation(Vec<FieldError>),
    /// 422: the request is well formed but cannot be applied (a rule of the domain says no).
    #[error("{0}")]
    Unprocessable(String),
    /// 401: no credentials, or credentials that do not check out.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource (or the caller may not know it exists).
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the current state (duplicate, stale version).
    #[error("{0}")]
    Conflict(String),
    /// 409 with extension members for the client to act on (RFC 9457 §3.2), such as the
    /// available quantity of a SKU that is short. `members` must be a JSON object.
    #[error("{message}")]
    ConflictWith {
        message: String,
        members: serde_json::Value,
    },
    /// 413: the body is larger than the configured limit.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 429: too many requests; retry after the given number of seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    /// 503: a dependency is down; retry after the given number of seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after_secs: u64 },
    /// 500: anything unexpected. The cause is logged once, never sent to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

fn describe_fields(fields: &[FieldError]) -> String {
    fields
        .iter()
        .map(|f| format!("`{}` {}", f.field, f.message))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation(_) | Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) | Self::ConflictWith { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short stable slug naming the kind of problem; it forms the problem `type` URI.
    fn slug(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::Validation(_) => "validation",
            Self::Unprocessable(_) => "unprocessable",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict(_) | Self::ConflictWith { .. } => "conflict",
            Self::PayloadTooLarge => "payload-too-large",
            Self::TooManyRequests { .. } => "rate-limited",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl ApiError {
    /// The error another service answered with, rebuilt from its problem body, so that it
    /// reaches this service's caller as it was meant: a 409 stays a 409 with its members, a 422
    /// keeps its field errors, a 503 its `Retry-After`. Other 5xx answers become internal
    /// errors (logged here, never shown).
    pub fn from_problem(status: StatusCode, body: &[u8], retry_after_secs: Option<u64>) -> Self {
        let problem: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).unwrap_or_default();
        let detail = problem.get("detail").and_then(serde_json::Value::as_str).map_or_else(
            || status.canonical_reason().unwrap_or("error").to_owned(),
            str::to_owned,
        );
        let errors: Vec<FieldError> = problem
            .get("errors")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default();
        let members: serde_json::Map<String, serde_json::Value> = problem
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "type" | "title" | "status" | "detail" | "errors"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match status {
            StatusCode::BAD_REQUEST => Self::BadRequest(detail),
            StatusCode::UNPROCESSABLE_ENTITY if !errors.is_empty() => Self::Validation(errors),
            StatusCode::UNPROCESSABLE_ENTITY => Self::Unprocessable(detail),
            StatusCode::UNAUTHORIZED => Self::Unauthorized(detail),
            StatusCode::FORBIDDEN => Self::Forbidden(detail),
            StatusCode::NOT_FOUND => Self::NotFound(detail),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT if !members.is_empty() => Self::ConflictWith {
                message: detail,
                members: serde_json::Value::Object(members),
            },
            StatusCode::CONFLICT => Self::Conflict(detail),
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::TOO_MANY_REQUESTS => Self::TooManyRequests {
                message: detail,
                retry_after_secs: retry_after_secs.unwrap_or(1),
            },
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable {
                message: detail,
                retry_after_secs: retry_after_secs.unwrap_or(1),
            },
            other => Self::Internal(anyhow::anyhow!("a service answered {other}: {detail}")),
        }
    }

    /// A unique-constraint violation as a 409 saying `message`; any other database error as a 500.
    pub fn conflict_on_unique(err: sqlx::Error, message: impl Into<String>) -> Self {
        if crate::store::is_unique_violation(&err) {
            Self::Conflict(message.into())
        } else {
            err.into()
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        Self::Internal(err.into())
    }
}

/// The RFC 9457 body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Extension members of some problems (e.g. `available` on a stock shortage).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
}

pub const PROBLEM_JSON: &str = "application/problem+json";

impl ApiError {
    /// The problem body this error answers with (what a stored response replays).
    pub fn to_problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: format!("https://mercato.dev/problems/{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: match self {
                Self::Internal(_) => Some("an unexpected error occurred".to_owned()),
                other => Some(other.to_string()),
            },
            extensions: match self {
                Self::ConflictWith {
                    members: serde_json::Value::Object(members),
                    ..
                } => members.clone(),
                _ => serde_json::Map::new(),
            },
            errors: match self {
                Self::Validation(errors) => errors.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl ApiError {
    /// An internal error that is a store not answering (Redis away, no database connection to
    /// be had) becomes a 503 the client may retry; anything else stays as it is.
    fn unreachable_store_as_unavailable(self) -> Self {
        let Self::Internal(err) = &self else {
            return self;
        };
        let unreachable = err.chain().any(|cause| {
            if let Some(redis) = cause.downcast_ref::<redis::RedisError>() {
                return redis.is_io_error()
                    || redis.is_timeout()
                    || redis.is_connection_dropped()
                    || redis.is_connection_refusal();
            }
            matches!(
                cause.downcast_ref::<sqlx::Error>(),
                Some(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_))
            )
        });
        if !unreachable {
            return self;
        }
        tracing::warn!(error = %format!("{err:#}"), "a store is not answering");
        Self::Unavailable {
            message: "a store this service depends on is not answering; retry shortly".to_owned(),
            retry_after_secs: 1,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = self.unreachable_store_as_unavailable();
        let status = this.status();
        let detail = match &this {
            Self::Internal(err) => {
                // The one place an unexpected failure is logged; the client gets no details.
                tracing::error!(error = %format!("{err:#}"), "internal error");
                Some("an unexpected error occurred".to_owned())
            }
            other => Some(other.to_string()),
        };
        let retry_after = match &this {
            Self::TooManyRequests { retry_after_secs, .. } | Self::Unavailable { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            _ => None,
        };
        let body = Problem {
            kind: format!("https://mercato.dev/problems/{}", this.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            extensions: match &this {
                Self::ConflictWith {
                    members: serde_json::Value::Object(members),
                    ..
                } => members.clone(),
                _ => serde_json::Map::new(),
            },
            errors: match this {
                Self::Validation(errors) => errors,
                _ => Vec::new(),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Fallback for unknown routes.
pub async fn not_found_fallback() -> ApiError {
    ApiError::NotFound("no route matches this path".to_owned())
}

/// Fallback for known routes called with a method they do not accept.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_store_that_does_not_answer_is_a_503_and_other_failures_stay_500() {
        let refused = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        let response = ApiError::Internal(anyhow::Error::from(refused).context("reading a cart")).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let pool = ApiError::Internal(sqlx::Error::PoolTimedOut.into()).into_response();
        assert_eq!(pool.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bug = ApiError::Internal(anyhow::anyhow!("a bug")).into_response();
        assert_eq!(bug.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    use super::*;

    fn round_trip(err: &ApiError) -> ApiError {
        let body = serde_json::to_vec(&err.to_problem()).unwrap();
        let retry_after = match err {
            ApiError::TooManyRequests { retry_after_secs, .. } | ApiError::Unavailable { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            _ => None,
        };
        ApiError::from_problem(err.status(), &body, retry_after)
    }

    #[test]
    fn a_problem_from_another_service_becomes_the_same_error() {
        let errors = [
            ApiError::BadRequest("bad json".into()),
            ApiError::validation("quantity", "must be 1–99"),
            ApiError::Unprocessable("product inactive".into()),
            ApiError::Unauthorized("token expired".into()),
            ApiError::Forbidden("not yours".into()),
            ApiError::NotFound("order not found".into()),
            ApiError::Conflict("stale version".into()),
            ApiError::ConflictWith {
                message: "short".into(),
                members: serde_json::json!({"skus": [{"sku": "A-1", "available": 2}]}),
            },
            ApiError::TooManyRequests {
                message: "slow down".into(),
                retry_after_secs: 7,
            },
            ApiError::Unavailable {
                message: "provider down".into(),
                retry_after_secs: 3,
            },
        ];
        for err in &errors {
            let back = round_trip(err);
            assert_eq!(back.status(), err.status(), "{err:?}");
            assert_eq!(back.to_problem().detail, err.to_problem().detail, "{err:?}");
            assert_eq!(back.to_problem().errors, err.to_problem().errors, "{err:?}");
            assert_eq!(back.to_problem().extensions, err.to_problem().extensions, "{err:?}");
        }
        assert!(matches!(
            round_trip(&ApiError::Unavailable {
                message: "x".into(),
                retry_after_secs: 3
            }),
            ApiError::Unavailable {
                retry_after_secs: 3,
                ..
            }
        ));
    }

    #[test]
    fn an_unexpected_answer_is_internal_and_keeps_no_body_for_the_client() {
        let err = ApiError::from_problem(StatusCode::BAD_GATEWAY, b"<html>oops</html>", None);
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.to_problem().detail.as_deref(), Some("an unexpected error occurred"));
    }
}
