//! Pagination: a capped `limit` and an opaque cursor (keyset), so deep pages cost the same as
//! the first and inserts during paging neither skip nor repeat rows.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// Query parameters of every list endpoint.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// How many items to return: 1..=100, default 20. Larger values are capped at 100.
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    /// The sort key of the last item of the previous page, decoded.
    pub after: Option<String>,
}

impl PageParams {
    pub fn parse(&self) -> Result<PageRequest, ApiError> {
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(0) => return Err(ApiError::validation("limit", "must be at least 1")),
            Some(n) => n.min(MAX_LIMIT),
        };
        let after = match &self.cursor {
            None => None,
            Some(raw) => {
                Some(decode_cursor(raw).ok_or_else(|| ApiError::validation("cursor", "is not a valid cursor"))?)
            }
        };
        Ok(PageRequest { limit, after })
    }
}

impl PageRequest {
    /// Asks the store for one more row than the limit, to know whether a next page exists.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in order, `key` giving each row's sort key.
    pub fn from_rows(mut rows: Vec<T>, request: &PageRequest, key: impl Fn(&T) -> String) -> Self {
        let limit = request.limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| encode_cursor(&key(last)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

pub fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

fn decode_cursor(raw: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_capped_and_defaulted() {
        let parse = |limit| PageParams { limit, cursor: None }.parse();
        assert_eq!(parse(None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(parse(Some(5)).unwrap().limit, 5);
        assert_eq!(parse(Some(10_000)).unwrap().limit, MAX_LIMIT);
        assert!(parse(Some(0)).is_err());
    }

    #[test]
    fn cursor_round_trips_and_garbage_is_rejected() {
        let request = PageParams {
            limit: Some(2),
            cursor: None,
        }
        .parse()
        .unwrap();
        let page = Page::from_rows(vec!["a", "b", "c"], &request, |s| s.to_string());
        assert_eq!(page.items, vec!["a", "b"]);
        let cursor = page.next_cursor.clone().unwrap();
        let next = PageParams {
            limit: Some(2),
            cursor: Some(cursor),
        }
        .parse()
        .unwrap();
        assert_eq!(next.after.as_deref(), Some("b"));
        assert!(PageParams {
            limit: None,
            cursor: Some("%%%".into())
        }
        .parse()
        .is_err());

        let last = Page::from_rows(vec!["x"], &request, |s| s.to_string());
        assert!(last.next_cursor.is_none());
    }
}
