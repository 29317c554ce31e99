//! Request extractors whose rejections are problem+json like every other error.
//!
//! Handlers use these instead of axum's own `Json`, `Query` and `Path`, whose rejections
//! are plain text.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, FieldError};

/// JSON body extractor and response.
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Query string extractor.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// Path parameters extractor.
#[derive(Debug, Clone, Copy, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// A JSON body that may be left out: an empty body is `None`, anything else must be valid JSON
/// of `T` (the same problems as [`Json`] otherwise).
#[derive(Debug, Clone, Default)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|err| {
            if err.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::BadRequest("the body could not be read".to_owned())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        serde_json::from_slice(&bytes)
            .map(|value| Self(Some(value)))
            .map_err(|err| {
                if err.is_data() {
                    ApiError::Validation(vec![FieldError::new("body", err.to_string())])
                } else {
                    ApiError::BadRequest("the body is not valid JSON".to_owned())
                }
            })
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(err) => {
                // serde's message names the field and the problem ("missing field `email`").
                let message = std::error::Error::source(&err)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| err.body_text());
                ApiError::Validation(vec![FieldError::new("body", message)])
            }
            JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest("the body is not valid JSON".to_owned()),
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::BadRequest("expected `Content-Type: application/json`".to_owned())
            }
            JsonRejection::BytesRejection(err) => {
                if err.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest("the body could not be read".to_owned())
                }
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Validation(vec![FieldError::new("query", rejection.body_text())])
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        // A malformed id in the path names nothing that exists.
        ApiError::NotFound(format!("no such resource ({})", rejection.body_text()))
    }
}

/// The client's IP address, from the connection (proxies are not trusted here).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts)))
    }
}

pub fn client_ip(parts: &http::request::Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip())
}

/// The version an optimistic-concurrency edit expects: the body's or query's `version`, else
/// the `If-Match` header (`"3"`, `W/"3"` or `3`). 422 when neither is given or `If-Match` is not a
/// version number.
pub fn expected_version(explicit: Option<i64>, headers: &http::HeaderMap) -> Result<i64, ApiError> {
    if let Some(version) = explicit {
        return Ok(version);
    }
    match headers.get(http::header::IF_MATCH) {
        Some(value) => value
            .to_str()
            .ok()
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|v| v.parse::<i64>().ok())
            .ok_or_else(|| ApiError::validation("If-Match", "must be the version number you read")),
        None => Err(ApiError::validation(
            "version",
            "is required (in the body or query, or as If-Match)",
        )),
    }
}

/// An `Idempotency-Key` as clients may send it: 1–255 visible ASCII characters.
pub fn valid_idempotency_key(raw: &str) -> bool {
    (1..=255).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_request_or_if_match() {
        let mut headers = http::HeaderMap::new();
        assert!(expected_version(None, &headers).is_err());
        assert_eq!(expected_version(Some(4), &headers).unwrap(), 4);
        for (raw, expected) in [("7", 7), ("\"7\"", 7), ("W/\"8\"", 8)] {
            headers.insert(http::header::IF_MATCH, raw.parse().unwrap());
            assert_eq!(expected_version(None, &headers).unwrap(), expected, "{raw}");
        }
        assert_eq!(expected_version(Some(2), &headers).unwrap(), 2, "the body wins");
        headers.insert(http::header::IF_MATCH, "*".parse().unwrap());
        assert!(expected_version(None, &headers).is_err());
    }

    #[test]
    fn idempotency_keys_are_visible_ascii_up_to_255() {
        assert!(valid_idempotency_key("a1b2-c3"));
        assert!(valid_idempotency_key(&"k".repeat(255)));
        assert!(!valid_idempotency_key(""));
        assert!(!valid_idempotency_key("has space"));
        assert!(!valid_idempotency_key(&"k".repeat(256)));
    }
}
